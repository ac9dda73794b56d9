"""The headline demo (examples/multi_server.py) and the README's code, each run in a fresh interpreter."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
from dataclasses import dataclass

import pytest

from support import REPO_ROOT, ipv6_available, run_python, spawn_python

EXAMPLES = REPO_ROOT / "examples"
DEMO = EXAMPLES / "multi_server.py"
README = REPO_ROOT / "README.md"

ECHO_LABELS = ["tcp4", "tcp6", "udp4", "unix", "unix-dgram"] if ipv6_available() else \
    ["tcp4", "udp4", "unix", "unix-dgram"]
ALL_LABELS = [*ECHO_LABELS, "http"]
DATAGRAM_LABELS = {"udp4", "unix-dgram"}

#: Every hook the demo logs for one echo server, in the order socketserver calls them.
TUTORIAL_SEQUENCE = [
    "__init__", "server_activate",                          # construction, main thread
    "verify_request", "process_request", "finish_request",  # one request, reactor thread
    "__init__", "setup", "handle", "recv", "finish",        # the request handler
    "close_request",
    "server_close",                                         # reactor.close(), main thread
]

EXPECTED_REPLY = {
    "tcp4": r"b'HELLO, WORLD\n'", "tcp6": r"b'HELLO, WORLD\n'", "unix": r"b'HELLO, WORLD\n'",
    "udp4": "b'echo: Hello, world'", "unix-dgram": "b'echo: Hello, world'",
    "http": r"b'Hello from http.server\n'",
}


# -- helpers ------------------------------------------------------------------


def listening_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("listening on ")]


def socket_dir_of(stdout: str) -> str:
    """The demo's temporary directory, read from the Unix server's listening line."""
    match = re.search(r"^listening on unix (\S+)/echo\.sock ", stdout, re.MULTILINE)
    assert match, f"no Unix listening line in:\n{stdout}"
    return match.group(1)


def hooks_logged(stdout: str, label: str) -> list[tuple[str, str]]:
    """``(thread, hook)`` for every line a server or handler of ``label`` logged, in order."""
    pattern = re.compile(rf"^\[(\w+)\] {re.escape(label)}\.\w+: (\w+)", re.MULTILINE)
    return pattern.findall(stdout)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python(DEMO, *args, timeout=60)


def run_demo_patched(patch: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Import the demo in a fresh interpreter, apply ``patch`` (Python code), run ``main(args)``.

    Used only to inject failures that cannot be caused for real (a wrong reply,
    a server that never answers, no IPv6 on a machine that has it).
    """
    code = "\n".join([
        "import sys",
        f"sys.path.insert(0, {str(EXAMPLES)!r})",
        "import multi_server",
        textwrap.dedent(patch),
        f"sys.exit(multi_server.main({list(args)!r}))",
    ])
    return run_python(code, timeout=60)


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    """One plain run of the demo, shared by the tests that read its output."""
    return run_demo()


# -- the demo -----------------------------------------------------------------


