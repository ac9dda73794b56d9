"""Hosting servers in a Reactor: unmodified stdlib servers and the per-server duties.

Covers the accept path of ``reactor.accept.HostedServer`` as seen from the
outside (round trips, socket mode restored, service_actions, handle_timeout,
dispatch slot, pause reasons, accept batches, stop from a handler, resource
exhaustion), driven either by ``serve_forever()`` in a thread or by
``run_once()`` ticks in the test thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.client
import http.server
import itertools
import logging
import os
import socket
import socketserver
import threading
import time
import xmlrpc.client
import xmlrpc.server
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reactor import Dispatch, Inline, Reactor
from reactor.accept import HostedServer
from reactor._platform import available_selectors
from support import ipv6_available, run_python, wait_for

SELECTORS = available_selectors()
SELECTOR_IDS = [cls.__name__ for cls in SELECTORS]

_names = itertools.count()


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(params=SELECTORS, ids=SELECTOR_IDS)
def selector_reactor(request: pytest.FixtureRequest) -> Iterator[Reactor]:
    """A Reactor over each available selector class; closed afterwards."""
    r = Reactor(selector=request.param())
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def reactor_() -> Iterator[Reactor]:
    """A Reactor over the default selector; closed afterwards."""
    r = Reactor()
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def serving(r: Reactor) -> Iterator[threading.Thread]:
    """Run ``r.serve_forever()`` in a thread for the duration of the block."""
    # A daemon thread, so a reactor that never returns fails the test instead
    # of hanging the interpreter at exit.
    thread = threading.Thread(target=r.serve_forever, name="reactor-under-test", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        r.stop()
        thread.join(10)
    assert not thread.is_alive(), "serve_forever() did not return after stop()"


def hosted_of(r: Reactor, server: Any) -> HostedServer:
    attachment = r.attachment_of(server)
    assert isinstance(attachment, HostedServer)
    return attachment


def tick_until(r: Reactor, predicate: Callable[[], object], ticks: int = 50, timeout: float = 0.2) -> None:
    """Run reactor ticks in this thread until ``predicate()`` holds (bounded)."""
    for _ in range(ticks):
        if predicate():
            return
        r.run_once(timeout)
    assert predicate(), f"condition not met after {ticks} ticks"


def idle_ticks(r: Reactor, seconds: float, timeout: float = 0.05) -> None:
    """Run reactor ticks in this thread for at least ``seconds`` of wall time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r.run_once(timeout)


def recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def stream_client(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class EchoStreamHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class EchoDatagramHandler(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class TCP6Server(socketserver.TCPServer):
    address_family = socket.AF_INET6


class UDP6Server(socketserver.UDPServer):
    address_family = socket.AF_INET6


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[str], socketserver.BaseServer]
    needs_ipv6: bool = False

    def server(self, unix_dir: str) -> Any:
        if self.needs_ipv6 and not ipv6_available():
            pytest.skip("IPv6 loopback not available")
        return self.make(unix_dir)


def _unix_path(unix_dir: str, prefix: str = "s") -> str:
    return os.path.join(unix_dir, f"{prefix}{next(_names)}.sock")


FAMILIES = [
    Family("tcp4", lambda d: socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler)),
    Family("tcp6", lambda d: TCP6Server(("::1", 0), EchoStreamHandler), needs_ipv6=True),
    Family("udp4", lambda d: socketserver.UDPServer(("127.0.0.1", 0), EchoDatagramHandler)),
    Family("udp6", lambda d: UDP6Server(("::1", 0), EchoDatagramHandler), needs_ipv6=True),
    Family("unix_stream", lambda d: socketserver.UnixStreamServer(_unix_path(d), EchoStreamHandler)),
    Family("unix_dgram", lambda d: socketserver.UnixDatagramServer(_unix_path(d), EchoDatagramHandler)),
]
FAMILY_IDS = [family.name for family in FAMILIES]


