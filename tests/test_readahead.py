"""Read-ahead and write-behind (reactor.readahead, reactor.buffered), from the handler's side.

The black-box slow-client scenarios (slowloris, slow bodies, slow readers,
slowhttptest) live in test_slow_clients.py; these pin down the mechanism:
what a handler sees, backpressure, deadlines, spooling, hand-over, hooks,
leaving, and that everything else on the reactor keeps serving meanwhile.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import select
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import Inline, Reactor, ThreadPool
from reactor.buffered import ConnectionSocket, _Inbound, _Outbound
from reactor.http_boundary import HTTPRequestBoundary
from reactor import socketserver
from test_keepalive import UpperLoop
from support import QuietHTTPHandler, ipv6_available, reactor_thread, short_unix_dir, wait_for

pytestmark = pytest.mark.timeout(60)

CLIENT_TIMEOUT = 5.0


class KeepAlive(QuietHTTPHandler):
    protocol_version = "HTTP/1.1"


class Echo(KeepAlive):
    """Answers a POST with its body, and a GET with ``size`` bytes (``/?size=N``)."""

    seen: list[Any] = []
    released = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply(self) -> bytes:
        size = int(self.path.partition("size=")[2] or 3)
        return b"x" * size


@contextlib.contextmanager
def hosted(handler: Any = Echo, dispatch: Any = None, **options: Any) -> Iterator[tuple[Reactor, Any]]:
    reactor = Reactor()
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    try:
        reactor.add_server(server, dispatch if dispatch is not None else ThreadPool(2, 0), **options)
        with reactor_thread(reactor):
            yield reactor, server
    finally:
        server.server_close()


def connect(server: Any, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(CLIENT_TIMEOUT)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(server.server_address)
    return sock


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP response with a Content-Length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head, body


def get(server: Any, path: str = "/") -> tuple[bytes, bytes]:
    with connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        return read_response(sock)


class LineBoundary:
    """A ``request_boundary`` hook: one request is one line."""

    def __init__(self) -> None:
        self.complete = self.head_complete = False
        self.received = 0

    def feed(self, data: bytes) -> int:
        end = bytes(data).find(b"\n")
        n = len(data) if end < 0 else end + 1
        self.received += n
        self.complete = self.head_complete = end >= 0
        return n

    def reset(self) -> None:
        self.complete = self.head_complete = False
        self.received = 0


class UpperLines(UpperLoop):
    """Answers each line in capitals; a line is a request the loop reads ahead."""

    request_boundary = LineBoundary


def counters(reactor: Reactor) -> dict[str, int]:
    return dict(reactor.stats()["servers"][0]["counters"])


# -- what the handler sees ---------------------------------------------------------------

def test_the_handler_gets_a_buffered_socket_that_answers_like_a_socket() -> None:
    seen: dict[str, Any] = {}

    class Look(KeepAlive):
        def do_GET(self) -> None:
            seen.update(type=type(self.request), peer=self.request.getpeername(),
                        sock=self.request.getsockname(), timeout=self.request.gettimeout(),
                        family=self.request.family)
            super().do_GET()

    with hosted(Look) as (_, server):
        head, body = get(server)
    assert head.startswith(b"HTTP/1.1 200") and body == b"ok\n"
    assert seen["type"] is ConnectionSocket
    assert seen["sock"] == server.server_address and seen["family"] == socket.AF_INET
    assert seen["peer"][0] == "127.0.0.1"


def test_read_ahead_false_hands_the_handler_its_real_socket() -> None:
    seen: list[type] = []

    class Look(KeepAlive):
        def do_GET(self) -> None:
            seen.append(type(self.request))
            super().do_GET()

    with hosted(Look, read_ahead=False) as (reactor, server):
        assert get(server)[1] == b"ok\n"
        assert counters(reactor)["read_ahead_refused"] == 0
    assert seen == [socket.socket]


def test_a_handler_that_overrides_handle_keeps_its_socket() -> None:
    seen: list[type] = []

    class Own(KeepAlive):
        def handle(self) -> None:
            seen.append(type(self.request))
            self.handle_one_request()

    with hosted(Own) as (_, server):
        assert get(server)[1] == b"ok\n"
    assert seen == [socket.socket]


# -- write-behind --------------------------------------------------------------------------

def test_a_reply_above_write_buffer_limit_blocks_the_handler_until_the_client_reads() -> None:
    done = threading.Event()
    size = 12 << 20  # more than the kernel's send buffer holds (tcp_wmem's maximum is 4 MiB)

    class Big(Echo):
        def do_GET(self) -> None:
            super().do_GET()
            done.set()

    with hosted(Big, write_buffer_limit=256 << 10, write_buffer_in_memory=64 << 10) as (reactor, server):
        with connect(server, rcvbuf=4096) as sock:
            sock.sendall(f"GET /?size={size} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            # Nothing read yet: the handler is held by backpressure, not finished.
            assert not done.wait(0.3)
            head, body = read_response(sock)
            assert body == b"x" * size
        assert done.wait(CLIENT_TIMEOUT)


def test_a_reply_below_the_limit_frees_the_worker_before_a_slow_reader_takes_it() -> None:
    done = threading.Event()

    class Big(Echo):
        def do_GET(self) -> None:
            super().do_GET()
            done.set()

    with hosted(Big, ThreadPool(1, 0)) as (_, server):
        with connect(server, rcvbuf=4096) as slow:
            slow.sendall(b"GET /?size=600000 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert done.wait(CLIENT_TIMEOUT), "the only worker waited on the slow reader"
            # The one worker is free for everybody else while the reply waits in the buffer.
            assert get(server)[1] == b"ok\n"[:0] + b"xxx"
            head, body = read_response(slow)
            assert len(body) == 600000


def test_a_reader_slower_than_send_min_rate_is_closed_and_counted() -> None:
    with hosted(Echo, send_timeout=0.3, send_min_rate=1000) as (reactor, server):
        with connect(server, rcvbuf=4096) as slow:
            slow.sendall(b"GET /?size=12000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            wait_for(lambda: counters(reactor)["send_timeouts"] == 1, timeout=10)
            with pytest.raises(OSError):
                received = 0
                while True:  # the stream ends (or resets) before the whole reply
                    chunk = slow.recv(1 << 20)
                    if not chunk:
                        raise ConnectionResetError("closed")
                    received += len(chunk)
                    assert received < 12000000
        assert get(server)[1] == b"xxx"


# -- read-ahead ------------------------------------------------------------------------------

def test_a_large_body_is_spooled_and_arrives_whole() -> None:
    body = os.urandom(3 << 20)
    with hosted(Echo, request_body_in_memory=4096) as (_, server):
        with connect(server) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
            sock.sendall(body)
            assert read_response(sock)[1] == body


def test_a_body_over_max_request_body_is_refused_with_413_before_it_is_sent() -> None:
    with hosted(Echo, max_request_body=1000) as (reactor, server):
        with connect(server) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1001\r\n\r\n")
            head, _ = read_response(sock)
            assert head.startswith(b"HTTP/1.1 413 ")
            assert sock.recv(100) == b""
        assert counters(reactor)["read_ahead_refused"] == 1
        assert get(server)[1] == b"xxx"


def test_a_slow_body_gets_408_after_its_deadline() -> None:
    with hosted(Echo, request_body_timeout=0.3, request_body_min_rate=100000) as (reactor, server):
        with connect(server) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc")
            head, _ = read_response(sock)
            assert head.startswith(b"HTTP/1.1 408 ")


def test_expect_100_continue_is_answered_once_by_the_loop() -> None:
    with hosted(Echo) as (_, server):
        with connect(server) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello")
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 ") and body == b"hello"


def test_a_handler_reading_past_its_request_reads_the_socket_itself() -> None:
    """An upgrade: after its request the handler speaks another protocol on the connection."""

    class Upgrade(KeepAlive):
        def do_GET(self) -> None:
            self.send_response(101)
            self.send_header("Upgrade", "echo")
            self.end_headers()
            for line in self.rfile:
                self.wfile.write(line.upper())
                if line == b"bye\n":
                    break
            self.close_connection = True

    with hosted(Upgrade) as (_, server):
        with connect(server) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\n\r\nfirst\n")
            data = b""
            while b"FIRST\n" not in data:
                data += sock.recv(1000)
            assert data.startswith(b"HTTP/1.1 101 ")
            sock.sendall(b"second\n")
            assert sock.recv(100) == b"SECOND\n"
            sock.sendall(b"bye\n")
            assert sock.recv(100) == b"BYE\n"
            assert sock.recv(100) == b""


def test_fileno_hands_the_socket_over_so_select_sees_what_the_handler_expects() -> None:
    class Selecting(KeepAlive):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"ready")
            # Wait for the client's next bytes the way old code does: select on the descriptor.
            readable, _, _ = select.select([self.request.fileno()], [], [], CLIENT_TIMEOUT)
            assert readable
            assert self.request.recv(10) == b"ping"
            self.close_connection = True

    with hosted(Selecting) as (_, server):
        with connect(server) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[1] == b"ready"
            sock.sendall(b"ping")
            assert sock.recv(100) == b""


def test_a_request_loop_handler_with_a_request_boundary_hook_is_read_ahead() -> None:
    seen: list[type] = []

    class Upper(UpperLines):
        def handle_one_request(self) -> None:
            seen.append(type(self.request))
            super().handle_one_request()

    reactor = Reactor()
    server = socketserver.TCPServer(("127.0.0.1", 0), Upper)
    try:
        reactor.add_server(server, ThreadPool(1, 0))
        with reactor_thread(reactor):
            with connect(server) as slow, connect(server) as fresh:
                slow.sendall(b"half a li")  # holds no worker: the one worker serves the other
                fresh.sendall(b"one\ntwo\n")
                data = b""
                while data != b"ONE\nTWO\n":
                    data += fresh.recv(100)
                slow.sendall(b"ne\n")
                assert slow.recv(100) == b"HALF A LINE\n"
    finally:
        server.server_close()
    assert set(seen) == {ConnectionSocket}


def test_inline_a_slowloris_client_does_not_stop_the_other_servers_on_the_reactor() -> None:
    reactor = Reactor()
    http_server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    other = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    try:
        reactor.add_server(http_server, Inline())
        reactor.add_server(other, Inline())
        with reactor_thread(reactor):
            with connect(http_server) as slow:
                slow.sendall(b"GET / HTTP/1.1\r\nHo")
                assert get(other)[1] == b"xxx"
                assert get(http_server)[1] == b"xxx"
                slow.sendall(b"st: t\r\n\r\n")
                assert read_response(slow)[1] == b"xxx"
    finally:
        http_server.server_close()
        other.server_close()


def test_leaving_closes_connections_whose_request_is_arriving_and_finishes_replies_in_flight() -> None:
    entered = threading.Event()
    release = threading.Event()

    class Slow(Echo):
        def do_GET(self) -> None:
            entered.set()
            release.wait(CLIENT_TIMEOUT)
            super().do_GET()

    reactor = Reactor()
    server = http.server.HTTPServer(("127.0.0.1", 0), Slow)
    try:
        reactor.add_server(server, ThreadPool(2, 0))

        def serve_then_leave() -> None:
            reactor.serve_forever()
            reactor.close()  # drains: what is arriving is closed, what is in flight finishes

        thread = threading.Thread(target=serve_then_leave)
        thread.start()
        try:
            with connect(server) as arriving, connect(server) as served:
                arriving.sendall(b"GET / HTTP/1.1\r\n")
                served.sendall(b"GET /?size=100000 HTTP/1.1\r\nHost: t\r\n\r\n")
                assert entered.wait(CLIENT_TIMEOUT)
                wait_for(lambda: reactor.stats()["servers"][0]["gauges"]["reading"] == 1)
                reactor.stop()
                assert arriving.recv(100) == b""  # closed at once, unserved
                release.set()
                head, body = read_response(served)  # the request in flight is answered whole
                assert len(body) == 100000
        finally:
            release.set()
            thread.join(CLIENT_TIMEOUT)
            assert not thread.is_alive()
    finally:
        server.server_close()


def test_the_stats_count_refusals_and_show_requests_arriving() -> None:
    with hosted(Echo, max_request_headers=2) as (reactor, server):
        with connect(server) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
            assert read_response(sock)[0].startswith(b"HTTP/1.1 431 ")
        with connect(server) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")
            wait_for(lambda: reactor.stats()["servers"][0]["gauges"]["reading"] == 1)
        stats = counters(reactor)
        assert stats["read_ahead_refused"] == 1 and stats["send_timeouts"] == 0


# -- the buffers on their own ----------------------------------------------------------------

def test_inbound_reads_lines_across_memory_and_spool_parts() -> None:
    inbound = _Inbound()
    inbound.append(b"GET / HTTP/1.1\r\nHost")
    inbound.append(b": t\r\n\r\nbody-in-", spool=True)
    inbound.append(b"spool\nnext")
    assert inbound.readline(-1) == (b"GET / HTTP/1.1\r\n", True)
    assert inbound.readline(-1) == (b"Host: t\r\n", True)
    assert inbound.readline(4) == (b"\r\n", True)
    assert inbound.read(5) == b"body-"
    assert inbound.readline(-1) == (b"in-spool\n", True)
    assert inbound.read(-1) == b"next" and inbound.size == 0


def test_outbound_spools_past_its_memory_limit_and_gives_bytes_back_in_order() -> None:
    outbound = _Outbound(in_memory=10)
    for part in (b"0123456789", b"abcdef", b"ghij"):
        outbound.append(part)
    assert outbound.spool is not None and outbound.size == 20
    out = b""
    while (head := outbound.head()) is not None:
        take = min(3, len(head))
        out += bytes(head[:take])
        outbound.consumed(take)
    assert out == b"0123456789abcdefghij" and outbound.size == 0 and outbound.spool is None


def test_the_http_boundary_is_the_default_for_unmodified_http_handlers() -> None:
    from reactor.admission import AdmissionOptions
    from reactor.readahead import request_boundary_factory

    make = request_boundary_factory(Echo, AdmissionOptions())
    assert make is not None and isinstance(make(), HTTPRequestBoundary)
    assert request_boundary_factory(http.server.CGIHTTPRequestHandler, AdmissionOptions()) is None

    class Opted(Echo):
        read_ahead = False

    assert request_boundary_factory(Opted, AdmissionOptions()) is None


def test_over_tls_a_large_reply_to_a_slow_reader_and_a_large_body_arrive_whole(pki: Any) -> None:
    """TLS writes that would block are retried whole, from the buffer and from its spool."""
    seen: dict[str, Any] = {}

    class Look(Echo):
        def do_GET(self) -> None:
            seen.update(cipher=self.request.cipher(), cert=self.request.getpeercert(),
                        alpn=self.request.selected_alpn_protocol(), peer=self.request.getpeername())
            super().do_GET()

    body = os.urandom(1 << 20)
    with hosted(Look, ssl_context=pki.server_context(), write_buffer_in_memory=16384) as (_, server):
        context = pki.client_context()
        with connect(server, rcvbuf=4096) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /?size=3000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(tls)[1] == b"x" * 3000000
            tls.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert read_response(tls)[1] == body
    assert isinstance(seen["cipher"], tuple) and seen["cert"] is None and seen["peer"][0] == "127.0.0.1"


@pytest.mark.parametrize("family", ["tcp6", "unix"])
def test_every_stream_family_is_read_ahead(family: str) -> None:
    """IPv6 and Unix stream sockets: a trickling client holds no worker; a fresh one is served."""
    if family == "tcp6" and not ipv6_available():
        pytest.skip("no IPv6 loopback")

    with contextlib.ExitStack() as stack:
        if family == "unix":
            path = os.path.join(stack.enter_context(short_unix_dir()), "s")
            server: Any = socketserver.UnixStreamServer(path, UpperLines)
            sock_family, address = socket.AF_UNIX, path
        else:
            server = socketserver.TCPServer(("::1", 0), UpperLines)
            sock_family, address = socket.AF_INET6, server.server_address[:2]
        stack.callback(server.server_close)
        reactor = Reactor()
        reactor.add_server(server, ThreadPool(1, 0))
        stack.enter_context(reactor_thread(reactor))
        clients = []
        for _ in range(2):
            sock = socket.socket(sock_family, socket.SOCK_STREAM)
            sock.settimeout(CLIENT_TIMEOUT)
            sock.connect(address)
            stack.callback(sock.close)
            clients.append(sock)
        slow, fresh = clients
        slow.sendall(b"trick")
        fresh.sendall(b"fresh\n")
        assert fresh.recv(100) == b"FRESH\n"
        slow.sendall(b"le\n")
        assert slow.recv(100) == b"TRICKLE\n"


def test_when_no_spool_can_be_made_the_in_memory_size_becomes_the_limit(monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Out of descriptors (EMFILE) or disk, a reply waits in memory only up to write_buffer_in_memory."""
    from reactor import buffered

    def no_spool() -> Any:
        raise OSError(24, "Too many open files")  # EMFILE, injected: the whole test process would suffer it

    monkeypatch.setattr(buffered, "_Spool", no_spool)
    outbound = _Outbound(in_memory=10)
    outbound.append(b"0123456789")
    outbound.append(b"abc")
    assert outbound.spool_failed and outbound.spool is None and outbound.size == 13
    assert "could not spool a reply" in caplog.text
    out = b""
    while (head := outbound.head()) is not None:
        out += bytes(head)
        outbound.consumed(len(head))
    assert out == b"0123456789abc"


@pytest.mark.parametrize("options, expected", [
    ({}, socket.socket),
    ({"dispatch": "pool"}, ConnectionSocket),
    ({"connection_options": "read_ahead"}, ConnectionSocket),
])
def test_a_compat_server_reads_ahead_only_with_a_dispatch_or_when_asked(options: dict[str, str],
                                                                        expected: type) -> None:
    from reactor.admission import AdmissionOptions

    seen: list[type] = []

    class Look(Echo):
        def do_GET(self) -> None:
            seen.append(type(self.request))
            super().do_GET()

    kwargs: dict[str, Any] = {}
    if "dispatch" in options:
        kwargs["dispatch"] = ThreadPool(2)
    if "connection_options" in options:
        kwargs["connection_options"] = AdmissionOptions(read_ahead=True)
    server = socketserver.TCPServer(("127.0.0.1", 0), Look, **kwargs)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert get(server)[1] == b"xxx"
    finally:
        server.shutdown()
        thread.join(CLIENT_TIMEOUT)
        server.server_close()
    assert seen == [expected]
