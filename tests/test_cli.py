"""The ``reactor`` command, run as an operator would: ``python -m reactor`` in a fresh interpreter.

Each test starts the command (``--log-format json``, so its log is a list of
events), talks to it over loopback and Unix sockets, sends real signals to
the pid it started and checks what it leaves behind. Readiness is read from
the ``ready`` event (or sd_notify's ``READY=1`` on a socket the test binds),
never guessed with a sleep.
"""

from __future__ import annotations

import configparser
import json
import os
import pwd
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from activation import SOCKET_ACTIVATE, activated_argv
from pki import Pki
from support import EXAMPLES_DIR, REPO_ROOT, python_env, run_python, spawn_python, wait_for

#: Longest a test waits for one event of the command.
EVENT_TIMEOUT = 30.0


class Running:
    """The command running in a child process; its stderr read as JSON events.

    Use as a context manager: on exit a command still running is killed
    (with its process group's leftovers reaped by their parents) and waited for.
    """

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
                 pass_fds: Sequence[int] = (), argv: Sequence[str] | None = None,
                 log_format: str = "json") -> None:
        command = [sys.executable, "-m", "reactor", "--log-format", log_format, *args]
        self.proc = subprocess.Popen(list(argv) + command if argv is not None else command,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=python_env(env), cwd=cwd, pass_fds=tuple(pass_fds))
        assert self.proc.stderr is not None
        self._fd = self.proc.stderr.fileno()
        self._buffer = b""
        self._eof = False
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=EVENT_TIMEOUT)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()

    def _pump(self, timeout: float) -> bool:
        """Read what stderr has (waiting up to ``timeout``); False at EOF."""
        if self._eof:
            return False
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return True
        data = os.read(self._fd, 65536)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.events.append(entry)
        return True

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = EVENT_TIMEOUT, start: int = 0) -> dict[str, Any]:
        """The first event (from index ``start``) matching ``predicate``, reading stderr until it comes."""
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.events):
                if predicate(self.events[index]):
                    return self.events[index]
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._pump(min(remaining, 1.0)) and index >= len(self.events):
                if remaining > 0 and not self._eof:
                    continue
                raise AssertionError(f"no {what} from the command; its stderr:\n" + "\n".join(self.lines))

    def line_containing(self, text: str, timeout: float = EVENT_TIMEOUT) -> str:
        """The first stderr line containing ``text``, reading stderr until it comes."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            if time.monotonic() >= deadline or not self._pump(deadline - time.monotonic()):
                raise AssertionError(f"no line with {text!r}; stderr:\n" + "\n".join(self.lines))

    def event(self, name: str, timeout: float = EVENT_TIMEOUT, start: int = 0) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") == name, f"{name!r} event", timeout, start)

    def ready(self) -> list[dict[str, Any]]:
        """Wait for readiness; the ``listening`` events."""
        self.event("ready")
        return [e for e in self.events if e.get("event") == "listening"]

    def send(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def finish(self, timeout: float = EVENT_TIMEOUT) -> int:
        """Wait for the exit (reading the rest of stderr); the exit status."""
        deadline = time.monotonic() + timeout
        while self._pump(max(deadline - time.monotonic(), 0.01)):
            if time.monotonic() > deadline:
                raise AssertionError("the command did not exit; its stderr:\n" + "\n".join(self.lines))
        return self.proc.wait(timeout=max(deadline - time.monotonic(), 1.0))

    def stop(self) -> int:
        self.send(signal.SIGTERM)
        return self.finish()


def tcp_address(listening: dict[str, Any]) -> tuple[str, int]:
    return listening["host"], listening["port"]


def ask(address: Any, line: bytes = b"hello\n", family: int = socket.AF_INET) -> bytes:
    """Connect, send ``line``, return the first line of the answer."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(EVENT_TIMEOUT)
        client.connect(address)
        if line:  # b"": a handler that answers without reading
            client.sendall(line)
        return client.makefile("rb").readline()


def ask_datagram(address: Any, payload: bytes, family: int, reply_to: str | None = None) -> bytes:
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(EVENT_TIMEOUT)
        if reply_to is not None:
            client.bind(reply_to)
        client.sendto(payload, address)
        data = client.recv(65536)
    if reply_to is not None:
        os.unlink(reply_to)
    return data


def children_of(pid: int) -> set[int]:
    pids: set[int] = set()
    for name in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids.update(int(p) for p in name.read_text().split())
        except OSError:
            continue
    return pids


