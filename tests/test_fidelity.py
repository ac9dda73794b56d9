"""Fidelity to the stdlib socketserver where code in the wild depends on details.

* ``ThreadingMixIn._threads``: the stdlib's attribute (``len(server._threads)``
  is read by CPython's own test and by user code), holding only live threads.
* CPython's own ``test.test_socketserver``, run against reactor's module.
* ``request_queue_size``: reactor's documented default (``socket.SOMAXCONN``),
  seen in the kernel's listen backlog, and a subclass's or instance's own value.
* Logging: normal operation through the compat API emits no log record, so a
  logging handler that talks to a server in the same process cannot be fed
  (or deadlocked) by the server it talks to.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import socketserver as rx_socketserver
from support import run_python, wait_for
from test_compat import EchoStreamHandler, kernel_listen_backlog


# ---------------------------------------------------------------- helpers

@pytest.fixture
def serving_thread() -> Iterator[list[threading.Thread]]:
    """Threads the test starts (serve_forever loops); joined afterwards, bounded."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), f"{thread.name} did not stop"


def start_serving(server: Any, threads: list[threading.Thread]) -> None:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name=f"serve-{type(server).__name__}")
    thread.start()
    threads.append(thread)


# ---------------------------------------------------------------- ThreadingMixIn._threads

class BlockingHandler(rx_socketserver.StreamRequestHandler):
    """Holds its request until the server's ``release`` event is set."""

    server: Any

    def handle(self) -> None:
        self.rfile.readline()
        self.server.handler_threads.append(threading.current_thread())
        self.server.started.release()
        assert self.server.release.wait(timeout=10)
        self.wfile.write(b"done\n")
        with self.server.lock:
            self.server.finished += 1


