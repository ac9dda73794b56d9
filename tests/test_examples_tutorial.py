"""The socketserver tutorial examples (examples/echo_*.py), each run in a fresh interpreter.

Every example is run twice: with ``--once`` (its own clients, then exit 0) and
serving (started without ``--once``, a client from this test, then SIGTERM or
SIGINT, exit 0 with a "stopped by" line). The last two tests pin down the
pattern the examples' signal handling relies on: a plain ``signal.signal``
handler that calls ``server.shutdown()`` in the serving thread stops
``serve_forever()`` wherever the signal lands.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from support import REPO_ROOT, ipv6_available, run_python, spawn_python, wait_for

EXAMPLES = REPO_ROOT / "examples"
ALL_EXAMPLES = ["echo_simple.py", "echo_logging.py", "echo_threaded.py", "echo_forking.py"]

MESSAGE = b"Hello, world"
TIMEOUT = 5.0
#: How long an example may take to exit after the signal.
EXIT_TIMEOUT = 15.0

HOSTS = [pytest.param("127.0.0.1", id="tcp4"),
         pytest.param("::1", id="tcp6",
                      marks=pytest.mark.skipif(not ipv6_available(), reason="IPv6 not available"))]
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]

LISTENING = re.compile(r"^listening on (tcp4 127\.0\.0\.1|tcp6 \[::1\]):(\d+)$")


# -- helpers ------------------------------------------------------------------


def run_once(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_python(EXAMPLES / name, "--once", *args, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result


def listening_port(line: str, where: str = "tcp4 127.0.0.1") -> int:
    match = LISTENING.match(line)
    assert match and match.group(1) == where, line
    return int(match.group(2))


def exchange(sock: socket.socket, message: bytes = MESSAGE) -> bytes:
    """Send ``message`` on a connected socket, read the reply until the server closes."""
    sock.sendall(message)
    chunks = []
    while chunk := sock.recv(1024):
        chunks.append(chunk)
    return b"".join(chunks)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


@dataclass
class Serving:
    """An example started without ``--once``, and what it has printed so far."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def read_until(self, predicate: Callable[[str], bool]) -> str:
        """Read stdout lines until one matches; return it (EOF fails the test)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if predicate(self.lines[-1]):
                return self.lines[-1]
        raise AssertionError(f"the example exited (status {self.proc.wait()}) after printing:\n"
                             + "\n".join(self.lines) + f"\nstderr:\n{self.proc.stderr and self.proc.stderr.read()}")

    def stop(self, signum: int) -> tuple[list[str], str]:
        """Send ``signum``, wait for the exit; return every stdout line and stderr."""
        self.proc.send_signal(signum)
        try:
            rest, stderr = self.proc.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest, stderr = self.proc.communicate()
            pytest.fail(f"still running {EXIT_TIMEOUT:g}s after {signal.Signals(signum).name}; printed:\n"
                        + "\n".join(self.lines) + rest + f"\nstderr:\n{stderr}")
        return self.lines + rest.splitlines(), stderr


@contextlib.contextmanager
def serving(name: str, *args: str) -> Iterator[tuple[Serving, int]]:
    """Start ``examples/name`` without ``--once``; yield it and its port once it listens."""
    with spawn_python(EXAMPLES / name, *args, stdin=subprocess.DEVNULL) as proc:
        try:
            example = Serving(proc)
            port = listening_port(example.read_until(lambda line: line.startswith("listening on ")))
            yield example, port
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def assert_stopped_cleanly(example: Serving, lines: list[str], stderr: str, signum: int) -> None:
    assert example.proc.returncode == 0, "\n".join(lines) + stderr
    assert stderr == ""
    assert f"stopped by {signal.Signals(signum).name}" in lines


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists, not even as a zombie (kill(pid, 0) succeeds on a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- every example ------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_help_lists_its_options(name: str) -> None:
    result = run_python(EXAMPLES / name, "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    for option in ("--host", "--port", "--once"):
        assert option in result.stdout


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_binds_the_given_port_and_names_it_when_in_use(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_python(EXAMPLES / name, "--once", "--port", str(port), timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.fullmatch(rf"error: \[Errno \d+\] Address already in use: cannot bind tcp4 127\.0\.0\.1:{port}\n",
                        result.stderr), result.stderr
    assert "listening on" not in result.stdout


# -- echo_simple.py -----------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
def test_echo_simple_once_prints_what_it_sent_and_received(host: str) -> None:
    result = run_once("echo_simple.py", "--host", host)
    lines = result.stdout.splitlines()
    listening_port(lines[0], "tcp4 127.0.0.1" if host == "127.0.0.1" else "tcp6 [::1]")
    assert lines[1:] == ["Sending : Hello, world", "Received: Hello, world"]


@pytest.mark.parametrize("signum", SIGNALS)
def test_echo_simple_serves_a_client_until_signalled(signum: int) -> None:
    with serving("echo_simple.py") as (example, port):
        with connect(port) as sock:
            assert exchange(sock, b"ping from the test") == b"ping from the test"
        lines, stderr = example.stop(signum)
    assert_stopped_cleanly(example, lines, stderr, signum)
    assert lines[1:] == [f"stopped by {signal.Signals(signum).name}"]


# -- echo_logging.py ----------------------------------------------------------

#: What the main thread logs with --once, in order (P: the server's port).
LOGGING_MAIN_THREAD = [
    "EchoServer: __init__",
    "EchoServer: server_activate",
    "listening on tcp4 127.0.0.1:P",
    "client: Server on 127.0.0.1:P",
    "client: creating socket",
    "client: connecting to server",
    "client: sending data: 'Hello, world'",
    "client: response from server: 'Hello, world'",
    "client: closing socket",
    "client: done",
    "EchoServer: shutdown",
    "EchoServer: server_close",
]

#: What the serving thread logs for one request, in order (FD: the request
#: socket's descriptor, C: the client's port). Neither serve_forever() loops on
#: handle_request(), so the override never logs.
LOGGING_REQUEST = [
    "EchoServer: verify_request(<socket fd=FD>, ('127.0.0.1', C))",
    "EchoServer: process_request(<socket fd=FD>, ('127.0.0.1', C))",
    "EchoServer: finish_request(<socket fd=FD>, ('127.0.0.1', C))",
    "EchoRequestHandler: __init__",
    "EchoRequestHandler: setup",
    "EchoRequestHandler: handle",
    'EchoRequestHandler: recv()->"Hello, world"',
    "EchoRequestHandler: finish",
    "EchoServer: close_request(<socket fd=FD>)",
]
LOGGING_SERVING_THREAD = ["EchoServer: waiting for request", *LOGGING_REQUEST]


def mask(lines: list[str], port: int) -> list[str]:
    """Replace the server's port by P, the request's fd by FD and the client's port by C.

    Each must be the same wherever it appears.
    """
    fds = set(re.findall(r"<socket fd=(\d+)>", "\n".join(lines)))
    clients = set(re.findall(r"\('127\.0\.0\.1', (\d+)\)", "\n".join(lines)))
    assert len(fds) <= 1 and len(clients) <= 1, (fds, clients)
    masked = []
    for line in lines:
        line = re.sub(rf"127\.0\.0\.1:{port}$", "127.0.0.1:P", line)
        line = re.sub(r"<socket fd=\d+>", "<socket fd=FD>", line)
        masked.append(re.sub(r"\('127\.0\.0\.1', \d+\)", "('127.0.0.1', C)", line))
    return masked


@pytest.fixture(scope="module")
def logging_once() -> list[str]:
    """The masked output of one ``echo_logging.py --once`` run, shared by the tests that read it."""
    result = run_once("echo_logging.py")
    lines = result.stdout.splitlines()
    return mask(lines, listening_port(lines[2]))


def test_echo_logging_once_main_thread_logs_the_tutorial_steps_in_order(logging_once: list[str]) -> None:
    assert [line for line in logging_once if line not in LOGGING_SERVING_THREAD] == LOGGING_MAIN_THREAD


def test_echo_logging_once_serving_thread_logs_every_hook_in_order(logging_once: list[str]) -> None:
    assert [line for line in logging_once if line in LOGGING_SERVING_THREAD] == LOGGING_SERVING_THREAD


def test_echo_logging_once_interleaves_the_threads_as_causality_requires(logging_once: list[str]) -> None:
    # The two threads' lines interleave differently from run to run; these
    # orders always hold, because each "before" causes the "after".
    def before(first: str, then: str) -> None:
        assert logging_once.index(first) < logging_once.index(then), (first, then, logging_once)

    before("EchoServer: server_activate", "EchoServer: waiting for request")  # thread started after
    before("client: sending data: 'Hello, world'", 'EchoRequestHandler: recv()->"Hello, world"')
    before("EchoRequestHandler: finish", "client: response from server: 'Hello, world'")  # EOF after finish
    before("EchoServer: close_request(<socket fd=FD>)", "EchoServer: server_close")  # shutdown() waits


@pytest.mark.parametrize("signum", SIGNALS)
def test_echo_logging_serving_logs_each_request_then_stops(signum: int) -> None:
    with serving("echo_logging.py") as (example, port):
        with connect(port) as sock:
            assert exchange(sock) == MESSAGE
        # The client saw EOF before close_request ran: wait for its line, so the signal comes after.
        example.read_until(lambda line: line.startswith("EchoServer: close_request("))
        lines, stderr = example.stop(signum)
    assert_stopped_cleanly(example, lines, stderr, signum)
    assert mask(lines, port) == [
        "EchoServer: __init__",
        "EchoServer: server_activate",
        "listening on tcp4 127.0.0.1:P",
        "EchoServer: waiting for request",
        *LOGGING_REQUEST,
        "EchoServer: shutdown",  # from the signal handler
        f"stopped by {signal.Signals(signum).name}",
        "EchoServer: server_close",
    ]


# -- echo_threaded.py ---------------------------------------------------------


def thread_names(replies: list[str]) -> list[str]:
    """``Thread-2 (process_request_thread): Hello, world`` -> ``Thread-2 (process_request_thread)``."""
    names = []
    for reply in replies:
        name, sep, echoed = reply.partition(": ")
        assert sep and echoed == "Hello, world", reply
        names.append(name)
    return names


def test_echo_threaded_once_three_clients_answered_by_three_request_threads() -> None:
    lines = run_once("echo_threaded.py").stdout.splitlines()
    listening_port(lines[0])
    assert lines[1] == "Server loop running in thread: server"
    exchanges = lines[2:-1]
    assert exchanges[0::2] == [f"client-{i}: Sending : Hello, world" for i in (1, 2, 3)]
    received = [re.fullmatch(rf"client-{i}: Received: (.*)", line) for i, line in enumerate(exchanges[1::2], 1)]
    assert all(received) and len(received) == 3, exchanges
    names = thread_names([match.group(1) for match in received if match])
    assert len(set(names)) == 3 and "server" not in names, names
    assert all(name.endswith("(process_request_thread)") for name in names), names
    assert lines[-1] == "ok: 3 replies from 3 different request threads, none from the serving thread 'server'"


@pytest.mark.parametrize("signum", SIGNALS)
def test_echo_threaded_serves_clients_concurrently_until_signalled(signum: int) -> None:
    with serving("echo_threaded.py") as (example, port):
        assert example.read_until(lambda line: True) == "Server loop running in thread: MainThread"
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(connect(port)) for _ in range(3)]
            # Answered last-connected first: each request has its own thread waiting in recv(),
            # where a server handling one request at a time would still be stuck on the first.
            replies = [exchange(sock).decode() for sock in reversed(socks)]
        lines, stderr = example.stop(signum)
    assert_stopped_cleanly(example, lines, stderr, signum)
    names = thread_names(replies)
    assert len(set(names)) == 3 and "MainThread" not in names, names


# -- echo_forking.py ----------------------------------------------------------


def child_pid(reply: str) -> int:
    """``4242: Hello, world`` -> 4242."""
    pid, sep, echoed = reply.partition(": ")
    assert sep and pid.isdigit() and echoed == "Hello, world", reply
    return int(pid)


def test_echo_forking_once_three_clients_answered_by_child_processes() -> None:
    lines = run_once("echo_forking.py").stdout.splitlines()
    listening_port(lines[0])
    match = re.fullmatch(r"Server loop running in process: (\d+)", lines[1])
    assert match, lines[1]
    server_pid = int(match.group(1))
    exchanges = lines[2:8]
    assert exchanges[0::2] == ["Sending : Hello, world"] * 3
    assert all(line.startswith("Received: ") for line in exchanges[1::2]), exchanges
    pids = [child_pid(line.removeprefix("Received: ")) for line in exchanges[1::2]]
    assert server_pid not in pids and len(set(pids)) == 3, (server_pid, pids)
    assert lines[8:] == [
        f"ok: 3 replies from child processes {', '.join(map(str, pids))}, none from the server process {server_pid}",
        "ok: no child process left",
    ]


@pytest.mark.parametrize("signum", SIGNALS)
def test_echo_forking_serves_each_client_in_a_child_and_reaps_it(signum: int) -> None:
    with serving("echo_forking.py") as (example, port):
        server_pid = example.proc.pid
        assert example.read_until(lambda line: True) == f"Server loop running in process: {server_pid}"
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(connect(port)) for _ in range(3)]
            replies = [exchange(sock).decode() for sock in reversed(socks)]  # one child each, at once
        pids = [child_pid(reply) for reply in replies]
        assert server_pid not in pids and len(set(pids)) == 3, (server_pid, pids)
        # While the server still runs: a zombie would still answer kill(pid, 0).
        for pid in pids:
            wait_for(functools.partial(process_gone, pid), timeout=10, message=f"child {pid} not reaped by the server")
        assert example.proc.poll() is None
        lines, stderr = example.stop(signum)
    assert_stopped_cleanly(example, lines, stderr, signum)


# -- the signal pattern every example relies on --------------------------------


@pytest.mark.timeout(30)
def test_shutdown_from_a_signal_handler_while_serve_forever_starts_stops_it() -> None:
    # The examples' handlers call server.shutdown() in the serving thread. A
    # signal can land at any bytecode, including while serve_forever() is
    # setting up its reactor; raise_signal() inside Reactor() puts it there
    # every time (the handler runs as soon as raise_signal returns).
    code = """
        import signal
        import reactor.socketserver as compat

        real_reactor = compat.Reactor

        def reactor_interrupted_by_a_signal(*args, **kwargs):
            signal.raise_signal(signal.SIGTERM)
            return real_reactor(*args, **kwargs)

        compat.Reactor = reactor_interrupted_by_a_signal
        server = compat.TCPServer(("127.0.0.1", 0), compat.BaseRequestHandler)
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
        server.serve_forever()
        server.server_close()
        print("stopped")
        """
    try:
        result = run_python(code, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("serve_forever() neither returned nor failed within 10 s of a SIGTERM whose handler "
                    "called shutdown() (deadlock on the server's serving lock, or the shutdown was lost)")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stopped\n"


@pytest.mark.timeout(30)
def test_shutdown_from_a_signal_handler_just_before_select_stops_serve_forever() -> None:
    # Same pattern, the signal landing in the serving reactor's tick after it
    # decided how long to wait but before select(): time_until_next() raising
    # it puts it there every time.
    code = """
        import signal
        import reactor.socketserver as compat

        class ReactorInterruptedBeforeSelect(compat.Reactor):
            interrupted = False

            def time_until_next(self):
                if not ReactorInterruptedBeforeSelect.interrupted:
                    ReactorInterruptedBeforeSelect.interrupted = True
                    signal.raise_signal(signal.SIGTERM)
                return super().time_until_next()

        compat.Reactor = ReactorInterruptedBeforeSelect
        server = compat.TCPServer(("127.0.0.1", 0), compat.BaseRequestHandler)
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
        server.serve_forever()
        server.server_close()
        print("stopped")
        """
    try:
        result = run_python(code, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("serve_forever() kept waiting in select() for 10 s after a SIGTERM whose handler "
                    "called shutdown() just before the select")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stopped\n"