def round_trip(server: Any, payload: bytes, unix_dir: str) -> bytes:
    """Send ``payload`` to an echo server of any family and return the answer."""
    sock_family = server.address_family
    if server.socket_type == socket.SOCK_STREAM:
        with stream_client(sock_family, server.server_address) as sock:
            sock.sendall(payload + b"\n")
            return recv_line(sock).rstrip(b"\n")
    with socket.socket(sock_family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        if sock_family == socket.AF_UNIX:
            sock.bind(_unix_path(unix_dir, "c"))  # the server answers to this path
        sock.sendto(payload, server.server_address)
        return sock.recv(65535)


class QuietHTTPHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET with 200 and ``hello <path>``; records the serving thread."""

    threads: list[int] = []

    def do_GET(self) -> None:
        type(self).threads.append(threading.get_ident())
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TimeoutTransport(xmlrpc.client.Transport):
    """ServerProxy has no timeout parameter: set one on each connection it makes."""

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = 5
        return connection


class CountingHandler(socketserver.BaseRequestHandler):
    """Counts requests in ``server.handled`` without reading anything."""

    def handle(self) -> None:
        self.server.handled += 1  # type: ignore[attr-defined]


class CountingUnixServer(socketserver.UnixStreamServer):
    """A stdlib Unix stream server whose backlog holds every queued test client.

    Unix stream ``connect()`` returns once the connection sits in the
    listener's queue, so tests can queue exact numbers of requests.
    """

    request_queue_size = 64

    def __init__(self, path: str) -> None:
        self.handled = 0
        super().__init__(path, CountingHandler)


def queue_unix_clients(stack: contextlib.ExitStack, server: Any, count: int) -> list[socket.socket]:
    return [stack.enter_context(stream_client(socket.AF_UNIX, server.server_address)) for _ in range(count)]


# ---------------------------------------------------------------- unmodified stdlib servers

@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_unmodified_stdlib_server_answers_round_trips(
        family: Family, selector_reactor: Reactor, unix_dir: str) -> None:
    server = family.server(unix_dir)
    selector_reactor.add_server(server)
    with serving(selector_reactor):
        for i in range(3):
            payload = f"ping {family.name} {i}".encode()
            assert round_trip(server, payload, unix_dir) == payload


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_unmodified_stdlib_server_answers_when_ticked_from_the_test_thread(
        family: Family, selector_reactor: Reactor, unix_dir: str) -> None:
    server = family.server(unix_dir)
    selector_reactor.add_server(server)
    hosted = hosted_of(selector_reactor, server)
    if server.socket_type == socket.SOCK_STREAM:
        with stream_client(server.address_family, server.server_address) as sock:
            sock.sendall(b"ticked\n")
            tick_until(selector_reactor, lambda: hosted.requests_taken == 1)
            assert recv_line(sock) == b"ticked\n"
    else:
        with socket.socket(server.address_family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            if server.address_family == socket.AF_UNIX:
                sock.bind(_unix_path(unix_dir, "c"))
            sock.sendto(b"ticked", server.server_address)
            tick_until(selector_reactor, lambda: hosted.requests_taken == 1)
            assert sock.recv(100) == b"ticked"


@pytest.mark.parametrize("timeout_before", [None, 3.0, 0.0], ids=["blocking", "timeout3", "nonblocking"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_remove_server_restores_the_socket_timeout(
        family: Family, timeout_before: float | None, reactor_: Reactor, unix_dir: str) -> None:
    server = family.server(unix_dir)
    try:
        server.socket.settimeout(timeout_before)
        reactor_.add_server(server)
        assert server.socket.gettimeout() == 0.0, "hosted listener must be non-blocking"
        with serving(reactor_):
            assert round_trip(server, b"mode", unix_dir) == b"mode"
        reactor_.remove_server(server)
        assert server.socket.gettimeout() == timeout_before
        assert os.get_blocking(server.fileno()) == (timeout_before is None)
    finally:
        server.server_close()


@pytest.mark.parametrize("restore", [True, False], ids=["restored", "kept-nonblocking"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_close_can_leave_the_listeners_nonblocking_for_another_process(
        family: Family, restore: bool, unix_dir: str) -> None:
    # O_NONBLOCK lives in the open file description: a dup (as another process inheriting it) sees the flag.
    server = family.server(unix_dir)
    other = os.dup(server.fileno())
    try:
        reactor = Reactor()
        reactor.add_server(server, Inline())
        assert not os.get_blocking(other)
        reactor.close(restore_listeners=restore)
        assert server.socket.fileno() == -1  # closed all the same
        assert os.get_blocking(other) == restore
    finally:
        os.close(other)


def test_close_can_leave_a_prefork_listener_nonblocking_too() -> None:
    script = """
        import os, socketserver, sys
        from reactor import Reactor
        from reactor.prefork import Prefork

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                pass

        for restore in (True, False):
            server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
            other = os.dup(server.fileno())
            reactor = Reactor()
            reactor.add_server(server, Prefork(1, graceful_timeout=5))
            reactor.run_until(lambda: reactor.server_stats(server)["ready"], 20)
            assert reactor.server_stats(server)["ready"], "the worker did not boot"
            reactor.close(restore_listeners=restore)
            print(restore, os.get_blocking(other))
            os.close(other)
    """
    result = run_python(script, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split("\n")[:2] == ["True True", "False False"]


def test_http_xmlrpc_and_echo_servers_share_one_reactor_thread(
        selector_reactor: Reactor, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    monkeypatch.setattr(QuietHTTPHandler, "threads", threads)

    class Echo(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            threads.append(threading.get_ident())
            self.wfile.write(self.rfile.readline())

    def add(a: int, b: int) -> int:
        threads.append(threading.get_ident())
        return a + b

    web = http.server.HTTPServer(("127.0.0.1", 0), QuietHTTPHandler)
    selector_reactor.add_server(web)
    echo = socketserver.TCPServer(("127.0.0.1", 0), Echo)
    selector_reactor.add_server(echo)
    rpc = xmlrpc.server.SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False)
    rpc.register_function(add, "add")
    selector_reactor.add_server(rpc)

    rpc_url = "http://127.0.0.1:%d/RPC2" % rpc.server_address[1]
    with serving(selector_reactor) as thread, \
            xmlrpc.client.ServerProxy(rpc_url, transport=TimeoutTransport()) as proxy:
        for i in range(4):
            connection = http.client.HTTPConnection("127.0.0.1", web.server_address[1], timeout=5)
            try:
                connection.request("GET", f"/round{i}")
                response = connection.getresponse()
                assert response.status == 200
                assert response.read() == f"hello /round{i}".encode()
            finally:
                connection.close()

            assert proxy.add(i, 40) == i + 40

            with stream_client(socket.AF_INET, echo.server_address) as sock:
                sock.sendall(b"echo %d\n" % i)
                assert recv_line(sock) == b"echo %d\n" % i

    assert len(threads) == 12
    assert set(threads) == {thread.ident}


def test_threading_http_server_keeps_alive_in_its_own_threads(
        reactor_: Reactor, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    peers: list[Any] = []

    class KeepAliveHandler(QuietHTTPHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            peers.append(self.client_address)
            super().do_GET()

    monkeypatch.setattr(QuietHTTPHandler, "threads", threads)
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHandler)
    reactor_.add_server(web)
    port = web.server_address[1]
    with serving(reactor_) as reactor_thread:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        other = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            sockets = []
            for i in range(3):
                kept.request("GET", f"/kept{i}")
                response = kept.getresponse()
                assert response.status == 200
                assert response.read() == f"hello /kept{i}".encode()
                assert not response.will_close
                sockets.append(kept.sock)
            assert all(sock is sockets[0] and sock is not None for sock in sockets)
            assert len(set(peers)) == 1, "the three requests came over one connection"

            # The kept-alive connection is idle in its handler thread; the
            # reactor must still take a new connection.
            other.request("GET", "/other")
            response = other.getresponse()
            assert response.status == 200
            assert response.read() == b"hello /other"
        finally:
            kept.close()
            other.close()

    assert len(threads) == 4
    assert reactor_thread.ident not in threads
    assert threads[0] == threads[1] == threads[2] != threads[3]


@pytest.mark.timeout(30)
def test_many_servers_of_every_family_all_answer(selector_reactor: Reactor, unix_dir: str) -> None:
    servers = []
    for family in FAMILIES:
        if family.needs_ipv6 and not ipv6_available():
            continue
        for _ in range(3):
            server = family.make(unix_dir)
            selector_reactor.add_server(server)
            servers.append(server)
    assert len(selector_reactor.servers) == len(servers) >= 12
    with serving(selector_reactor):
        for round_number in range(2):
            for index, server in enumerate(servers):
                payload = b"server %d round %d" % (index, round_number)
                assert round_trip(server, payload, unix_dir) == payload


# ---------------------------------------------------------------- service_actions()

class ServiceCountingServer(socketserver.TCPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoStreamHandler)
        self.service_calls = 0

    def service_actions(self) -> None:
        self.service_calls += 1


def test_service_actions_is_called_periodically(reactor_: Reactor) -> None:
    server = ServiceCountingServer()
    reactor_.add_server(server, service_interval=0.02)
    with serving(reactor_):
        wait_for(lambda: server.service_calls >= 5,
                 message=lambda: f"service_actions() called {server.service_calls} times")


def test_service_actions_runs_once_after_each_batch_of_requests(reactor_: Reactor, unix_dir: str) -> None:
    class Server(CountingUnixServer):
        service_calls = 0

        def service_actions(self) -> None:
            self.service_calls += 1

    server = Server(_unix_path(unix_dir))
    reactor_.add_server(server, service_interval=None)
    assert reactor_.time_until_next() is None, "service_interval=None must arm no timer"
    idle_ticks(reactor_, 0.15)
    assert server.service_calls == 0

    with contextlib.ExitStack() as stack:
        queue_unix_clients(stack, server, 3)
        reactor_.run_once(5)
        assert server.handled == 3
        assert server.service_calls == 1
        queue_unix_clients(stack, server, 1)
        reactor_.run_once(5)
        assert server.handled == 4
        assert server.service_calls == 2


def test_server_not_overriding_service_actions_gets_no_timer(reactor_: Reactor) -> None:
    plain = socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler)
    reactor_.add_server(plain, service_interval=0.02)
    assert reactor_.time_until_next() is None

    overriding = ServiceCountingServer()
    reactor_.add_server(overriding, service_interval=0.02)
    assert reactor_.time_until_next() is not None
    reactor_.remove_server(overriding)
    overriding.server_close()
    assert reactor_.time_until_next() is None


def test_service_actions_that_raises_is_logged_and_rescheduled(
        reactor_: Reactor, caplog: pytest.LogCaptureFixture) -> None:
    class Failing(ServiceCountingServer):
        def service_actions(self) -> None:
            super().service_actions()
            raise RuntimeError("service boom")

    caplog.set_level(logging.ERROR)
    server = Failing()
    reactor_.add_server(server, service_interval=0.02)
    with serving(reactor_):
        wait_for(lambda: server.service_calls >= 3,
                 message=lambda: f"service_actions() called {server.service_calls} times")
        assert round_trip(server, b"still serving", "") == b"still serving"
    logged = [record for record in caplog.records
              if record.exc_info and isinstance(record.exc_info[1], RuntimeError)
              and str(record.exc_info[1]) == "service boom"]
    assert len(logged) == server.service_calls


# ---------------------------------------------------------------- timeout / handle_timeout()

class TimeoutCountingServer(socketserver.TCPServer):
    def __init__(self, timeout: float | None) -> None:
        super().__init__(("127.0.0.1", 0), EchoStreamHandler)
        self.timeout = timeout
        self.timeouts = 0

    def handle_timeout(self) -> None:
        self.timeouts += 1


def test_handle_timeout_is_called_while_idle(reactor_: Reactor) -> None:
    server = TimeoutCountingServer(0.05)
    reactor_.add_server(server)
    with serving(reactor_):
        wait_for(lambda: server.timeouts >= 2,
                 message=lambda: f"handle_timeout() called {server.timeouts} times")


def test_handle_timeout_is_called_when_ticked_from_the_test_thread(reactor_: Reactor) -> None:
    server = TimeoutCountingServer(0.05)
    reactor_.add_server(server)
    assert reactor_.time_until_next() is not None
    idle_ticks(reactor_, 0.3)
    assert server.timeouts >= 1


def test_handle_timeouts_false_never_calls_handle_timeout(reactor_: Reactor) -> None:
    server = TimeoutCountingServer(0.05)
    reactor_.add_server(server, handle_timeouts=False)
    assert reactor_.time_until_next() is None
    idle_ticks(reactor_, 0.3)
    assert server.timeouts == 0


def test_server_timeout_none_never_calls_handle_timeout(reactor_: Reactor) -> None:
    server = TimeoutCountingServer(None)
    reactor_.add_server(server)
    assert reactor_.time_until_next() is None
    idle_ticks(reactor_, 0.3)
    assert server.timeouts == 0


# ---------------------------------------------------------------- dispatch strategy slot

class RecordingDispatch(Dispatch):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def bind(self, hosted: HostedServer) -> None:
        self.calls.append(("bind", hosted.server))

    def unbind(self, hosted: HostedServer) -> None:
        self.calls.append(("unbind", hosted.server))

    def submit(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        self.calls.append(("submit", hosted.server))
        super().submit(hosted, request, client_address)


def test_custom_dispatch_is_bound_used_for_every_request_and_unbound(reactor_: Reactor) -> None:
    server = socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler)
    try:
        dispatch = RecordingDispatch()
        reactor_.add_server(server, dispatch)
        assert dispatch.calls == [("bind", server)]
        with serving(reactor_):
            assert round_trip(server, b"one", "") == b"one"
            assert round_trip(server, b"two", "") == b"two"
        reactor_.remove_server(server)
        assert dispatch.calls == [("bind", server), ("submit", server), ("submit", server), ("unbind", server)]
    finally:
        server.server_close()


def test_closing_the_reactor_unbinds_the_dispatch_once() -> None:
    server = socketserver.TCPServer(("127.0.0.1", 0), EchoStreamHandler)
    dispatch = RecordingDispatch()
    with Reactor() as r:
        r.add_server(server, dispatch)
    assert dispatch.calls == [("bind", server), ("unbind", server)]
    assert server.socket.fileno() == -1, "close() closes the servers it still hosts"


@pytest.mark.parametrize("dispatch", [None, Inline()], ids=["default", "explicit_inline"])
def test_inline_dispatch_runs_handlers_in_the_reactor_thread(reactor_: Reactor, dispatch: Dispatch | None) -> None:
    handler_threads: list[int] = []

    class Recording(EchoStreamHandler):
        def handle(self) -> None:
            handler_threads.append(threading.get_ident())
            super().handle()

    server = socketserver.TCPServer(("127.0.0.1", 0), Recording)
    reactor_.add_server(server, dispatch)
    with serving(reactor_) as thread:
        assert round_trip(server, b"inline", "") == b"inline"
    assert handler_threads == [thread.ident]


def test_dispatch_repr_names_the_strategy() -> None:
    assert repr(Inline()) == "Inline()"
    assert repr(RecordingDispatch()) == "RecordingDispatch()"


# ---------------------------------------------------------------- pause reasons

def test_pause_reasons_compose_and_resume_serves_the_waiting_client(
        selector_reactor: Reactor, unix_dir: str) -> None:
    server = CountingUnixServer(_unix_path(unix_dir))
    selector_reactor.add_server(server)
    hosted = hosted_of(selector_reactor, server)
    fd = server.fileno()

    hosted.pause("first")
    assert hosted.paused
    assert not selector_reactor.is_watched(fd)
    with contextlib.ExitStack() as stack:
        queue_unix_clients(stack, server, 1)
        for _ in range(5):
            selector_reactor.run_once(0.05)
        assert server.handled == 0

        hosted.pause("second")
        hosted.resume("first")
        assert hosted.paused, "one reason left: still paused"
        assert not selector_reactor.is_watched(fd)
        for _ in range(5):
            selector_reactor.run_once(0.05)
        assert server.handled == 0

        hosted.resume("second")
        assert not hosted.paused
        assert selector_reactor.is_watched(fd)
        tick_until(selector_reactor, lambda: server.handled == 1)


# ---------------------------------------------------------------- accept batches

def test_accept_batch_limits_requests_per_tick(selector_reactor: Reactor, unix_dir: str) -> None:
    server = CountingUnixServer(_unix_path(unix_dir))
    selector_reactor.add_server(server)
    hosted_of(selector_reactor, server).accept_batch = 4
    with contextlib.ExitStack() as stack:
        queue_unix_clients(stack, server, 10)
        selector_reactor.run_once(0)
        assert server.handled == 4
        selector_reactor.run_once(0)
        assert server.handled == 8
        selector_reactor.run_once(0)
        assert server.handled == 10


def test_two_busy_servers_both_progress_in_one_tick(selector_reactor: Reactor, unix_dir: str) -> None:
    first = CountingUnixServer(_unix_path(unix_dir))
    second = CountingUnixServer(_unix_path(unix_dir))
    for server in (first, second):
        selector_reactor.add_server(server)
        hosted_of(selector_reactor, server).accept_batch = 4
    with contextlib.ExitStack() as stack:
        queue_unix_clients(stack, first, 10)
        queue_unix_clients(stack, second, 10)
        selector_reactor.run_once(0)
        assert (first.handled, second.handled) == (4, 4)
        tick_until(selector_reactor, lambda: first.handled == second.handled == 10, ticks=5, timeout=0)


# ---------------------------------------------------------------- stop() from a handler

@pytest.mark.timeout(20)
def test_stop_from_a_handler_takes_no_further_request_in_that_tick(
        selector_reactor: Reactor, unix_dir: str) -> None:
    served: list[str] = []
    total = 6

    class Stopping(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            served.append(self.server.name)  # type: ignore[attr-defined]
            if len(served) in (1, total):
                selector_reactor.stop()

    servers = []
    for name in ("a", "b"):
        server = socketserver.UnixStreamServer(_unix_path(unix_dir), Stopping)
        server.name = name  # type: ignore[attr-defined]
        selector_reactor.add_server(server)
        servers.append(server)

    with contextlib.ExitStack() as stack:
        for server in servers:
            queue_unix_clients(stack, server, total // 2)
        safety = selector_reactor.call_later(10, selector_reactor.stop)
        try:
            selector_reactor.serve_forever()
            assert len(served) == 1, f"requests taken after stop(): {served}"
            selector_reactor.serve_forever()
        finally:
            safety.cancel()
        assert sorted(served) == ["a", "a", "a", "b", "b", "b"]


def test_remove_server_from_its_own_handler_takes_no_further_request(reactor_: Reactor, unix_dir: str) -> None:
    class Leaving(CountingHandler):
        def handle(self) -> None:
            super().handle()
            reactor_.remove_server(self.server)

    server = socketserver.UnixStreamServer(_unix_path(unix_dir), Leaving)
    server.handled = 0  # type: ignore[attr-defined]
    try:
        # Handed back, the socket gets this timeout again: a reactor that kept
        # accepting after the removal would wait 2 s, not forever.
        server.socket.settimeout(2.0)
        reactor_.add_server(server)
        with contextlib.ExitStack() as stack:
            queue_unix_clients(stack, server, 2)
            reactor_.run_once(5)
            assert server.handled == 1  # type: ignore[attr-defined]
            assert reactor_.servers == []
            assert server.socket.gettimeout() == 2.0
            server.handle_request()  # the second client is still queued, for its owner
            assert server.handled == 2  # type: ignore[attr-defined]
    finally:
        server.server_close()


# ---------------------------------------------------------------- resource exhaustion

class ExhaustedTCPServer(socketserver.TCPServer):
    """A stdlib TCPServer whose get_request fails with EMFILE ``failures_left`` times.

    A fake is the only way to cause EMFILE in the test process itself; a real
    one (lowered RLIMIT_NOFILE) belongs in a fresh interpreter.
    """

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), EchoStreamHandler)
        self.failures_left = failures
        self.get_request_calls = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        self.get_request_calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return super().get_request()


def test_exhausted_listener_is_paused_instead_of_polled(reactor_: Reactor) -> None:
    server = ExhaustedTCPServer(failures=3)
    reactor_.add_server(server)
    hosted = hosted_of(reactor_, server)
    with stream_client(socket.AF_INET, server.server_address) as sock:
        sock.sendall(b"after exhaustion\n")
        reactor_.run_once(5)
        assert server.get_request_calls == 1
        assert hosted.paused
        assert not reactor_.is_watched(server.fileno())
        assert reactor_.time_until_next() is not None, "a retry timer must be armed"

        # The connection still waits in the backlog: a level-triggered listener
        # would be readable now, but a paused one is not looked at.
        reactor_.run_once(0)
        assert server.get_request_calls == 1

        tick_until(reactor_, lambda: hosted.requests_taken == 1, timeout=1.0)
        assert server.failures_left == 0
        assert not hosted.paused
        assert reactor_.is_watched(server.fileno())
        assert recv_line(sock) == b"after exhaustion\n"


def test_exhausted_listener_recovers_and_logs_once_per_burst(
        reactor_: Reactor, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = ExhaustedTCPServer(failures=3)
    reactor_.add_server(server)
    with serving(reactor_):
        assert round_trip(server, b"recovered", "") == b"recovered"
        wait_for(lambda: server.failures_left == 0)
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "cannot take requests" in m]) == 1, messages
    assert len([m for m in messages if "taking requests again" in m]) == 1, messages
