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

import contextlib
import http.server
import json
import logging
import logging.handlers
import os
import pickle
import socket
import struct
import sys
import textwrap
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import reactor
from reactor import socketserver as rx_socketserver
from support import QuietHTTPHandler, ipv6_available, run_python, wait_for
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


# ---------------------------------------------------------------- logging

REACTOR_DIR = str(Path(reactor.__file__).resolve().parent)


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not any(seen is record for seen in self.records):  # attached to "reactor" and to root
            self.records.append(record)


class FromReactor(logging.Filter):
    """Records logged by reactor's code, whatever logger it used."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] == "reactor" or record.pathname.startswith(REACTOR_DIR)


@contextlib.contextmanager
def reactor_log_records() -> Iterator[list[logging.LogRecord]]:
    """Every record reactor emits meanwhile: the "reactor" logger and root at DEBUG (restored after)."""
    handler = RecordingHandler()
    handler.addFilter(FromReactor())
    reactor_logger, root = logging.getLogger("reactor"), logging.getLogger()
    levels = reactor_logger.level, root.level
    reactor_logger.setLevel(logging.DEBUG)
    root.setLevel(logging.DEBUG)
    reactor_logger.addHandler(handler)
    root.addHandler(handler)  # a record from a logger outside "reactor" (or one not propagating)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        reactor_logger.removeHandler(handler)
        reactor_logger.setLevel(levels[0])
        root.setLevel(levels[1])


def describe_records(records: list[logging.LogRecord]) -> str:
    return "; ".join(f"{r.name}:{r.levelname}: {r.getMessage()}" for r in records)


class UpperStreamHandler(rx_socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class UpperDatagramHandler(rx_socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper())


LOGGING_CASES = [
    # (server class name, address kind, dispatch)
    ("TCPServer", "tcp4", None),
    ("TCPServer", "tcp6", None),
    ("TCPServer", "tcp4", "ThreadPool"),
    ("UDPServer", "udp4", None),
    ("UDPServer", "udp6", None),
    ("UnixStreamServer", "unix", None),
    ("UnixDatagramServer", "unix", None),
    ("ThreadingTCPServer", "tcp4", None),
    ("ThreadingTCPServer", "tcp6", None),
    ("ThreadingUDPServer", "udp4", None),
    ("ThreadingUnixStreamServer", "unix", None),
    ("ThreadingUnixDatagramServer", "unix", None),
]


def client_exchange(server: Any, payload: bytes, unix_dir: str, index: int) -> bytes:
    address = server.server_address
    datagram = server.socket_type == socket.SOCK_DGRAM
    with socket.socket(server.address_family, server.socket_type) as sock:
        sock.settimeout(5)
        if datagram and server.address_family == socket.AF_UNIX:
            sock.bind(os.path.join(unix_dir, f"client{index}.sock"))  # somewhere to reply to
        sock.connect(address)
        if datagram:
            sock.send(payload)
            return sock.recv(1024)
        sock.sendall(payload + b"\n")
        return sock.makefile("rb").readline().rstrip(b"\n")


@pytest.mark.parametrize(("name", "kind", "dispatch"), LOGGING_CASES,
                         ids=[f"{n}-{k}" + (f"-{d}" if d else "") for n, k, d in LOGGING_CASES])
def test_compat_servers_log_nothing_in_normal_operation(name: str, kind: str, dispatch: str | None,
                                                        unix_dir: str, serving_thread: list[threading.Thread]) -> None:
    if kind.endswith("6") and not ipv6_available():
        pytest.skip("no IPv6 loopback here")
    address: Any = {"tcp4": ("127.0.0.1", 0), "udp4": ("127.0.0.1", 0), "tcp6": ("::1", 0),
                    "udp6": ("::1", 0), "unix": os.path.join(unix_dir, "server.sock")}[kind]
    server_class = getattr(rx_socketserver, name)
    handler = UpperDatagramHandler if "Datagram" in name or "UDP" in name else UpperStreamHandler
    with reactor_log_records() as records:
        kwargs = {"dispatch": reactor.ThreadPool(2)} if dispatch == "ThreadPool" else {}
        with server_class(address, handler, **kwargs) as server:
            start_serving(server, serving_thread)
            try:
                replies = [client_exchange(server, b"hello %d" % i, unix_dir, i) for i in range(3)]
            finally:
                server.shutdown()
            serving_thread[-1].join(timeout=10)
    assert replies == [b"HELLO %d" % i for i in range(3)]
    assert not records, describe_records(records)


def test_reactor_hosting_a_stdlib_http_server_logs_nothing(serving_thread: list[threading.Thread]) -> None:
    import http.client

    with reactor_log_records() as records:
        with reactor.Reactor() as loop:
            web = http.server.HTTPServer(("127.0.0.1", 0), QuietHTTPHandler)  # the stdlib's
            loop.add_server(web)
            thread = threading.Thread(target=loop.serve_forever, name="reactor")
            thread.start()
            serving_thread.append(thread)
            try:
                for _ in range(3):
                    conn = http.client.HTTPConnection(*web.server_address, timeout=5)
                    try:
                        conn.request("GET", "/")
                        assert conn.getresponse().read() == b"ok\n"
                    finally:
                        conn.close()
            finally:
                loop.stop()
                thread.join(timeout=10)
    assert not records, describe_records(records)


class LogReceivingHTTPHandler(http.server.BaseHTTPRequestHandler):
    """Receives logging.handlers.HTTPHandler's POSTs; keeps each record's name and message."""

    server: Any

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        fields = urllib.parse.parse_qs(body.decode())
        self.server.received.append((fields["name"][0], fields["msg"][0]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class BoundedHTTPHandler(logging.handlers.HTTPHandler):
    """An HTTPHandler whose connection has a timeout, so a deadlock fails the test instead of
    hanging it (the stdlib's has none: there, the deadlock lasts forever). A record that
    timed out is kept in ``errors``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[logging.LogRecord] = []

    def getConnection(self, host: str, secure: bool) -> Any:
        import http.client
        return http.client.HTTPConnection(host, timeout=2)

    def handleError(self, record: logging.LogRecord) -> None:
        self.errors.append(record)


@contextlib.contextmanager
def root_handler(handler: logging.Handler) -> Iterator[None]:
    """``handler`` on the root logger at DEBUG, as a logging config would put it; restored after."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def log_from_a_thread(logger: logging.Logger, count: int) -> None:
    """Log ``count`` records from another thread, bounded by a join timeout."""
    # Formatted here: HTTPHandler posts msg and args apart.
    thread = threading.Thread(target=lambda: [logger.info(f"record {i}") for i in range(count)],
                              name="app-logging", daemon=True)  # daemon: a deadlock must not hang pytest's exit
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "logging through a handler served by reactor deadlocked"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("hosting", ["serve_forever", "Reactor"])
def test_http_log_handler_served_by_reactor_in_the_same_process_does_not_deadlock(hosting: str) -> None:
    class LogServer(rx_socketserver.TCPServer if hosting == "serve_forever" else http.server.HTTPServer):
        received: list[tuple[str, str]]

    server = LogServer(("127.0.0.1", 0), LogReceivingHTTPHandler)
    server.received = []
    host, port = server.server_address[:2]
    handler = BoundedHTTPHandler(f"{host}:{port}", "/log", method="POST")
    loop = reactor.Reactor() if hosting == "Reactor" else None
    app = logging.getLogger("app.fidelity")
    serve_thread: threading.Thread | None = None
    try:
        with root_handler(handler):
            if loop is not None:
                loop.add_server(server)  # from this thread, before anything serves the log server
                serve_thread = threading.Thread(target=loop.serve_forever, name="reactor", daemon=True)
            else:
                serve_thread = threading.Thread(target=server.serve_forever, name="log-server", daemon=True)
            serve_thread.start()
            log_from_a_thread(app, 5)
            if loop is not None:
                loop.stop()
            else:
                server.shutdown()
            serve_thread.join(timeout=15)
            assert not serve_thread.is_alive(), "the log server did not stop"
    finally:
        if loop is not None:
            loop.stop()
            if serve_thread is None or not serve_thread.is_alive():
                loop.close()  # closes the server too
        server.server_close()
    assert not handler.errors, f"{len(handler.errors)} records failed: {describe_records(handler.errors)}"
    assert server.received == [("app.fidelity", f"record {i}") for i in range(5)]


class LogRecordStreamHandler(rx_socketserver.StreamRequestHandler):
    """Receives logging.handlers.SocketHandler's pickles (length-prefixed)."""

    server: Any

    def handle(self) -> None:
        while True:
            header = self.rfile.read(4)
            if len(header) < 4:
                return
            (length,) = struct.unpack(">L", header)
            record = pickle.loads(self.rfile.read(length))
            self.server.received.append((record["name"], record["msg"]))  # msg % args, merged by makePickle


def test_socket_log_handler_served_by_reactor_receives_only_the_applications_records(
        serving_thread: list[threading.Thread]) -> None:
    class LogServer(rx_socketserver.ThreadingTCPServer):
        received: list[tuple[str, str]]

    with LogServer(("127.0.0.1", 0), LogRecordStreamHandler) as server:
        server.received = []
        handler = logging.handlers.SocketHandler(*server.server_address[:2])
        app = logging.getLogger("app.fidelity")
        with root_handler(handler):
            start_serving(server, serving_thread)
            try:
                log_from_a_thread(app, 5)
                handler.close()  # the request thread sees EOF and ends
                wait_for(lambda: len(server.received) >= 5, message=lambda: f"received {server.received}")
            finally:
                server.shutdown()
    assert server.received == [("app.fidelity", f"record {i}") for i in range(5)]