def test_demo_exits_zero_with_a_summary(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr == ""
    last = demo.stdout.splitlines()[-1]
    assert last.startswith(f"ok: {len(ALL_LABELS)} servers on one reactor thread, {len(ALL_LABELS)} replies")


def test_demo_prints_one_listening_line_per_server(demo: subprocess.CompletedProcess[str]) -> None:
    lines = listening_lines(demo.stdout)
    assert len(lines) == len(ALL_LABELS), lines
    described = " ".join(lines)
    assert re.search(r"listening on tcp4 127\.0\.0\.1:\d+  \(EchoServer\)", described)
    assert re.search(r"listening on udp4 127\.0\.0\.1:\d+  \(UDPEchoServer\)", described)
    assert re.search(r"listening on unix /tmp/\S+/echo\.sock  \(UnixEchoServer\)", described)
    assert re.search(r"listening on unix-dgram /tmp/\S+/dgram\.sock  \(UnixDatagramEchoServer\)", described)
    assert re.search(r"listening on tcp4 127\.0\.0\.1:\d+  \(http\.server\.HTTPServer\)", described)
    if ipv6_available():
        assert re.search(r"listening on tcp6 \[::1\]:\d+  \(EchoServer\)", described)
    else:
        assert "IPv6 not available" in demo.stdout


@pytest.mark.parametrize("label", ECHO_LABELS)
def test_demo_logs_the_tutorial_call_sequence(demo: subprocess.CompletedProcess[str], label: str) -> None:
    hooks = hooks_logged(demo.stdout, label)
    assert [hook for _, hook in hooks] == TUTORIAL_SEQUENCE
    request_threads = {thread for thread, hook in hooks[2:-1]}
    assert request_threads == {"reactor"}, hooks


@pytest.mark.parametrize("label", ALL_LABELS)
def test_demo_client_gets_its_reply(demo: subprocess.CompletedProcess[str], label: str) -> None:
    assert f"[MainThread] client: {label}: received {EXPECTED_REPLY[label]}\n" in demo.stdout


def test_demo_serves_the_unmodified_http_server_in_the_reactor_thread(
        demo: subprocess.CompletedProcess[str]) -> None:
    assert '[reactor] http.HelloHandler: "GET / HTTP/1.1" 200 -' in demo.stdout


def test_demo_leaves_no_socket_file(demo: subprocess.CompletedProcess[str]) -> None:
    socket_dir = socket_dir_of(demo.stdout)
    assert f"no socket file left in {socket_dir}; removed it" in demo.stdout
    assert not os.path.exists(socket_dir)


def test_demo_quiet_prints_only_listening_lines_and_summary() -> None:
    result = run_demo("--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:-1] == listening_lines(result.stdout)
    assert len(lines[:-1]) == len(ALL_LABELS)
    assert lines[-1].startswith(f"ok: {len(ALL_LABELS)} servers")
    assert not os.path.exists(socket_dir_of(result.stdout))


def test_demo_no_ipv6_flag_leaves_out_tcp6() -> None:
    result = run_demo("--no-ipv6")
    assert result.returncode == 0, result.stderr
    assert len(listening_lines(result.stdout)) == 5
    assert "tcp6" not in " ".join(listening_lines(result.stdout))
    assert result.stdout.splitlines()[-1] == \
        "ok: 5 servers on one reactor thread, 5 replies, clean shutdown (tcp6 skipped: --no-ipv6)"


def test_demo_reports_ipv6_unavailable() -> None:
    result = run_demo_patched("multi_server.ipv6_loopback_available = lambda: False")
    assert result.returncode == 0, result.stderr
    assert "[MainThread] demo: tcp6 skipped: IPv6 not available (cannot bind ::1)" in result.stdout
    assert len(listening_lines(result.stdout)) == 5


def test_demo_fails_clearly_on_a_wrong_reply() -> None:
    result = run_demo_patched("""
        def handle(self):
            self.rfile.readline()
            self.wfile.write(b"wrong\\n")
        multi_server.EchoRequestHandler.handle = handle
        """, "--quiet")
    assert result.returncode == 1
    assert re.search(r"^error: tcp4 \(tcp4 127\.0\.0\.1:\d+\): expected b'HELLO, WORLD\\n', "
                     r"received b'wrong\\n'$", result.stderr, re.MULTILINE), result.stderr
    assert "ok:" not in result.stdout
    assert not os.path.exists(socket_dir_of(result.stdout))


def test_demo_fails_clearly_when_a_server_never_answers() -> None:
    result = run_demo_patched("""
        multi_server.CLIENT_TIMEOUT = 0.5
        multi_server.DatagramEchoHandler.finish = lambda self: None  # never sends the reply
        """, "--quiet")
    assert result.returncode == 1
    assert re.search(r"^error: udp4 \(udp4 127\.0\.0\.1:\d+\): no reply: TimeoutError",
                     result.stderr, re.MULTILINE), result.stderr
    assert not os.path.exists(socket_dir_of(result.stdout))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_signal_stops_serving_cleanly(signum: signal.Signals) -> None:
    with spawn_python(DEMO, "--serve", stdin=subprocess.DEVNULL) as proc:
        try:
            assert proc.stdout is not None
            seen = []
            for line in proc.stdout:
                seen.append(line)
                if "serving until Ctrl-C or SIGTERM" in line:
                    break
            stdout = "".join(seen)
            assert "serving until" in stdout, stdout
            socket_dir = socket_dir_of(stdout)
            assert sorted(os.listdir(socket_dir)) == ["dgram.sock", "echo.sock"]
            proc.send_signal(signum)
            rest, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr
    assert f"[reactor] demo: got {signum.name}: stopping the reactor" in rest
    assert rest.splitlines()[-1].endswith(f"clean shutdown (stopped by {signum.name})")
    assert not os.path.exists(socket_dir)


def test_demo_signal_before_the_clients_finish_exits_128_plus_signum() -> None:
    result = run_demo_patched("""
        import os, signal
        from support import wait_for
        real_run_clients = multi_server.run_clients

        def run_clients(services, interrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: interrupted, timeout=10)  # recorded by the callback in the reactor thread
            return real_run_clients(services, interrupted)

        multi_server.run_clients = run_clients
        """, "--quiet")
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert f"interrupted after 0 of {len(ALL_LABELS)} exchanges" in result.stderr
    assert not os.path.exists(socket_dir_of(result.stdout))


# -- the README's code --------------------------------------------------------


@dataclass
class Snippet:
    line: int   # where the block starts in README.md
    code: str

    @property
    def expected_output(self) -> list[str | None]:
        """The ``# comment`` after each ``print(...)``: what it prints (None if undocumented)."""
        expected: list[str | None] = []
        for line in self.code.splitlines():
            if re.match(r"\s*print\(", line):
                match = re.search(r"\)\s+#\s*(.+)$", line)
                expected.append(match.group(1).strip() if match else None)
        return expected


def readme_snippets() -> list[Snippet]:
    """Every ```python block of README.md, except those marked ``# not run``."""
    text = README.read_text(encoding="utf-8")
    snippets = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        code = match.group(1)
        if "# not run" not in code:
            snippets.append(Snippet(text.count("\n", 0, match.start()) + 1, code))
    return snippets


def test_readme_has_runnable_snippets() -> None:
    assert len(readme_snippets()) >= 4


@pytest.mark.parametrize("snippet", readme_snippets(), ids=lambda snippet: f"README.md:{snippet.line}")
def test_readme_snippet_runs_and_prints_what_it_says(snippet: Snippet) -> None:
    expected = snippet.expected_output
    assert None not in expected, "every print() in a README snippet needs a '# <output>' comment"
    result = run_python(snippet.code, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.splitlines() == expected


def test_readme_demo_excerpt_matches_the_demo_output(demo: subprocess.CompletedProcess[str]) -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^```text\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no ```text block with the demo's output"

    def normalized(line: str) -> str:  # ports, descriptors and the temp dir change from run to run
        return re.sub(r"\d+", "N", re.sub(r"rx-demo-\w+", "rx-demo-X", line))

    produced = {normalized(line) for line in demo.stdout.splitlines()}
    excerpt = [line for line in match.group(1).splitlines() if line != "..."]
    assert [line for line in excerpt if normalized(line) not in produced] == []