class BlockingServer(rx_socketserver.ThreadingTCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.finished = 0
        self.handler_threads: list[threading.Thread] = []


def open_requests(server: Any, count: int) -> list[socket.socket]:
    """``count`` clients whose requests are now running in their handlers."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(server.server_address, timeout=5)
        socks.append(sock)
        sock.sendall(b"go\n")
        server.handle_request()  # accepts it and starts its thread
        assert server.started.acquire(timeout=5)
    return socks


def test_threading_mixin_keeps_the_stdlib_threads_attribute() -> None:
    server = BlockingServer(("127.0.0.1", 0), BlockingHandler)
    socks: list[socket.socket] = []
    try:
        socks = open_requests(server, 3)
        assert len(server._threads) == 3  # the stdlib's name, as CPython's test reads it
        assert all(thread.is_alive() for thread in server._threads)
        server.release.set()
        for sock in socks:
            assert sock.makefile("rb").readline() == b"done\n"
        # Forgotten as they end: no further request is needed to reap them.
        wait_for(lambda: len(server._threads) == 0, message=lambda: f"still {list(server._threads)}")
    finally:
        server.release.set()
        for sock in socks:
            sock.close()
        server.server_close()


def test_threading_mixin_server_close_joins_running_request_threads() -> None:
    server = BlockingServer(("127.0.0.1", 0), BlockingHandler)
    socks: list[socket.socket] = []
    try:
        socks = open_requests(server, 2)
        server.release.set()
        server.server_close()  # joins both request threads
        assert server.finished == 2
        assert len(server._threads) == 0
    finally:
        server.release.set()
        for sock in socks:
            sock.close()
        server.server_close()


@pytest.mark.parametrize("option", ["daemon_threads", "no_block_on_close"])
def test_threading_mixin_threads_attribute_matches_the_stdlib_options(option: str) -> None:
    class Server(BlockingServer):
        daemon_threads = option == "daemon_threads"
        block_on_close = option != "no_block_on_close"

    server = Server(("127.0.0.1", 0), BlockingHandler)
    socks: list[socket.socket] = []
    try:
        socks = open_requests(server, 2)
        if option == "daemon_threads":
            assert len(server._threads) == 0  # the stdlib keeps no daemon thread either
        else:
            # As the stdlib: the shared, empty class-level _NoThreads stays in place.
            assert "_threads" not in vars(server)
            assert type(server._threads).__name__ == "_NoThreads"
        server.release.set()
        for sock in socks:
            assert sock.makefile("rb").readline() == b"done\n"
        wait_for(lambda: server.finished == 2)
    finally:
        server.release.set()
        for sock in socks:
            sock.close()
        server.server_close()
    for thread in server.handler_threads:  # server_close() did not join them
        thread.join(timeout=10)
        assert not thread.is_alive()


# ---------------------------------------------------------------- CPython's test_socketserver

#: CPython tests that fail against reactor for a documented reason, by name.
CPYTHON_EXPECTED_FAILURES = {
    # It collects the public names whose __module__ is the literal "socketserver" and
    # compares them with __all__. reactor's classes are defined in (and pickle as)
    # "reactor.socketserver", so it collects only the three handler classes, which are
    # the stdlib's own objects. test_public_names_defined_here_are_the_stdlib_all below
    # runs the same check with reactor's module name.
    "test.test_socketserver.MiscTestCase.test_all":
        "the classes' __module__ is 'reactor.socketserver', not 'socketserver'",
}

CPYTHON_RUNNER = """
import importlib.util, json, sys, unittest
try:
    spec = importlib.util.find_spec("test.test_socketserver")
except ImportError as exc:
    spec, missing = None, repr(exc)
else:
    missing = "no module named test.test_socketserver"
if spec is None:
    print(json.dumps({"missing": missing}))
    sys.exit(0)
import reactor.socketserver
sys.modules["socketserver"] = reactor.socketserver
import test.test_socketserver as cpython_test
assert cpython_test.socketserver is reactor.socketserver
suite = unittest.defaultTestLoader.loadTestsFromModule(cpython_test)
result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
print(json.dumps({
    "run": result.testsRun,
    "failed": sorted(test.id() for test, _ in result.failures + result.errors),
    "skipped": sorted(f"{test.id()}: {reason}" for test, reason in result.skipped),
    "unexpected_successes": sorted(test.id() for test in result.unexpectedSuccesses),
    "classes": sorted({c.__module__ for c in vars(cpython_test.socketserver).values() if isinstance(c, type)}),
}))
"""


@pytest.mark.timeout(300)
def test_cpython_test_socketserver_passes_against_reactor(tmp_path: Any) -> None:
    # Its Unix socket paths are relative ("./test_python_*.sock"): run it in tmp_path.
    proc = run_python(CPYTHON_RUNNER, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if "missing" in summary:
        pytest.fail(f"CPython's test.test_socketserver is not installed for {sys.executable} "
                    f"({summary['missing']}); install the python3 test package (Debian: "
                    f"libpython3.X-testsuite) so this fidelity check can run")
    report = textwrap.indent(proc.stderr[-8000:], "  ")
    assert "reactor.socketserver" in summary["classes"]
    assert summary["run"] >= 20, report
    assert not summary["skipped"], f"CPython tests skipped: {summary['skipped']}\n{report}"
    assert summary["failed"] == sorted(CPYTHON_EXPECTED_FAILURES), report
    assert not summary["unexpected_successes"]


def test_public_names_defined_here_are_the_stdlib_all() -> None:
    # CPython's MiscTestCase.test_all, with reactor's module name beside the stdlib's
    # (the request handler classes are the stdlib's own objects).
    defined = [name for name in dir(rx_socketserver) if not name.startswith("_")
               and getattr(getattr(rx_socketserver, name), "__module__", None)
               in ("socketserver", "reactor.socketserver")]
    assert sorted(defined) == sorted(rx_socketserver.__all__)


# ---------------------------------------------------------------- request_queue_size

UNIX_DIAG_REQUEST = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
UDIAG_SHOW_RQLEN, UNIX_DIAG_RQLEN = 0x10, 4
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLMSG_ERROR = 4, 20, 1, 2


def unix_listen_backlog(sock: socket.socket) -> int:
    """The backlog the kernel holds for a listening Unix stream socket (Linux unix_diag)."""
    inode = os.fstat(sock.fileno()).st_ino
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (AttributeError, OSError) as exc:
        pytest.skip(f"sock_diag netlink unavailable: {exc}")
    with diag:
        diag.settimeout(5)
        request = UNIX_DIAG_REQUEST.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, inode, UDIAG_SHOW_RQLEN,
                                         0xFFFFFFFF, 0xFFFFFFFF)  # no cookie check
        header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
        diag.sendto(header + request, (0, 0))
        data = diag.recv(1 << 16)
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR:
        pytest.skip("unix_diag request refused")
    offset = 16 + 16  # nlmsghdr, unix_diag_msg; then the attributes
    while offset + 4 <= length:
        attr_length, attr_type = struct.unpack_from("=HH", data, offset)
        if attr_type == UNIX_DIAG_RQLEN:
            _queued, backlog = struct.unpack_from("=II", data, offset + 4)
            return int(backlog)
        offset += (attr_length + 3) & ~3
    raise AssertionError("unix_diag gave no UNIX_DIAG_RQLEN for the listening socket")


def effective_somaxconn() -> int:
    """listen(socket.SOMAXCONN) as the kernel applies it (capped by net.core.somaxconn)."""
    with open("/proc/sys/net/core/somaxconn") as fh:
        return min(socket.SOMAXCONN, int(fh.read()))


def make_stream_server(kind: str, unix_dir: str, server_class: Any = None, **kwargs: Any) -> Any:
    if kind == "tcp":
        return (server_class or rx_socketserver.TCPServer)(("127.0.0.1", 0), EchoStreamHandler, **kwargs)
    return (server_class or rx_socketserver.UnixStreamServer)(
        os.path.join(unix_dir, "s.sock"), EchoStreamHandler, **kwargs)


def listen_backlog(kind: str, server: Any) -> int:
    return kernel_listen_backlog(server.socket) if kind == "tcp" else unix_listen_backlog(server.socket)


STREAM_KINDS = ["tcp", "unix"]
STREAM_BASES = {"tcp": "TCPServer", "unix": "UnixStreamServer"}


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_default_request_queue_size_is_somaxconn_in_the_kernel(kind: str, unix_dir: str) -> None:
    server = make_stream_server(kind, unix_dir)
    try:
        assert listen_backlog(kind, server) == effective_somaxconn()
    finally:
        server.server_close()
    assert server.request_queue_size == socket.SOMAXCONN


@pytest.mark.parametrize("threading_variant", [False, True], ids=["plain", "threading"])
@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_subclass_request_queue_size_is_honoured(kind: str, threading_variant: bool, unix_dir: str) -> None:
    base = getattr(rx_socketserver, ("Threading" if threading_variant else "") + STREAM_BASES[kind])

    class Server(base):
        request_queue_size = 17

    server = make_stream_server(kind, unix_dir, Server)
    try:
        assert listen_backlog(kind, server) == 17
    finally:
        server.server_close()


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_instance_request_queue_size_is_honoured(kind: str, unix_dir: str) -> None:
    server = make_stream_server(kind, unix_dir, bind_and_activate=False)
    try:
        server.request_queue_size = 23
        server.server_bind()
        server.server_activate()
        assert listen_backlog(kind, server) == 23
    finally:
        server.server_close()
