"""reactor.socketserver is a drop-in for the stdlib socketserver.

Where both modules must behave alike, the same scenario runs against each
(the ``ss`` fixture) or against both in one test and the results are compared.
Documented differences (module docstring of reactor/socketserver.py) are tested
against reactor only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import socketserver as std_socketserver
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import reactor
from reactor import socketserver as rx_socketserver
from reactor.accept import DEFAULT_INLINE_IO_TIMEOUT
from support import ipv6_available, run_python, wait_for

MODULES = [std_socketserver, rx_socketserver]
MODULE_IDS = ["stdlib", "reactor"]

SERVER_NAMES = [name for name in std_socketserver.__all__ if name.endswith("Server")]
HANDLER_NAMES = [name for name in std_socketserver.__all__ if name.endswith("RequestHandler")]
MIXIN_NAMES = [name for name in std_socketserver.__all__ if name.endswith("MixIn")]

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here")


@pytest.fixture(params=MODULES, ids=MODULE_IDS)
def ss(request: pytest.FixtureRequest) -> Any:
    """The stdlib socketserver or reactor's drop-in."""
    return request.param


# ---------------------------------------------------------------- helpers

def family_of(address: Any) -> int:
    if isinstance(address, (str, bytes)):
        return socket.AF_UNIX
    return socket.AF_INET6 if ":" in address[0] else socket.AF_INET


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def stream_request(address: Any, payload: bytes) -> bytes:
    with socket.socket(family_of(address), socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(payload)
        return recv_until_eof(client)


def datagram_request(address: Any, payload: bytes, *, expect_reply: bool = True) -> bytes | None:
    with socket.socket(family_of(address), socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(payload, address)
        if not expect_reply:
            return None
        return client.recv(65536)


@contextlib.contextmanager
def serving(server: Any, poll_interval: float = 0.05) -> Iterator[threading.Thread]:
    """Run ``server.serve_forever()`` in a thread; shut it down afterwards."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval},
                              name="serve_forever", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive(), "serve_forever() did not return after shutdown()"


@contextlib.contextmanager
def hosted(server: Any, how: str, requests: int = 1) -> Iterator[None]:
    """Serve ``server`` by ``serve_forever()``, by a Reactor, or by ``handle_request()`` calls."""
    if how == "serve_forever":
        with serving(server):
            yield
        return
    if how == "handle_request":
        thread = threading.Thread(target=lambda: [server.handle_request() for _ in range(requests)],
                                  name="handle_request", daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join(5)
            assert not thread.is_alive(), "handle_request() never returned"
        return
    assert how == "reactor"
    loop = reactor.Reactor()
    loop.add_server(server)
    thread = threading.Thread(target=loop.serve_forever, name="reactor", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.stop()
        thread.join(5)
        loop.remove_server(server)
        loop.close()
        assert not thread.is_alive()


class EchoStreamHandler(std_socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"echo:" + self.rfile.readline())


class EchoDatagramHandler(std_socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"echo:" + self.rfile.read())


# ---------------------------------------------------------------- names and classes

def test_all_equals_stdlib_all() -> None:
    assert rx_socketserver.__all__ == std_socketserver.__all__


@pytest.mark.parametrize("name", std_socketserver.__all__)
def test_every_stdlib_name_exists(name: str) -> None:
    assert hasattr(rx_socketserver, name)


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_server_class_subclasses_the_stdlib_class(name: str) -> None:
    assert issubclass(getattr(rx_socketserver, name), getattr(std_socketserver, name))


@pytest.mark.parametrize("name", SERVER_NAMES)
def test_server_instance_is_an_instance_of_the_stdlib_class(name: str, unix_dir: str) -> None:
    address: Any = os.path.join(unix_dir, "s") if "Unix" in name else ("127.0.0.1", 0)
    server = getattr(rx_socketserver, name)(address, std_socketserver.BaseRequestHandler)
    try:
        assert isinstance(server, getattr(std_socketserver, name))
        assert isinstance(server, std_socketserver.BaseServer)
    finally:
        server.server_close()


@pytest.mark.parametrize("name", HANDLER_NAMES)
def test_handler_classes_are_the_stdlib_objects(name: str) -> None:
    assert getattr(rx_socketserver, name) is getattr(std_socketserver, name)


@pytest.mark.parametrize("name", MIXIN_NAMES)
def test_mixin_classes_subclass_the_stdlib_mixins(name: str) -> None:
    assert issubclass(getattr(rx_socketserver, name), getattr(std_socketserver, name))


@pytest.mark.parametrize("attribute", [
    "address_family", "socket_type", "request_queue_size", "allow_reuse_address", "allow_reuse_port", "timeout",
])
@pytest.mark.parametrize("name", [name for name in SERVER_NAMES if name != "BaseServer"])
def test_class_attribute_defaults_match_stdlib(name: str, attribute: str) -> None:
    std_class = getattr(std_socketserver, name)
    if not hasattr(std_class, attribute):
        pytest.skip(f"{name}.{attribute} does not exist on Python {sys.version_info[:2]}")
    expected = getattr(std_class, attribute)
    if attribute == "request_queue_size":
        expected = socket.SOMAXCONN  # a documented difference (the stdlib's is 5)
    assert getattr(getattr(rx_socketserver, name), attribute) == expected


def test_private_names_resolve_to_the_stdlib_objects() -> None:
    assert rx_socketserver._SocketWriter is std_socketserver._SocketWriter
    assert rx_socketserver._ServerSelector is std_socketserver._ServerSelector


def test_private_names_can_be_imported_with_from_import() -> None:
    from reactor.socketserver import _SocketWriter

    assert _SocketWriter is std_socketserver._SocketWriter


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError):
        rx_socketserver.NoSuchServer  # noqa: B018


# ---------------------------------------------------------------- user-defined mixin classes

def test_user_defined_threading_tcp_class_serves_concurrently(ss: Any) -> None:
    clients = 3
    barrier = threading.Barrier(clients, timeout=5)

    class Handler(ss.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            barrier.wait()  # only passes if all handlers run at the same time
            self.wfile.write(b"echo:" + line)

    class Server(ss.ThreadingMixIn, ss.TCPServer):
        pass

    server = Server(("127.0.0.1", 0), Handler)
    try:
        with serving(server):
            socks = [socket.create_connection(server.server_address, timeout=5) for _ in range(clients)]
            try:
                for i, sock in enumerate(socks):
                    sock.sendall(b"c%d\n" % i)
                replies = [recv_until_eof(sock) for sock in socks]
            finally:
                for sock in socks:
                    sock.close()
    finally:
        server.server_close()
    assert replies == [b"echo:c%d\n" % i for i in range(clients)]


def test_user_defined_threading_udp_class_serves_concurrently(ss: Any) -> None:
    clients = 3
    barrier = threading.Barrier(clients, timeout=5)

    class Handler(ss.DatagramRequestHandler):
        def handle(self) -> None:
            data = self.rfile.read()
            barrier.wait()
            self.wfile.write(b"echo:" + data)

    class Server(ss.ThreadingMixIn, ss.UDPServer):
        pass

    server = Server(("127.0.0.1", 0), Handler)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(clients)]
    try:
        with serving(server):
            for i, sock in enumerate(socks):
                sock.settimeout(5)
                sock.sendto(b"d%d" % i, server.server_address)
            replies = [sock.recv(1024) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
        server.server_close()
    assert replies == [b"echo:d%d" % i for i in range(clients)]


FORKING_USER_CLASS = """
import os, socket, sys, threading, warnings
import importlib
warnings.filterwarnings("ignore", category=DeprecationWarning)  # fork() with threads, 3.12+
ss = importlib.import_module(sys.argv[1])

class Handler(ss.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"%d:" % os.getpid() + self.rfile.readline())

class Server(ss.ForkingMixIn, ss.TCPServer):
    pass

server = Server(("127.0.0.1", 0), Handler)
thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
thread.start()
replies = []
try:
    for i in range(3):
        with socket.create_connection(server.server_address, timeout=5) as client:
            client.sendall(b"r%d\\n" % i)
            data = b""
            while chunk := client.recv(1024):
                data += chunk
            replies.append(data)
finally:
    server.shutdown()
    thread.join(5)
    server.server_close()
for i, reply in enumerate(replies):
    pid, _, line = reply.partition(b":")
    assert line == b"r%d\\n" % i, reply
    assert int(pid) != os.getpid(), "request was not handled in a forked child"
import support
assert not support.child_pids(), support.child_pids()
print("OK", len(replies))
"""


@pytest.mark.parametrize("module_name", ["socketserver", "reactor.socketserver"])
def test_user_defined_forking_tcp_class_serves_in_children(module_name: str) -> None:
    result = run_python(FORKING_USER_CLASS, module_name, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK 3"


# ---------------------------------------------------------------- hook order

class HookLog:
    """A thread-safe record of hook calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: list[str] = []

    def add(self, name: str) -> None:
        with self._lock:
            self._names.append(name)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._names)

    def normalised(self) -> list[str]:
        """The log with runs of service_actions (called every poll_interval) collapsed to one."""
        result: list[str] = []
        for name in self.names():
            if name == "service_actions" and result and result[-1] == name:
                continue
            result.append(name)
        return result

    def wait_idle(self, requests: int) -> None:
        """Wait until ``requests`` requests were closed and service_actions ran after the last."""
        def idle() -> bool:
            names = self.names()
            return names.count("close_request") == requests and names[-1] == "service_actions"
        wait_for(idle, message=lambda: f"server never went idle after {requests} requests: {self.names()}")


def logging_server_class(base: type) -> type:
    class LoggingServer(base):  # type: ignore[misc, valid-type]
        reject_first = 0

        def __init__(self, *args: Any, log: HookLog, **kwargs: Any) -> None:
            self.log = log
            super().__init__(*args, **kwargs)

        def server_bind(self) -> None:
            self.log.add("server_bind")
            super().server_bind()

        def server_activate(self) -> None:
            self.log.add("server_activate")
            super().server_activate()

        def get_request(self) -> Any:
            # Logged on success only: reactor takes requests in a batch until
            # EAGAIN, so it makes one extra, failing call per batch.
            result = super().get_request()
            self.log.add("get_request")
            return result

        def verify_request(self, request: Any, client_address: Any) -> bool:
            self.log.add("verify_request")
            if self.reject_first:
                self.reject_first -= 1
                return False
            return bool(super().verify_request(request, client_address))

        def process_request(self, request: Any, client_address: Any) -> None:
            self.log.add("process_request")
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            self.log.add("finish_request")
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            self.log.add("shutdown_request")
            super().shutdown_request(request)

        def close_request(self, request: Any) -> None:
            self.log.add("close_request")
            super().close_request(request)

        def handle_error(self, request: Any, client_address: Any) -> None:
            self.log.add("handle_error")
            super().handle_error(request, client_address)

        def handle_timeout(self) -> None:
            self.log.add("handle_timeout")
            super().handle_timeout()

        def service_actions(self) -> None:
            self.log.add("service_actions")
            super().service_actions()

        def server_close(self) -> None:
            self.log.add("server_close")
            super().server_close()

    return LoggingServer


def logging_handler_class(base: type, stream: bool) -> type:
    class LoggingHandler(base):  # type: ignore[misc, valid-type]
        def __init__(self, request: Any, client_address: Any, server: Any) -> None:
            server.log.add("handler.__init__")
            super().__init__(request, client_address, server)

        def setup(self) -> None:
            self.server.log.add("setup")
            super().setup()

        def handle(self) -> None:
            self.server.log.add("handle")
            data = self.rfile.readline() if stream else self.rfile.read()
            if data.startswith(b"boom"):
                raise ValueError("boom from the handler")
            self.wfile.write(b"echo:" + data)

        def finish(self) -> None:
            self.server.log.add("finish")
            super().finish()

    return LoggingHandler


class Transport:
    """How a hook scenario talks to its server: TCP or UDP."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stream = name == "tcp"

    def classes(self, module: Any) -> tuple[type, type]:
        server_base = module.TCPServer if self.stream else module.UDPServer
        handler_base = module.StreamRequestHandler if self.stream else module.DatagramRequestHandler
        return logging_server_class(server_base), logging_handler_class(handler_base, self.stream)

    def send(self, address: Any, payload: bytes) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if self.stream else socket.SOCK_DGRAM)
        sock.settimeout(5)
        try:
            if self.stream:
                sock.connect(address)
                sock.sendall(payload)
            else:
                sock.sendto(payload, address)
        except BaseException:
            sock.close()
            raise
        return sock

    def reply(self, sock: socket.socket) -> bytes:
        with sock:
            return recv_until_eof(sock) if self.stream else sock.recv(65536)

    def request(self, address: Any, payload: bytes) -> bytes:
        return self.reply(self.send(address, payload))


def hook_log(module: Any, transport: Transport, drive: Callable[[Any, HookLog, Transport], None],
             **attributes: Any) -> list[str]:
    log = HookLog()
    server_class, handler_class = transport.classes(module)
    for name, value in attributes.items():
        setattr(server_class, name, value)
    server = server_class(("127.0.0.1", 0), handler_class, log=log)
    try:
        drive(server, log, transport)
    finally:
        server.server_close()
    return log.normalised()


def both_hook_logs(transport_name: str, drive: Callable[[Any, HookLog, Transport], None],
                   **attributes: Any) -> tuple[list[str], list[str]]:
    transport = Transport(transport_name)
    return (hook_log(std_socketserver, transport, drive, **attributes),
            hook_log(rx_socketserver, transport, drive, **attributes))


HANDLED = [
    "get_request", "verify_request", "process_request", "finish_request",
    "handler.__init__", "setup", "handle", "finish", "shutdown_request", "close_request",
]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_hook_order_serve_forever_matches_stdlib(transport: str) -> None:
    def drive(server: Any, log: HookLog, t: Transport) -> None:
        with serving(server):
            log.wait_idle(requests=0)
            assert t.request(server.server_address, b"one\n") == b"echo:one\n"
            log.wait_idle(requests=1)
            assert t.request(server.server_address, b"two\n") == b"echo:two\n"
            log.wait_idle(requests=2)

    stdlib, ours = both_hook_logs(transport, drive)
    assert ours == stdlib
    assert stdlib == ["server_bind", "server_activate", "service_actions",
                      *HANDLED, "service_actions", *HANDLED, "service_actions", "server_close"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_hook_order_handle_request_matches_stdlib(transport: str) -> None:
    def drive(server: Any, log: HookLog, t: Transport) -> None:
        client = t.send(server.server_address, b"one\n")
        server.handle_request()
        assert t.reply(client) == b"echo:one\n"

    stdlib, ours = both_hook_logs(transport, drive)
    assert ours == stdlib
    assert stdlib == ["server_bind", "server_activate", *HANDLED, "server_close"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_hook_order_rejected_request_matches_stdlib(transport: str) -> None:
    def drive(server: Any, log: HookLog, t: Transport) -> None:
        with serving(server):
            log.wait_idle(requests=0)
            client = t.send(server.server_address, b"rejected\n")
            with client:
                log.wait_idle(requests=1)
                if t.stream:
                    assert recv_until_eof(client) == b""
            assert t.request(server.server_address, b"two\n") == b"echo:two\n"
            log.wait_idle(requests=2)

    stdlib, ours = both_hook_logs(transport, drive, reject_first=1)
    assert ours == stdlib
    assert stdlib == ["server_bind", "server_activate", "service_actions",
                      "get_request", "verify_request", "shutdown_request", "close_request", "service_actions",
                      *HANDLED, "service_actions", "server_close"]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_hook_order_failing_handler_matches_stdlib(transport: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tracebacks = []

    def drive(server: Any, log: HookLog, t: Transport) -> None:
        with serving(server):
            log.wait_idle(requests=0)
            # UDP: DatagramRequestHandler.finish() still sends the (empty) reply.
            assert t.request(server.server_address, b"boom\n") == b""
            log.wait_idle(requests=1)
            assert t.request(server.server_address, b"two\n") == b"echo:two\n"
            log.wait_idle(requests=2)
        tracebacks.append(capsys.readouterr().err)

    stdlib, ours = both_hook_logs(transport, drive)
    assert ours == stdlib
    failed = [*HANDLED[:-2], "handle_error", "shutdown_request", "close_request"]
    assert stdlib == ["server_bind", "server_activate", "service_actions",
                      *failed, "service_actions", *HANDLED, "service_actions", "server_close"]
    for err in tracebacks:  # stdlib's handle_error prints the traceback to stderr; so does ours
        assert "Exception occurred during processing of request from" in err
        assert "ValueError: boom from the handler" in err


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_hook_order_without_poll_interval_matches_stdlib(transport: str) -> None:
    # poll_interval=None: no periodic service_actions, only the one after each request.
    def drive(server: Any, log: HookLog, t: Transport) -> None:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None}, daemon=True)
        thread.start()
        try:
            assert t.request(server.server_address, b"one\n") == b"echo:one\n"
            log.wait_idle(requests=1)
            assert t.request(server.server_address, b"two\n") == b"echo:two\n"
            log.wait_idle(requests=2)
        finally:
            stopper = threading.Thread(target=server.shutdown, daemon=True)
            stopper.start()
            # The stdlib's select() has no timeout now: once its shutdown flag is
            # set, wake it with a request it will not take (ours never blocks).
            wait_for(lambda: not stopper.is_alive() or getattr(server, "_BaseServer__shutdown_request", False))
            t.send(server.server_address, b"never handled\n").close()
            stopper.join(5)
            thread.join(5)
            assert not thread.is_alive()

    stdlib, ours = both_hook_logs(transport, drive)
    assert ours == stdlib
    assert stdlib == ["server_bind", "server_activate",
                      *HANDLED, "service_actions", *HANDLED, "service_actions", "server_close"]


def test_hook_order_handle_request_timeout_matches_stdlib() -> None:
    def drive(server: Any, log: HookLog, t: Transport) -> None:
        server.handle_request()

    stdlib, ours = both_hook_logs("tcp", drive, timeout=0.05)
    assert ours == stdlib
    assert stdlib == ["server_bind", "server_activate", "handle_timeout", "server_close"]


def test_hook_order_serve_forever_never_calls_handle_timeout() -> None:
    def drive(server: Any, log: HookLog, t: Transport) -> None:
        with serving(server, poll_interval=0.02):
            # Several poll intervals and far more than `timeout` without a request.
            wait_for(lambda: log.names().count("service_actions") >= 10)
            assert t.request(server.server_address, b"one\n") == b"echo:one\n"
            log.wait_idle(requests=1)

    stdlib, ours = both_hook_logs("tcp", drive, timeout=0.01)
    assert ours == stdlib
    assert "handle_timeout" not in stdlib


# ---------------------------------------------------------------- class attributes

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCP_LISTEN = 10


def kernel_listen_backlog(sock: socket.socket) -> int:
    """The backlog the kernel holds for a listening TCP socket (Linux sock_diag: idiag_wqueue)."""
    inode = os.fstat(sock.fileno()).st_ino
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except (AttributeError, OSError) as exc:
        pytest.skip(f"sock_diag netlink unavailable: {exc}")
    with diag:
        diag.settimeout(5)
        request = (struct.pack("=BBBBI", sock.family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN)
                   + bytes(48))  # inet_diag_sockid: no filter, we match the inode below
        header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        diag.sendto(header + request, (0, 0))
        while True:
            data = diag.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE:
                    raise AssertionError("the kernel does not list the listening socket")
                if kind == NLMSG_ERROR:
                    pytest.skip("sock_diag request refused")
                if kind == SOCK_DIAG_BY_FAMILY:
                    # inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid, inode
                    wqueue, _uid, msg_inode = struct.unpack_from("=III", data, offset + 16 + 60)
                    if msg_inode == inode:
                        return int(wqueue)
                offset += (length + 3) & ~3


@pytest.mark.parametrize("queue_size", [None, 17], ids=["default", "17"])
def test_request_queue_size_is_the_listen_backlog(ss: Any, queue_size: int | None) -> None:
    class Server(ss.TCPServer):
        pass

    if queue_size is not None:
        Server.request_queue_size = queue_size
    server = Server(("127.0.0.1", 0), EchoStreamHandler)
    try:
        default = socket.SOMAXCONN if ss is rx_socketserver else 5  # a documented difference
        with open("/proc/sys/net/core/somaxconn") as fh:
            default = min(default, int(fh.read()))  # listen() is capped there
        assert kernel_listen_backlog(server.socket) == (queue_size or default)
    finally:
        server.server_close()


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("base_name", ["TCPServer", "UDPServer"])
def test_allow_reuse_address_sets_so_reuseaddr(ss: Any, base_name: str, reuse: bool) -> None:
    server_class = type("Server", (getattr(ss, base_name),), {"allow_reuse_address": reuse})
    server = server_class(("127.0.0.1", 0), std_socketserver.BaseRequestHandler)
    try:
        assert bool(server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)) is reuse
    finally:
        server.server_close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="allow_reuse_port is new in Python 3.11")
@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("base_name", ["TCPServer", "UDPServer"])
def test_allow_reuse_port_sets_so_reuseport(ss: Any, base_name: str, reuse: bool) -> None:
    server_class = type("Server", (getattr(ss, base_name),), {"allow_reuse_port": reuse})
    server = server_class(("127.0.0.1", 0), std_socketserver.BaseRequestHandler)
    try:
        assert bool(server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)) is reuse
    finally:
        server.server_close()


def test_handle_request_calls_handle_timeout_when_no_request_comes(ss: Any) -> None:
    timeouts = []
    handled = []

    class Handler(ss.StreamRequestHandler):
        def handle(self) -> None:
            handled.append(self.client_address)

    class Server(ss.TCPServer):
        timeout = 0.05

        def handle_timeout(self) -> None:
            timeouts.append(True)

    server = Server(("127.0.0.1", 0), Handler)
    try:
        server.handle_request()
    finally:
        server.server_close()
    assert timeouts == [True]
    assert handled == []


class RecordingDatagramHandler(std_socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        data = self.rfile.read()
        self.server.seen.append(data)
        self.wfile.write(b"got %d" % len(data))


@pytest.mark.parametrize("how", ["serve_forever", "handle_request", "reactor"])
def test_oversized_datagram_is_dropped_not_truncated(how: str, caplog: pytest.LogCaptureFixture) -> None:
    class Server(rx_socketserver.UDPServer):
        max_packet_size = 64
        timeout = 5  # bounds handle_request()

    server = Server(("127.0.0.1", 0), RecordingDatagramHandler)
    server.seen = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"x" * 200, server.server_address)
            client.sendto(b"small", server.server_address)
            with hosted(server, how, requests=2):
                assert client.recv(1024) == b"got 5"
    finally:
        server.server_close()
    assert server.seen == [b"small"]
    assert server.truncated_datagrams == 1
    assert "larger than max_packet_size=64" in caplog.text


@pytest.mark.parametrize("family", ["udp4", "udp6"])
def test_default_buffer_delivers_the_largest_datagram_intact(family: str) -> None:
    if family == "udp6" and not ipv6_available():
        pytest.skip("no IPv6 loopback here")
    host, size = ("127.0.0.1", 65507) if family == "udp4" else ("::1", 65527)

    class Handler(std_socketserver.DatagramRequestHandler):
        def handle(self) -> None:
            data = self.rfile.read()
            self.wfile.write(b"%d:" % len(data) + hashlib.sha256(data).hexdigest().encode())

    payload = os.urandom(size)
    server = rx_socketserver.UDPServer((host, 0), Handler)
    try:
        with serving(server):
            reply = datagram_request(server.server_address, payload)
    finally:
        server.server_close()
    assert reply == b"%d:" % size + hashlib.sha256(payload).hexdigest().encode()
    assert server.truncated_datagrams == 0


# ---------------------------------------------------------------- construction and lifecycle

def test_bind_and_activate_false_then_manual_bind_and_activate(ss: Any) -> None:
    server = ss.TCPServer(("127.0.0.1", 0), EchoStreamHandler, bind_and_activate=False)
    try:
        assert server.socket.getsockname()[1] == 0  # not bound yet
        server.allow_reuse_address = True  # still honoured: set before server_bind()
        server.server_bind()
        server.server_activate()
        assert server.server_address[1] != 0
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with hosted(server, "handle_request"):
            assert stream_request(server.server_address, b"hi\n") == b"echo:hi\n"
    finally:
        server.server_close()


def test_server_as_context_manager_with_serve_forever_thread(ss: Any) -> None:
    with ss.TCPServer(("127.0.0.1", 0), EchoStreamHandler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            assert stream_request(server.server_address, b"hi\n") == b"echo:hi\n"
        finally:
            server.shutdown()
            thread.join(5)
        assert not thread.is_alive()
    assert server.socket.fileno() == -1


class CountingInline(reactor.Inline):
    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, hosted: Any, request: Any, client_address: Any) -> None:
        self.submitted += 1
        super().submit(hosted, request, client_address)


@pytest.mark.parametrize("kind", ["tcp", "udp", "unix"])
def test_dispatch_keyword_is_used_by_serve_forever(kind: str, unix_dir: str) -> None:
    dispatch = CountingInline()
    if kind == "tcp":
        server = rx_socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler, dispatch=dispatch)
    elif kind == "udp":
        server = rx_socketserver.UDPServer(("127.0.0.1", 0), EchoDatagramHandler, dispatch=dispatch)
    else:
        server = rx_socketserver.UnixStreamServer(os.path.join(unix_dir, "s"), EchoStreamHandler,
                                                  dispatch=dispatch)
    try:
        assert server.dispatch is dispatch
        with serving(server):
            if kind == "udp":
                assert datagram_request(server.server_address, b"hi") == b"echo:hi"
            else:
                assert stream_request(server.server_address, b"hi\n") == b"echo:hi\n"
    finally:
        server.server_close()
    assert dispatch.submitted == 1


def test_dispatch_keyword_accepts_plain_inline() -> None:
    server = rx_socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler, dispatch=reactor.Inline())
    try:
        with serving(server):
            assert stream_request(server.server_address, b"hi\n") == b"echo:hi\n"
    finally:
        server.server_close()


@needs_ipv6
@pytest.mark.parametrize("base_name", ["TCPServer", "UDPServer"])
def test_ipv6_address_without_subclassing(base_name: str) -> None:
    server_class = getattr(rx_socketserver, base_name)
    handler = EchoStreamHandler if base_name == "TCPServer" else EchoDatagramHandler
    server = server_class(("::1", 0), handler)
    try:
        assert server.address_family == socket.AF_INET6
        assert server.socket.family == socket.AF_INET6
        assert server.server_address[0] == "::1"
        assert server_class.address_family == socket.AF_INET  # the class is not modified
        with serving(server):
            if base_name == "TCPServer":
                assert stream_request(server.server_address[:2], b"v6\n") == b"echo:v6\n"
            else:
                assert datagram_request(server.server_address[:2], b"v6") == b"echo:v6"
    finally:
        server.server_close()


# ---------------------------------------------------------------- misbehaving clients

def vanish_half_line(address: Any) -> None:
    with socket.create_connection(address, timeout=5) as client:
        client.sendall(b"half a li")


def vanish_with_reset_after_half_line(address: Any) -> None:
    with socket.create_connection(address, timeout=5) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sendall(b"half a li")


def vanish_with_reset_before_sending(address: Any) -> None:
    with socket.create_connection(address, timeout=5) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.parametrize("vanish", [vanish_half_line, vanish_with_reset_after_half_line,
                                    vanish_with_reset_before_sending],
                         ids=["half-line-then-close", "half-line-then-rst", "rst-before-sending"])
def test_client_vanishing_mid_request_does_not_break_the_server(ss: Any, vanish: Callable[[Any], None]) -> None:
    closed = []

    class Server(ss.TCPServer):
        def close_request(self, request: Any) -> None:
            closed.append(True)
            super().close_request(request)

    server = Server(("127.0.0.1", 0), EchoStreamHandler)
    try:
        with serving(server):
            vanish(server.server_address)
            wait_for(lambda: len(closed) == 1, message="the vanished client's request was never closed")
            assert stream_request(server.server_address, b"next\n") == b"echo:next\n"
    finally:
        server.server_close()


# ---------------------------------------------------------------- StreamRequestHandler options

class ObservingHandler(std_socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.server.observed.append({
            "timeout": self.connection.gettimeout(),
            "blocking": os.get_blocking(self.connection.fileno()),
            "rfile": type(self.rfile).__name__,
            "wfile": type(self.wfile).__name__,
            "nodelay": bool(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
        })
        self.wfile.write(b"echo:" + line)


class TunedHandler(ObservingHandler):
    timeout = 2.5
    rbufsize = 0
    wbufsize = 4096
    disable_nagle_algorithm = True


HANDLER_OPTIONS = {
    "defaults": (ObservingHandler, {"timeout": None, "blocking": True, "rfile": "BufferedReader",
                                    "wfile": "_SocketWriter", "nodelay": False}),
    "tuned": (TunedHandler, {"timeout": 2.5, "blocking": False, "rfile": "SocketIO",
                             "wfile": "BufferedWriter", "nodelay": True}),
}


@pytest.mark.parametrize("how", ["serve_forever", "handle_request", "reactor"])
@pytest.mark.parametrize("options", list(HANDLER_OPTIONS))
def test_stream_request_handler_options_are_honoured(ss: Any, options: str, how: str) -> None:
    handler, expected = HANDLER_OPTIONS[options]
    server = ss.TCPServer(("127.0.0.1", 0), handler)
    server.observed = []
    try:
        with hosted(server, how):
            assert stream_request(server.server_address, b"hi\n") == b"echo:hi\n"
    finally:
        server.server_close()
    if how == "reactor" and expected["timeout"] is None:
        # Hosted inline on a Reactor (a loop other servers may share), a handler that sets
        # no timeout of its own gets io_timeout's default; serve_forever() keeps the stdlib's.
        expected = dict(expected, timeout=DEFAULT_INLINE_IO_TIMEOUT, blocking=False)
    assert server.observed == [expected]


# ---------------------------------------------------------------- serve_forever guard

def test_serve_forever_twice_concurrently_raises_runtime_error() -> None:
    server = rx_socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler)
    errors: list[BaseException] = []

    def second_serve_forever() -> None:
        try:
            server.serve_forever()
        except BaseException as exc:
            errors.append(exc)

    try:
        with serving(server):
            assert stream_request(server.server_address, b"one\n") == b"echo:one\n"  # it is running
            # A daemon thread: should serve_forever() not raise, it cannot hang the interpreter.
            second = threading.Thread(target=second_serve_forever, daemon=True)
            second.start()
            second.join(5)
            assert not second.is_alive(), "a second serve_forever() ran instead of raising"
            assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
            assert "already running" in str(errors[0])
            assert stream_request(server.server_address, b"two\n") == b"echo:two\n"  # and still is
    finally:
        server.server_close()