def descendants_of(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# ---------------------------------------------------------------- the command line


def test_help_teaches_usage_with_examples_bind_urls_and_signals() -> None:
    result = subprocess.run([sys.executable, "-m", "reactor", "--help"], capture_output=True, text=True,
                            env=python_env(), timeout=30)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: reactor [OPTIONS] SPEC [SERVER OPTIONS] [--serve SPEC [SERVER OPTIONS]]...")
    for needle in ("examples:", "http.server:SimpleHTTPRequestHandler", "bind URLs:", "systemd://NAME",
                   "unix://@NAME", "fd://N", "signals:", "USR1", "USR2", "--dispatch",
                   "prefork:N[,threads=T]", "--tls-cert FILE", "--proxy-trusted CIDR", "--log-format FORMAT",
                   "--pid-file PATH", "--user", "exit status:"):
        assert needle in text, needle


def test_the_console_script_is_declared() -> None:
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")
    assert config["options.entry_points"]["console_scripts"].split() == ["reactor", "=", "reactor.cli:main"]
    assert config["metadata"]["long_description"] == "file: README.md"
    assert (REPO_ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the reactor authors")


@pytest.mark.parametrize("args, message", [
    ([], "give a SPEC to serve (module:attr)"),
    (["cli_apps"], "SPEC 'cli_apps': expected module:attr"),
    (["cli_apps:EchoHandler", "--bind", "ftp://x"], "--bind 'ftp://x': expected tcp://HOST:PORT"),
    (["cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:99999"], "a port from 0 to 65535"),
    (["cli_apps:EchoHandler", "--bind", "tcp://::1:80"], "write an IPv6 address in brackets"),
    (["cli_apps:EchoHandler", "--bind", "fd://1"], "fd://N with N an inherited descriptor, 3 or more"),
    (["cli_apps:EchoHandler", "--dispatch", "threads:0"], "argument --dispatch/-d: expected inline"),
    (["cli_apps:EchoHandler", "--dispatch", "prefork:2,forks=3"], "argument --dispatch/-d: expected inline"),
    (["cli_apps:EchoHandler", "--max-connections", "-1"], "argument --max-connections: '-1' must be positive"),
    (["cli_apps:EchoHandler", "--io-timeout", "-1"], "argument --io-timeout: '-1' must be 0 or more"),
    (["cli_apps:EchoHandler", "--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
    (["cli_apps:EchoHandler", "--bind", "udp://127.0.0.1:0", "--io-timeout", "1"],
     "apply to stream servers, not to udp://127.0.0.1:0"),
    (["cli_apps:EchoHandler", "--allow", "not-a-network"], "cli_apps:EchoHandler: "),
    (["cli_apps:EchoHandler", "--user", "no-such-user-here"], "--user 'no-such-user-here': no such user"),
    (["cli_apps:EchoHandler", "--serve", "cli_apps:EchoHandler"], "--serve cli_apps:EchoHandler: give it at least"),
    (["cli_apps:EchoHandler", "--serve"], "the following arguments are required: SPEC"),
    (["cli_apps:EchoHandler", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["cli_apps:EchoHandler", "--log-format", "xml"], "argument --log-format: invalid choice: 'xml'"),
])
def test_bad_arguments_get_one_line_and_exit_status_2(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "reactor", *args], capture_output=True, text=True,
                            env=python_env(), timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reactor: error: ") and lines[0].endswith("(see reactor --help)"), lines[0]
    assert message in lines[0]
    assert result.stdout == ""


# ---------------------------------------------------------------- failing to start leaves nothing


def _leftovers(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_anywhere:Handler", "cannot import 'no_such_module_anywhere' (from SPEC "
                                        "no_such_module_anywhere:Handler): ModuleNotFoundError"),
    ("cli_apps:NoSuchHandler", "SPEC cli_apps:NoSuchHandler: module 'cli_apps' has no attribute 'NoSuchHandler'"),
    ("cli_apps:NOT_SERVABLE", "SPEC cli_apps:NOT_SERVABLE is neither a handler class nor a server factory"),
    ("socketserver:TCPServer", "SPEC socketserver:TCPServer is a server class"),
    ("cli_apps:broken_factory", "cli_apps:broken_factory(unix "),
])
def test_an_unservable_spec_fails_before_anything_is_left_behind(spec: str, message: str, unix_dir: str) -> None:
    pid_file = os.path.join(unix_dir, "pid")
    with Running(["--pid-file", pid_file, spec, "--bind", f"unix://{unix_dir}/a.sock"]) as running:
        assert running.finish() == 1
        failure = running.event("startup_failed")
    assert message in failure["message"]
    assert failure["level"] == "error"
    assert _leftovers(unix_dir) == []


def test_a_port_in_use_fails_cleanly_after_other_binds(unix_dir: str) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    pid_file = os.path.join(unix_dir, "pid")
    try:
        with Running(["--pid-file", pid_file, "cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/a.sock",
                      "--dispatch", "prefork:2", "--serve", "cli_apps:EchoHandler",
                      "--bind", f"tcp://127.0.0.1:{port}"]) as running:
            assert running.finish() == 1
            failure = running.event("startup_failed")
            assert descendants_of(running.pid) == set()
    finally:
        taken.close()
    assert f"--bind tcp://127.0.0.1:{port}: [Errno 98] Address already in use: cannot bind tcp4 127.0.0.1:{port}" \
        in failure["message"]
    assert _leftovers(unix_dir) == []
    assert not [e for e in running.events if e.get("event") == "listening"]


def test_a_missing_certificate_fails_cleanly(unix_dir: str) -> None:
    with Running(["cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/a.sock",
                  "--tls-cert", f"{unix_dir}/missing.pem"]) as running:
        assert running.finish() == 1
        failure = running.event("startup_failed")
    assert failure["message"] == (f"cannot start: cli_apps:EchoHandler: cannot load the TLS certificate: "
                                  f"{unix_dir}/missing.pem: No such file or directory")
    assert _leftovers(unix_dir) == []


# ---------------------------------------------------------------- serving


def test_every_family_in_one_process_then_a_clean_stop(unix_dir: str) -> None:
    pid_file = os.path.join(unix_dir, "reactor.pid")
    abstract = f"reactor-cli-{os.getpid()}"
    with Running(["--pid-file", pid_file,
                  "cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--bind", "tcp://[::1]:0",
                  "--bind", f"unix://{unix_dir}/stream.sock", "--bind", f"unix://@{abstract}",
                  "--serve", "cli_apps:DatagramEchoHandler", "--bind", "udp://127.0.0.1:0",
                  "--bind", f"unix-dgram://{unix_dir}/dgram.sock"]) as running:
        listening = running.ready()
        assert Path(pid_file).read_text() == f"{running.pid}\n"
        by_address = {e["address"].split(" ")[0]: e for e in listening}
        assert sorted(by_address) == ["tcp4", "tcp6", "udp4", "unix", "unix-dgram"]
        assert [e["address"] for e in listening if e["address"].startswith("unix ")] == [
            f"unix {unix_dir}/stream.sock", f"unix @{abstract}"]
        assert ask(tcp_address(by_address["tcp4"])) == b"hello\n"
        assert ask(tcp_address(by_address["tcp6"]), b"six\n", socket.AF_INET6) == b"six\n"
        assert ask(f"{unix_dir}/stream.sock", b"path\n", socket.AF_UNIX) == b"path\n"
        assert ask("\0" + abstract, b"abstract\n", socket.AF_UNIX) == b"abstract\n"
        assert ask_datagram(tcp_address(by_address["udp4"]), b"udp", socket.AF_INET) == b"udp"
        assert ask_datagram(f"{unix_dir}/dgram.sock", b"dgram", socket.AF_UNIX, f"{unix_dir}/client") == b"dgram"
        assert running.stop() == 0
    assert running.events[-1]["event"] == "stopped"
    assert _leftovers(unix_dir) == []  # socket files and pid file removed


def test_an_unmodified_http_server_handler_serves_the_chdir_directory(unix_dir: str) -> None:
    Path(unix_dir, "hello.txt").write_text("hello from http.server\n")
    with Running(["--chdir", unix_dir, "http.server:SimpleHTTPRequestHandler",
                  "--bind", "tcp://127.0.0.1:0", "--dispatch", "threads:2"]) as running:
        (listening,) = running.ready()
        host, port = tcp_address(listening)
        with socket.create_connection((host, port), timeout=EVENT_TIMEOUT) as client:
            client.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = b"".join(iter(lambda: client.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\nhello from http.server\n")
        assert running.stop() == 0


def test_a_server_factory_serves_each_bound_socket(unix_dir: str) -> None:
    with Running(["cli_apps:make_greeting_server", "--bind", "tcp://127.0.0.1:0",
                  "--bind", f"unix://{unix_dir}/g.sock"]) as running:
        tcp, _ = running.ready()
        assert ask(tcp_address(tcp), b"") == b"hello from a factory on AF_INET\n"
        assert ask(f"{unix_dir}/g.sock", b"", socket.AF_UNIX) == b"hello from a factory on AF_UNIX\n"
        assert running.stop() == 0


def test_text_logs_for_people_and_json_lines_for_machines(unix_dir: str) -> None:
    with Running(["cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/a.sock"], log_format="text") as running:
        running.line_containing("ready: serving")
        assert running.stop() == 0
    assert running.events == []
    pattern = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] (INFO|WARNING|ERROR) [\w.]+: .+$")
    assert all(pattern.match(line) for line in running.lines), running.lines
    with Running(["cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/a.sock"]) as running:
        running.ready()
        assert running.stop() == 0
    assert len(running.events) == len(running.lines) > 3
    first = running.events[0]
    assert set(first) >= {"time", "level", "logger", "pid", "message"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    listening = next(e for e in running.events if e.get("event") == "listening")
    assert listening["spec"] == "cli_apps:EchoHandler" and listening["dispatch"] == "inline"


# ---------------------------------------------------------------- dispatch and signals


def test_prefork_workers_serve_and_ttin_ttou_change_their_number(unix_dir: str) -> None:
    with Running(["cli_apps:WhoHandler", "--bind", f"unix://{unix_dir}/w.sock",
                  "--dispatch", "prefork:2,threads=2"]) as running:
        running.ready()
        (arbiter,) = children_of(running.pid)
        pid, uid, _ = ask(f"{unix_dir}/w.sock", b"", socket.AF_UNIX).decode().split()
        assert int(pid) in children_of(arbiter)  # a worker, not the master
        workers = lambda: len(children_of(arbiter)) - 1  # noqa: E731  (the arbiter's standby aside)
        assert workers() == 2
        running.send(signal.SIGTTIN)
        wait_for(lambda: workers() == 3, timeout=EVENT_TIMEOUT)
        running.send(signal.SIGTTOU)
        wait_for(lambda: workers() == 2, timeout=EVENT_TIMEOUT)
        assert running.stop() == 0
    assert descendants_of(running.pid) == set()


def _write_versioned_handler(directory: str, answer: str) -> None:
    Path(directory, "versioned.py").write_text(
        "import socketserver\n\n\n"
        "class Handler(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        f"        self.wfile.write(b{answer!r} + b'\\n')\n")


@pytest.fixture
def notify_socket(unix_dir: str) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(unix_dir, "notify")
    sock.bind(path)
    sock.settimeout(EVENT_TIMEOUT)
    with sock:
        yield path, sock


def _notifications(sock: socket.socket, until: Callable[[list[str]], bool]) -> list[str]:
    received: list[str] = []
    while not until(received):
        received.append(sock.recv(4096).decode())
    return received


def test_sighup_reloads_prefork_workers_with_the_new_code_and_notifies_systemd(
        unix_dir: str, notify_socket: tuple[str, socket.socket]) -> None:
    notify_path, notify = notify_socket
    app = os.path.join(unix_dir, "app")
    os.mkdir(app)
    _write_versioned_handler(app, "one")
    env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000", "PYTHONDONTWRITEBYTECODE": "1"}
    with Running(["--app-dir", app, "versioned:Handler", "--bind", f"unix://{unix_dir}/v.sock",
                  "--dispatch", "prefork:2"], env=env) as running:
        startup = _notifications(notify, lambda got: any(m.startswith("READY=1") for m in got))
        assert startup[-1] == "READY=1\nSTATUS=serving unix " + f"{unix_dir}/v.sock (2 workers)"
        assert ask(f"{unix_dir}/v.sock", b"", socket.AF_UNIX) == b"one\n"
        old_workers = descendants_of(running.pid)
        _write_versioned_handler(app, "version two")
        running.send(signal.SIGHUP)
        reload = _notifications(notify, lambda got: any(m.startswith("READY=1") for m in got))
        assert [m.split("\n")[0] for m in reload if not m.startswith("WATCHDOG")] == ["RELOADING=1", "READY=1"]
        running.event("reloaded")
        assert ask(f"{unix_dir}/v.sock", b"", socket.AF_UNIX) == b"version two\n"
        reloaded = [e for e in running.events if e.get("event") == "code_reloaded"]
        assert len(reloaded) == 2 and {e["reloaded_module"] for e in reloaded} == {"versioned"}
        now = descendants_of(running.pid)  # the arbiter and its standby stay; both workers are new
        assert len(now & old_workers) == 2 and len(now - old_workers) == 2, (old_workers, now)
        # The watchdog's keep-alives, sent from the master's loop at half of WATCHDOG_USEC.
        watchdog = _notifications(notify, lambda got: got.count("WATCHDOG=1") >= 2)
        assert watchdog.count("WATCHDOG=1") >= 2
        running.send(signal.SIGTERM)
        stopping = _notifications(notify, lambda got: any(m.startswith("STOPPING=1") for m in got))
        assert stopping[-1] == "STOPPING=1\nSTATUS=stopping"
        assert running.finish() == 0


def test_new_code_that_fails_to_import_keeps_the_old_code_serving(unix_dir: str) -> None:
    app = os.path.join(unix_dir, "app")
    os.mkdir(app)
    _write_versioned_handler(app, "one")
    with Running(["--app-dir", app, "versioned:Handler", "--bind", f"unix://{unix_dir}/v.sock",
                  "--dispatch", "prefork:1"], env={"PYTHONDONTWRITEBYTECODE": "1"}) as running:
        running.ready()
        Path(app, "versioned.py").write_text("def broken(:\n")
        running.send(signal.SIGHUP)
        running.event("reloaded")
        failure = running.wait_for(lambda e: "cannot re-import versioned" in e["message"], "re-import failure")
        assert "SyntaxError" in failure["exception"]
        assert ask(f"{unix_dir}/v.sock", b"", socket.AF_UNIX) == b"one\n"
        assert running.stop() == 0


def test_a_reload_whose_new_workers_cannot_boot_is_aborted_and_the_old_ones_serve_on(unix_dir: str) -> None:
    app = os.path.join(unix_dir, "app")
    os.mkdir(app)
    _write_versioned_handler(app, "one")
    with Running(["--app-dir", app, "versioned:Handler", "--bind", f"unix://{unix_dir}/v.sock",
                  "--dispatch", "prefork:2"], env={"PYTHONDONTWRITEBYTECODE": "1"}) as running:
        running.ready()
        Path(app, "versioned.py").write_text("raise SystemExit('this worker must not start')\n")
        running.send(signal.SIGHUP)
        running.event("reload_failed")
        assert ask(f"{unix_dir}/v.sock", b"", socket.AF_UNIX) == b"one\n"
        _write_versioned_handler(app, "two")  # fixed: the next reload goes through
        running.send(signal.SIGHUP)
        running.event("reloaded")
        assert ask(f"{unix_dir}/v.sock", b"", socket.AF_UNIX) == b"two\n"
        assert running.stop() == 0


def test_sighup_without_prefork_says_there_is_nothing_to_reload(unix_dir: str) -> None:
    with Running(["cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/e.sock"]) as running:
        running.ready()
        running.send(signal.SIGHUP)
        warning = running.wait_for(lambda e: e["message"].startswith("SIGHUP: nothing to reload"), "warning")
        assert warning["level"] == "warning"
        assert ask(f"{unix_dir}/e.sock", family=socket.AF_UNIX) == b"hello\n"
        assert running.stop() == 0


@pytest.mark.parametrize("dispatch", ["inline", "threads:2", "prefork:1"])
def test_sigterm_lets_the_request_in_flight_finish(dispatch: str, unix_dir: str) -> None:
    path = f"{unix_dir}/t.sock"
    with Running(["cli_apps:TwoStepHandler", "--bind", f"unix://{path}", "--dispatch", dispatch]) as running:
        running.ready()
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(EVENT_TIMEOUT)
            client.connect(path)
            reader = client.makefile("rb")
            client.sendall(b"one\n")
            assert reader.readline() == b"started\n"
            running.send(signal.SIGTERM)
            if dispatch != "inline":  # inline, the loop runs the handler: it sees the signal after it
                running.event("stopping")
            client.sendall(b"two\n")
            assert reader.readline() == b"done\n"
        assert running.finish() == 0
        running.event("stopping")
    assert _leftovers(unix_dir) == []


@pytest.mark.parametrize("dispatch", ["threads:2", "prefork:1"])
def test_a_second_sigterm_ends_the_requests_in_flight(dispatch: str, unix_dir: str) -> None:
    path = f"{unix_dir}/t.sock"
    with Running(["cli_apps:TwoStepHandler", "--bind", f"unix://{path}", "--dispatch", dispatch,
                  "--graceful-timeout", "60"]) as running:
        running.ready()
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(EVENT_TIMEOUT)
            client.connect(path)
            reader = client.makefile("rb")
            client.sendall(b"one\n")
            assert reader.readline() == b"started\n"
            running.send(signal.SIGTERM)
            running.event("stopping")
            running.send(signal.SIGTERM)
            running.event("abort")
            assert running.finish() == 0
            if dispatch.startswith("prefork"):
                assert reader.readline() == b""  # the worker was killed: ended, not finished
    assert _leftovers(unix_dir) == []


def test_sigusr1_reopens_the_log_file_after_rotation(unix_dir: str) -> None:
    log = os.path.join(unix_dir, "reactor.log")
    with Running(["--log-file", log, "cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/e.sock"]) as running:
        wait_for(lambda: os.path.exists(log) and '"event": "ready"' in Path(log).read_text(), timeout=EVENT_TIMEOUT)
        os.rename(log, log + ".1")
        running.send(signal.SIGUSR1)
        wait_for(lambda: os.path.exists(log) and '"event": "log_reopened"' in Path(log).read_text(),
                 timeout=EVENT_TIMEOUT)
        assert running.stop() == 0
    assert running.lines == []  # nothing on stderr
    rotated = [json.loads(line) for line in Path(log + ".1").read_text().splitlines()]
    current = [json.loads(line) for line in Path(log).read_text().splitlines()]
    assert rotated[-1]["event"] == "ready"
    assert [e.get("event") for e in current][-1] == "stopped"


def test_user_and_group_are_dropped_after_binding(unix_dir: str) -> None:
    nobody = pwd.getpwnam("nobody")
    # A sticky, world-writable directory (like /tmp): the files root created must still be
    # removable by the user the command becomes.
    os.chmod(unix_dir, 0o755)
    shared = os.path.join(unix_dir, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    args = ["--user", "nobody", "--pid-file", f"{shared}/pid", "cli_apps:WhoHandler", "--bind", "tcp://127.0.0.1:0",
            "--bind", f"unix://{shared}/who.sock", "--dispatch", "prefork:1"]
    with Running(args) as running:
        if os.geteuid() != 0:  # only root may switch: the refusal must then be clean
            assert running.finish() == 1
            assert "cannot switch to nobody" in running.event("startup_failed")["message"]
            assert _leftovers(shared) == []
            return
        tcp, _ = running.ready()
        pid, uid, _ = ask(tcp_address(tcp), b"").decode().split()
        assert int(uid) == nobody.pw_uid  # in the worker
        assert int(ask(f"{shared}/who.sock", b"", socket.AF_UNIX).split()[1]) == nobody.pw_uid
        status = Path(f"/proc/{running.pid}/status").read_text()  # and in the master
        assert re.search(rf"^Uid:\s+{nobody.pw_uid}\s", status, re.M)
        assert re.search(rf"^Gid:\s+{nobody.pw_gid}\s", status, re.M)
        assert os.stat(f"{shared}/who.sock").st_uid == nobody.pw_uid
        assert running.stop() == 0
    assert _leftovers(shared) == []


def test_socket_mode_sets_the_permissions_of_unix_socket_files(unix_dir: str) -> None:
    with Running(["cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/m.sock", "--socket-mode", "600",
                  "--serve", "cli_apps:DatagramEchoHandler", "--bind", f"unix-dgram://{unix_dir}/d.sock",
                  "--socket-mode", "640"]) as running:
        running.ready()
        assert os.stat(f"{unix_dir}/m.sock").st_mode & 0o777 == 0o600
        assert os.stat(f"{unix_dir}/d.sock").st_mode & 0o777 == 0o640
        assert running.stop() == 0


# ---------------------------------------------------------------- connection options


def test_tls_certificate_and_key(pki: Pki) -> None:
    with Running(["cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--tls-cert", str(pki.cert),
                  "--tls-key", str(pki.key)]) as running:
        (listening,) = running.ready()
        context = pki.client_context()
        with socket.create_connection(tcp_address(listening), timeout=EVENT_TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as client:
                client.sendall(b"secret\n")
                assert client.makefile("rb").readline() == b"secret\n"
                assert isinstance(client, ssl.SSLSocket)
        assert running.stop() == 0


def test_proxy_protocol_and_trusted_networks() -> None:
    with Running(["cli_apps:WhoHandler", "--bind", "tcp://127.0.0.1:0", "--proxy-protocol", "v1",
                  "--proxy-trusted", "127.0.0.0/8", "--max-connections", "10", "--io-timeout", "5"]) as running:
        (listening,) = running.ready()
        answer = ask(tcp_address(listening), b"PROXY TCP4 192.0.2.7 198.51.100.1 4567 80\r\n")
        assert answer.decode().split()[2] == "192.0.2.7"
        assert running.stop() == 0


def test_deny_refuses_clients_and_allow_admits_them() -> None:
    with Running(["cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--deny", "127.0.0.0/8",
                  "--serve", "cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--allow", "127.0.0.1",
                  "--max-connections-per-ip", "4", "--wait-for-data", "5"]) as running:
        denied, allowed = running.ready()
        with socket.create_connection(tcp_address(denied), timeout=EVENT_TIMEOUT) as client:
            try:
                assert client.recv(1) == b""  # closed at once
            except ConnectionResetError:
                pass
        assert ask(tcp_address(allowed)) == b"hello\n"
        assert running.stop() == 0


def test_io_timeout_ends_a_silent_client() -> None:
    with Running(["cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--io-timeout", "0.2"]) as running:
        (listening,) = running.ready()
        with socket.create_connection(tcp_address(listening), timeout=EVENT_TIMEOUT) as client:
            assert client.recv(1) == b""  # the handler's read timed out; the connection closed
        assert running.stop() == 0


def test_keepalive_timeout_parks_connections_and_closes_idle_ones() -> None:
    with Running(["cli_apps:LineLoop", "--bind", "tcp://127.0.0.1:0", "--dispatch", "threads:1",
                  "--keepalive-timeout", "0.3"]) as running:
        (listening,) = running.ready()
        address = tcp_address(listening)
        with socket.create_connection(address, timeout=EVENT_TIMEOUT) as first, \
                socket.create_connection(address, timeout=EVENT_TIMEOUT) as second:
            for client in (first, second, first, second):  # one thread, two open connections
                client.sendall(b"hi\n")
                assert client.recv(10) == b"hi\n"
            assert first.recv(1) == b""  # idle past --keepalive-timeout: closed by the server
        assert running.stop() == 0


def test_slow_client_flags_reach_the_read_ahead() -> None:
    with Running(["http.server:SimpleHTTPRequestHandler", "--bind", "tcp://127.0.0.1:0", "--dispatch", "threads:1",
                  "--request-head-timeout", "0.3", "--max-request-headers", "3"]) as running:
        (listening,) = running.ready()
        address = tcp_address(listening)
        with socket.create_connection(address, timeout=EVENT_TIMEOUT) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # holds no worker: the one thread serves others
            with socket.create_connection(address, timeout=EVENT_TIMEOUT) as crowded:
                crowded.sendall(b"GET / HTTP/1.0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n")
                assert crowded.recv(100).startswith(b"HTTP/1.1 431 ")
            assert slow.recv(100).startswith(b"HTTP/1.1 408 ")  # no whole head within 0.3 s
        assert running.stop() == 0


def test_reuse_port_lets_two_processes_share_a_port() -> None:
    with Running(["cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0", "--reuse-port"]) as first:
        (listening,) = first.ready()
        url = f"tcp://127.0.0.1:{listening['port']}"
        with Running(["cli_apps:EchoHandler", "--bind", url, "--reuse-port"]) as second:
            second.ready()
            assert ask(tcp_address(listening)) == b"hello\n"
            assert second.stop() == 0
        assert first.stop() == 0


# ---------------------------------------------------------------- inherited and socket-activated sockets


def test_fd_and_systemd_binds_serve_inherited_sockets_without_rebinding(unix_dir: str) -> None:
    web = socket.create_server(("127.0.0.1", 0))
    admin = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    admin.bind(f"{unix_dir}/admin.sock")
    admin.listen()
    logs = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    logs.bind(f"{unix_dir}/logs.sock")
    extra = socket.create_server(("127.0.0.1", 0))  # passed with fd://N, outside LISTEN_FDS
    fds = [web.fileno(), admin.fileno(), logs.fileno()]
    try:
        argv = activated_argv(fds, [], names=["web", "admin", "logs"])
        with Running(["cli_apps:EchoHandler", "--bind", "systemd://web", "--bind", "systemd://admin",
                      "--bind", f"fd://{extra.fileno()}", "--serve", "cli_apps:DatagramEchoHandler",
                      "--bind", "systemd://logs"],
                     argv=argv, pass_fds=[*fds, extra.fileno()]) as running:
            listening = running.ready()
            assert [e["bind"] for e in listening] == ["systemd://web", "systemd://admin",
                                                      f"fd://{extra.fileno()}", "systemd://logs"]
            assert ask(web.getsockname(), b"web\n") == b"web\n"
            assert ask(f"{unix_dir}/admin.sock", b"admin\n", socket.AF_UNIX) == b"admin\n"
            assert ask(extra.getsockname(), b"extra\n") == b"extra\n"
            assert ask_datagram(f"{unix_dir}/logs.sock", b"log", socket.AF_UNIX, f"{unix_dir}/c") == b"log"
            assert running.stop() == 0
        # Not ours: an inherited socket's file stays where its owner put it.
        assert sorted(_leftovers(unix_dir)) == ["admin.sock", "logs.sock"]
    finally:
        for sock in (web, admin, logs, extra):
            sock.close()


def test_systemd_without_a_name_serves_every_activated_socket_and_names_must_exist(unix_dir: str) -> None:
    one = socket.create_server(("127.0.0.1", 0))
    two = socket.create_server(("127.0.0.1", 0))
    fds = [one.fileno(), two.fileno()]
    try:
        with Running(["cli_apps:EchoHandler", "--bind", "systemd://"],
                     argv=activated_argv(fds, [], names=["a", "b"]), pass_fds=fds) as running:
            assert len(running.ready()) == 2
            assert ask(one.getsockname()) == ask(two.getsockname()) == b"hello\n"
            assert running.stop() == 0
        with Running(["cli_apps:EchoHandler", "--bind", "systemd://web"],
                     argv=activated_argv(fds, [], names=["a", "b"]), pass_fds=fds) as running:
            assert running.finish() == 1
            assert "--bind systemd://web: no socket-activated socket named 'web' (LISTEN_FDNAMES gave: a, b)" \
                in running.event("startup_failed")["message"]
    finally:
        one.close()
        two.close()


def test_bad_inherited_descriptors_and_activation_variables_fail_cleanly(unix_dir: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname(), timeout=EVENT_TIMEOUT)
    accepted, _ = listener.accept()
    try:
        with Running(["cli_apps:EchoHandler", "--bind", f"fd://{accepted.fileno()}"],
                     pass_fds=[accepted.fileno()]) as running:
            assert running.finish() == 1
            assert (f"--bind fd://{accepted.fileno()}: descriptor {accepted.fileno()} cannot listen"
                    in running.event("startup_failed")["message"])
        with Running(["cli_apps:EchoHandler", "--bind", "fd://99"]) as running:
            assert running.finish() == 1
            assert "--bind fd://99: descriptor 99 is not open (Bad file descriptor)" in \
                running.event("startup_failed")["message"]
        fds = [accepted.fileno()]
        with Running(["cli_apps:EchoHandler", "--bind", "systemd://"],
                     argv=activated_argv(fds, [], names=["conn"]), pass_fds=fds) as running:
            assert running.finish() == 1
            assert "--bind systemd://: descriptor 3 (conn) is not a listening socket" in \
                running.event("startup_failed")["message"]
        fds = [listener.fileno()]
        with Running(["cli_apps:EchoHandler", "--bind", "systemd://web"],
                     argv=activated_argv(fds, [], names=["web", "extra"]), pass_fds=fds) as running:
            assert running.finish() == 1
            assert "socket activation: LISTEN_FDNAMES has 2 names ('web:extra') for LISTEN_FDS=1" in \
                running.event("startup_failed")["message"]
    finally:
        for sock in (listener, client, accepted):
            sock.close()


def test_activated_sockets_nobody_binds_are_closed_with_a_warning(unix_dir: str) -> None:
    used = socket.create_server(("127.0.0.1", 0))
    unused = socket.create_server(("127.0.0.1", 0))
    fds = [used.fileno(), unused.fileno()]
    try:
        with Running(["cli_apps:EchoHandler", "--bind", "systemd://web"],
                     argv=activated_argv(fds, [], names=["web", "other"]), pass_fds=fds) as running:
            running.ready()
            warning = running.wait_for(lambda e: e["level"] == "warning", "warning")
            assert warning["message"] == (f"socket-activated tcp4 127.0.0.1:{unused.getsockname()[1]} (other) "
                                          "is not served by any --bind; closing it")
            assert ask(used.getsockname()) == b"hello\n"
            assert running.stop() == 0
    finally:
        used.close()
        unused.close()


def test_under_the_real_systemd_socket_activate(unix_dir: str, notify_socket: tuple[str, socket.socket]) -> None:
    notify_path, notify = notify_socket
    path = f"{unix_dir}/activated.sock"
    env = python_env()
    argv = [SOCKET_ACTIVATE, "-l", path, "--fdname=web", "-E", f"PYTHONPATH={env['PYTHONPATH']}",
            "-E", f"NOTIFY_SOCKET={notify_path}"]
    with Running(["cli_apps:EchoHandler", "--bind", "systemd://web", "--dispatch", "prefork:2"],
                 argv=argv) as running:
        wait_for(lambda: os.path.exists(path) or running.proc.poll() is not None, timeout=EVENT_TIMEOUT)
        # The activator execs the command on the first connection; that connection is served.
        assert ask(path, b"first\n", socket.AF_UNIX) == b"first\n"
        ready = _notifications(notify, lambda got: any(m.startswith("READY=1") for m in got))
        assert ready[-1] == f"READY=1\nSTATUS=serving unix {path} (2 workers)"
        (listening,) = running.ready()
        assert listening["bind"] == "systemd://web"
        assert running.pid == running.events[0]["pid"]  # exec'd: the activator's pid is the command's
        assert running.stop() == 0
    assert os.path.exists(path)  # the activator's socket: not ours to remove


# ---------------------------------------------------------------- the example


def test_the_command_line_example_serves_http_and_a_line_protocol_from_one_process() -> None:
    result = run_python(EXAMPLES_DIR / "command_line.py", "--once", timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "< hello over HTTP\n" in result.stdout
    assert "< VALUE hello over a Unix socket\n" in result.stdout
    assert result.stdout.endswith("exit status 0; socket file left: False\n")


def test_the_command_line_example_serves_until_sigterm(unix_dir: str) -> None:
    kv_path = f"{unix_dir}/kv.sock"
    with spawn_python(EXAMPLES_DIR / "command_line.py", "--port", "0", "--kv-socket", kv_path) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            assert proc.stdout.readline().startswith("$ reactor --log-format text")
            # A reader thread, not select() on the buffered stream: a read can take several
            # lines at once, and select() knows nothing of the ones left in the buffer.
            log: list[str] = []
            ready = threading.Event()

            def read_log(stream: Any = proc.stderr) -> None:
                for line in stream:
                    log.append(line)
                    if "ready: serving" in line:
                        ready.set()

            reader = threading.Thread(target=read_log, daemon=True)
            reader.start()
            assert ready.wait(EVENT_TIMEOUT), log
            assert ask(kv_path, b"GET nothing\n", socket.AF_UNIX) == b"NOT_FOUND\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=EVENT_TIMEOUT) == 0
            reader.join(EVENT_TIMEOUT)  # it ends at the stream's EOF
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not os.path.exists(kv_path)


# ---------------------------------------------------------------- in-process pieces


def test_ipv6_binds_are_ipv6_only_so_both_families_share_a_port() -> None:
    from reactor.cli import open_listeners, parse_command_line

    config = parse_command_line(["cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0"])
    (first,) = open_listeners(config.servers[0], [], set())
    port = first.sock.getsockname()[1]
    config = parse_command_line(["cli_apps:EchoHandler", "--bind", f"tcp://[::]:{port}"])
    try:
        (second,) = open_listeners(config.servers[0], [], set())
        try:
            assert second.sock.family == socket.AF_INET6
            assert second.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        finally:
            second.close()
    finally:
        first.close()


@pytest.mark.parametrize("url, kind, address", [
    ("tcp://127.0.0.1:80", "tcp", ("127.0.0.1", 80)),
    ("tcp://[::1]:8080", "tcp", ("::1", 8080)),
    ("tcp://:8000", "tcp", ("0.0.0.0", 8000)),
    ("udp://localhost:53", "udp", ("localhost", 53)),
    ("unix:///run/x.sock", "unix", "/run/x.sock"),
    ("unix://@name", "unix", "\0name"),
    ("unix-dgram:///run/d.sock", "unix-dgram", "/run/d.sock"),
    ("fd://3", "fd", 3),
    ("systemd://web", "systemd", "web"),
    ("systemd://", "systemd", None),
])
def test_bind_urls_parse(url: str, kind: str, address: object) -> None:
    from reactor.cli import parse_bind

    parsed = parse_bind(url)
    assert (parsed.url, parsed.kind, parsed.address) == (url, kind, address)
