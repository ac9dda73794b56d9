"""Slow clients cost no worker (issue 14), shown black-box with real sockets and real slowhttptest.

The loop reads a whole HTTP request (head, then body) before a worker sees it, and flushes the
reply from a buffer it owns, so a client that sends or reads slowly holds a connection, never a
thread. Every scenario (slowloris, slowloris on a kept-alive connection's next request, a slow
body, a slow reader) runs an unmodified HTTP/1.1 ``SimpleHTTPRequestHandler`` (plus a plain
``do_POST``) on a pool of 2 threads, lets more slow clients than that trickle, and checks that a
fresh client is answered within a second meanwhile. The same scenarios with ``read_ahead=False``
(the behaviour before issue 14: the handler reads the socket itself) must starve the fresh client:
that shows the scenarios really pin workers when nothing protects them.

Then: requests that smuggle (both ``Content-Length`` and ``Transfer-Encoding``, two different
lengths, an oversized chunk, oversized heads) get a refusal and a close; deadlines and limits
answer 408/413/431; what must keep working does (``Expect: 100-continue`` with curl, big bodies,
big replies, pipelining, TLS and what a handler asks its TLS connection, ``xmlrpc.server`` and
``wsgiref``). Last, slowhttptest itself (600 connections) against a server in a fresh
interpreter on ``ThreadPool(8)`` and on ``Prefork`` (2 workers x 4 threads), judged from its CSV
report (with a control run against ``ThreadingHTTPServer``, which it cannot starve), and a short
end-to-end run of the bench's slow-clients cell.

Synchronisation is on what the clients saw (bytes sent, bytes received), never on sleeping; a
slow client paces its own sends and reads with ``Event.wait(0.1)``: that is its behaviour.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import http.client
import http.server
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import xmlrpc.client
import xmlrpc.server
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref import simple_server

import pytest

from reactor import Reactor, ThreadPool
from slow_scripts.http_server import Files
from support import REPO_ROOT, TESTS_DIR, reactor_thread, spawn_python, wait_for

#: Every client socket's timeout, unless a check says otherwise.
IO_TIMEOUT = 5.0
#: A fresh client must have its whole answer within this long while slow clients trickle...
PROMPT_S = 1.0
#: ... and its socket gives up after this long.
FRESH_TIMEOUT = 2.0
#: A negative check (read-ahead off): the fresh client waits this long for nothing.
STALL_TIMEOUT = 1.0
#: A slow client sends (or reads) once every this many seconds.
PACE_S = 0.1
#: The pool of the in-process scenarios, and how many slow clients outnumber it.
POOL = 2
SLOW_CLIENTS = 6
#: The big reply (bytes).
BIG = 256 * 1024
#: A slow reader's receive buffer, set before connect (the kernel doubles it).
READER_RCVBUF = 4096
#: The listener's SO_SNDBUF (its connections inherit it) where a slow reader is the point. Linux
#: autotunes a loopback connection's send buffer to megabytes whatever the reader's window, so
#: 256 KiB would vanish into the kernel and hide the slow reader from any server; 8 KiB (16 KiB
#: once doubled) makes the reply wait in the server, as it does under socket-memory pressure or
#: with a bigger reply.
SMALL_SNDBUF = 8192
SMALL = b"small file\n"

SCRIPTS = TESTS_DIR / "slow_scripts"


# -- the server side ------------------------------------------------------------------


def add_server(reactor: Reactor, server: Any, dispatch: Any, **options: Any) -> None:
    """``reactor.add_server`` with issue 14's keywords.

    ``read_ahead=False`` asks for what a reactor without read-ahead does anyway, so on such a
    reactor (one whose ``add_server`` does not know the keyword yet) it is left out; every other
    keyword is passed as it is, and an unknown one fails the test.
    """
    try:
        reactor.add_server(server, dispatch, **options)
    except TypeError as exc:
        if options.get("read_ahead") is not False or "read_ahead" not in str(exc):
            raise
        rest = {key: value for key, value in options.items() if key != "read_ahead"}
        reactor.add_server(server, dispatch, **rest)


@contextlib.contextmanager
def hosted(handler: Any, *, dispatch: Any = None, server_class: Any = http.server.HTTPServer,
           sndbuf: int = 0, **options: Any) -> Iterator[tuple[Reactor, Any]]:
    """An ``http.server``-style server on 127.0.0.1 hosted by a reactor running in a thread."""
    reactor = Reactor()
    server = server_class(("127.0.0.1", 0), handler)
    try:
        if sndbuf:
            server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        try:
            add_server(reactor, server, ThreadPool(POOL) if dispatch is None else dispatch, **options)
        except BaseException:
            reactor.close()
            raise
        with reactor_thread(reactor):
            yield reactor, server
    finally:
        server.server_close()


def files(docroot: Path, handler: type[Files] = Files) -> Any:
    """The handler factory, the way http.server documents ``directory``."""
    return functools.partial(handler, directory=str(docroot))


def digest(body: bytes) -> bytes:
    """What ``Files.do_POST`` answers for ``body``."""
    return b"%d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode())


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "small.txt").write_bytes(SMALL)
    (root / "big.bin").write_bytes(big_content())
    for index in range(5):
        (root / f"p{index}.txt").write_bytes(pipelined_body(index))
    return root


def big_content() -> bytes:
    """BIG bytes that no off-by-one can pass for another slice of themselves."""
    return b"".join(hashlib.sha256(b"%d" % n).digest() for n in range(BIG // 32))


def pipelined_body(index: int) -> bytes:
    return (b"reply %d " % index) * (index * 50 + 1)


# -- the client side ------------------------------------------------------------------


def connect(address: Any, *, timeout: float = IO_TIMEOUT, rcvbuf: int = 0,
            context: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(address)
        if context is not None:
            return context.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Response:
    version: str
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def read_response(reader: Any) -> Response:
    """One HTTP response from a buffered binary reader (interim 1xx responses skipped)."""
    while True:
        line = reader.readline(65537)
        if not line:
            raise ConnectionError("the server closed the connection before a status line")
        version, status, *_ = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers = http.client.parse_headers(reader)
        if not 100 <= int(status) < 200:
            break
    length = headers.get("Content-Length")
    if length is not None:
        body = reader.read(int(length))
    else:
        body = b""
        with contextlib.suppress(ConnectionResetError):
            body = reader.read()
    return Response(version, int(status), headers, body)


def fresh_get(address: Any, path: str = "/small.txt", *, timeout: float = FRESH_TIMEOUT,
              context: ssl.SSLContext | None = None) -> tuple[float, Response, Any]:
    """A new connection, one GET: (seconds from connect() to the last byte, response, its local address)."""
    started = time.monotonic()
    with contextlib.closing(connect(address, timeout=timeout, context=context)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        with sock.makefile("rb") as reader:
            response = read_response(reader)
        return time.monotonic() - started, response, sock.getsockname()


def assert_served_promptly(address: Any, path: str = "/small.txt", expected: bytes | None = SMALL, *,
                           context: ssl.SSLContext | None = None, why: str = "") -> tuple[Response, Any]:
    try:
        elapsed, response, local = fresh_get(address, path, context=context)
    except TimeoutError:
        pytest.fail(f"a fresh client got no answer within {FRESH_TIMEOUT:g} s{why}", pytrace=False)
    assert response.status == 200, response
    if expected is not None:
        assert response.body == expected
    assert elapsed < PROMPT_S, f"a fresh client waited {elapsed:.2f} s{why}"
    return response, local


def assert_starved(address: Any, path: str = "/small.txt") -> None:
    """The fresh client gets nothing within STALL_TIMEOUT: every worker waits on a slow client."""
    with pytest.raises(TimeoutError):
        fresh_get(address, path, timeout=STALL_TIMEOUT)


def assert_counted(reactor: Reactor, server: Any, counter: str) -> None:
    """Loosely: where the server's stats have ``counter`` (issue 14's ``read_ahead_refused``,
    ``send_timeouts``; the names may change), it counted what just happened."""
    def counted() -> bool:
        count = reactor.server_stats(server).get(counter)
        return count is None or count >= 1

    wait_for(counted, timeout=IO_TIMEOUT, message=lambda: f"{counter} = {reactor.server_stats(server).get(counter)}")


def assert_closed(sock: socket.socket, reader: Any | None = None) -> None:
    """The server ends the connection (EOF, or a reset) within the socket's timeout."""
    try:
        rest = reader.read() if reader is not None else sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b"", f"the connection is still open: {rest[:200]!r}"


class SlowClient(threading.Thread):
    """One slow client on its own connection: sends ``opening`` at once, then one item of ``drip``
    and/or reads one byte every PACE_S, until told to stop or the server ends the connection."""

    def __init__(self, sock: socket.socket, stop: threading.Event, *, opening: bytes = b"",
                 drip: Iterator[bytes] | None = None, read_one: bool = False) -> None:
        super().__init__(name="slow-client", daemon=True)
        self.sock = sock
        self.stop = stop
        self.opening = opening
        self.drip = drip
        self.read_one = read_one
        self.sent = 0
        self.received = 0
        self.ticks = 0
        self.ended: str | None = None  # why it stopped early: "EOF" or the exception

    def run(self) -> None:
        try:
            if self.opening:
                self.sock.sendall(self.opening)
            while not self.stop.is_set():
                if self.drip is not None:
                    chunk = next(self.drip)
                    self.sock.sendall(chunk)
                    self.sent += len(chunk)
                if self.read_one:
                    if not self.sock.recv(1):
                        self.ended = "EOF"
                        return
                    self.received += 1
                self.ticks += 1
                self.stop.wait(PACE_S)
        except (OSError, ValueError) as exc:  # ValueError: an SSLSocket shut down under it
            if not self.stop.is_set():
                self.ended = repr(exc)


@contextlib.contextmanager
def slow_clients(count: int, open_connection: Callable[[], socket.socket], **behaviour: Any
                 ) -> Iterator[list[SlowClient]]:
    """``count`` slow clients; ``behaviour()`` is called afresh for each (a drip is an iterator)."""
    stop = threading.Event()
    clients: list[SlowClient] = []
    try:
        for _ in range(count):
            sock = open_connection()
            client = SlowClient(sock, stop, **{k: v() if callable(v) else v for k, v in behaviour.items()})
            clients.append(client)
            client.start()
        yield clients
    finally:
        stop.set()
        for client in clients:
            client.join(PACE_S * 5)
            if client.is_alive():  # in a read the server never answers
                with contextlib.suppress(OSError):
                    client.sock.shutdown(socket.SHUT_RDWR)
                client.join(IO_TIMEOUT + 1)
        for client in clients:
            client.sock.close()


def slowloris_drip(path: str = "/small.txt") -> Iterator[bytes]:
    """A request head one byte at a time, whose last header line never ends."""
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: slowloris\r\nX-Slow: ".encode()
    return itertools.chain((head[i:i + 1] for i in range(len(head))), itertools.repeat(b"a"))


SLOW_BODY_HEAD = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 10000\r\n\r\n"


@dataclass(frozen=True)
class Scenario:
    behaviour: dict[str, Any]
    rcvbuf: int = 0
    sndbuf: int = 0

    def engaged(self, clients: list[SlowClient], round_: int) -> bool:
        """Every slow client is at it: it has sent (or read) for ``3 * round_`` paces."""
        return all(c.ticks >= 3 * round_ and (c.received if self.behaviour.get("read_one") else c.sent)
                   for c in clients)


SCENARIOS = {
    # A header byte every 100 ms, forever.
    "slowloris": Scenario({"drip": slowloris_drip}),
    # The same on a kept-alive connection: one whole request first, then the next one trickles
    # (the loop reads a parked connection's next request ahead too).
    "slowloris-keep-alive": Scenario({"opening": b"GET /small.txt HTTP/1.1\r\nHost: x\r\n\r\n",
                                      "drip": slowloris_drip}),
    # A whole head announcing 10,000 bytes, then 3 bytes of body every 100 ms.
    "slow-body": Scenario({"opening": SLOW_BODY_HEAD, "drip": lambda: itertools.repeat(b"abc")}),
    # A small window asking for 256 KiB, then reading one byte every 100 ms.
    "slow-reader": Scenario({"opening": b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n", "read_one": True},
                            rcvbuf=READER_RCVBUF, sndbuf=SMALL_SNDBUF),
}


# -- slow clients hold no worker ------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.parametrize("name", SCENARIOS)
def test_slow_clients_outnumbering_the_pool_hold_no_worker_a_fresh_client_is_served_promptly(
        name: str, docroot: Path) -> None:
    scenario = SCENARIOS[name]
    with hosted(files(docroot), sndbuf=scenario.sndbuf) as (reactor, server), \
            slow_clients(SLOW_CLIENTS, lambda: connect(server.server_address, rcvbuf=scenario.rcvbuf),
                         **scenario.behaviour) as clients:
        address = server.server_address
        for round_ in (1, 2, 3):  # three times, while they go on trickling
            wait_for(lambda: scenario.engaged(clients, round_), timeout=IO_TIMEOUT, message=lambda: (
                f"{name}: the slow clients did not all get going (ticks {[c.ticks for c in clients]}, received "
                f"{[c.received for c in clients]}, ended {[c.ended for c in clients]}): the server serves "
                f"{POOL} at a time"))
            assert_served_promptly(address, why=f" beside {SLOW_CLIENTS} {name} clients on ThreadPool({POOL})")
        # They were still connected and trickling meanwhile: the server did not just cut them.
        assert [c.ended for c in clients] == [None] * SLOW_CLIENTS


@pytest.mark.timeout(40)
@pytest.mark.parametrize("name", SCENARIOS)
def test_with_read_ahead_off_the_same_slow_clients_starve_the_pool(name: str, docroot: Path) -> None:
    scenario = SCENARIOS[name]
    with hosted(files(docroot), sndbuf=scenario.sndbuf, read_ahead=False) as (reactor, server), \
            slow_clients(SLOW_CLIENTS, lambda: connect(server.server_address, rcvbuf=scenario.rcvbuf),
                         **scenario.behaviour) as clients:
        if scenario.behaviour.get("read_one"):  # the pool's workers are each writing to one of them
            wait_for(lambda: sum(c.received > 0 for c in clients) >= POOL, timeout=IO_TIMEOUT)
        else:
            wait_for(lambda: scenario.engaged(clients, 1), timeout=IO_TIMEOUT)
        assert_starved(server.server_address)


@pytest.mark.timeout(40)
def test_slowloris_over_tls_holds_no_worker_and_the_handler_still_asks_its_tls_connection(
        docroot: Path, pki: Any) -> None:
    class TLSInfo(Files):
        def do_GET(self) -> None:
            if self.path != "/tls-info":
                super().do_GET()
                return
            connection = self.request
            connection.settimeout(IO_TIMEOUT)
            body = json.dumps({"cipher": connection.cipher(), "peercert": connection.getpeercert(),
                               "peername": connection.getpeername(),
                               "alpn": connection.selected_alpn_protocol()}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server_context = pki.server_context()
    server_context.set_alpn_protocols(["http/1.1"])
    client_context = pki.client_context()
    client_context.set_alpn_protocols(["http/1.1"])
    with hosted(files(docroot, TLSInfo), ssl_context=server_context) as (reactor, server), \
            slow_clients(SLOW_CLIENTS, lambda: connect(server.server_address, context=client_context),
                         drip=slowloris_drip) as clients:
        for round_ in (1, 2, 3):
            wait_for(lambda: SCENARIOS["slowloris"].engaged(clients, round_), timeout=IO_TIMEOUT)
            response, local = assert_served_promptly(server.server_address, "/tls-info", None,
                                                     context=client_context,
                                                     why=f" beside {SLOW_CLIENTS} slowloris clients over TLS")
            info = json.loads(response.body)
            assert isinstance(info["cipher"], list) and len(info["cipher"]) == 3, info
            assert info["cipher"][1].startswith("TLSv1."), info
            assert info["peercert"] is None  # no client certificate asked for
            assert tuple(info["peername"]) == local
            assert info["alpn"] == "http/1.1"
        assert [c.ended for c in clients] == [None] * SLOW_CLIENTS


# -- refusals: smuggling shapes, deadlines, limits ------------------------------------------------


def long_header_line(size: int) -> bytes:
    return b"X-Long: " + b"a" * size + b"\r\n"


SMUGGLING = {
    # RFC 9112 6.3: both framings at once is how requests are smuggled past a proxy.
    "content-length-and-transfer-encoding": (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n", 400),
    "two-different-content-lengths": (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    # A 1 TiB chunk, far above max_request_body (1 GiB by default).
    "oversized-chunk-size": (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n", 413),
    # One header line longer than the whole head may be (64 KiB by default).
    "header-line-over-the-limit": (
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\n" + long_header_line(70_000) + b"\r\n", 431),
    # More header lines than allowed (100 by default).
    "too-many-headers": (
        b"GET /small.txt HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(120)) + b"\r\n",
        431),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("shape", SMUGGLING)
def test_a_request_smuggling_shape_is_refused_and_the_connection_closed(shape: str, docroot: Path) -> None:
    request, status = SMUGGLING[shape]
    with hosted(files(docroot)) as (reactor, server):
        with connect(server.server_address) as sock:
            sock.sendall(request)
            with sock.makefile("rb") as reader:
                response = read_response(reader)
                assert (response.version, response.status) == ("HTTP/1.1", status), response
                assert_closed(sock, reader)
        assert_served_promptly(server.server_address)


def half_a_head() -> bytes:
    return b"GET /small.txt HTTP/1.1\r\nHost: x\r\nX-Half: "


@pytest.mark.timeout(30)
def test_a_head_that_stops_coming_gets_408_after_request_head_timeout_and_a_close(docroot: Path) -> None:
    with hosted(files(docroot), request_head_timeout=0.5) as (reactor, server):
        with connect(server.server_address) as sock:
            started = time.monotonic()
            sock.sendall(half_a_head())
            with sock.makefile("rb") as reader:
                response = read_response(reader)
                elapsed = time.monotonic() - started
                assert response.status == 408, response
                assert 0.45 <= elapsed < 2.0, elapsed
                assert_closed(sock, reader)
        assert_counted(reactor, server, "read_ahead_refused")
        assert_served_promptly(server.server_address)


@pytest.mark.timeout(30)
def test_a_body_slower_than_its_deadline_gets_408_and_a_close(docroot: Path) -> None:
    # 10 bytes of 10,000 at once, then nothing: fewer than 1024 B/s x 0.5 s in the body's first window.
    with hosted(files(docroot), request_body_timeout=0.5, request_body_min_rate=1024) as (reactor, server):
        with connect(server.server_address) as sock:
            started = time.monotonic()
            sock.sendall(SLOW_BODY_HEAD + b"0123456789")
            with sock.makefile("rb") as reader:
                response = read_response(reader)
                elapsed = time.monotonic() - started
                assert response.status == 408, response
                assert 0.45 <= elapsed < 2.0, elapsed
                assert_closed(sock, reader)


LIMITS = {
    "max_request_head": ({"max_request_head": 1024},
                         b"GET /small.txt HTTP/1.1\r\nHost: x\r\n" + long_header_line(2000) + b"\r\n", 431),
    "max_request_headers": ({"max_request_headers": 10},
                            b"GET /small.txt HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(11))
                            + b"\r\n", 431),
    # Refused from the head alone: the body is never sent.
    "max_request_body": ({"max_request_body": 1000},
                         b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", LIMITS)
def test_a_request_over_a_limit_is_refused_with_its_status_and_a_close(limit: str, docroot: Path) -> None:
    options, request, status = LIMITS[limit]
    with hosted(files(docroot), **options) as (reactor, server):
        with connect(server.server_address) as sock:
            sock.sendall(request)
            with sock.makefile("rb") as reader:
                response = read_response(reader)
                assert response.status == status, response
                assert_closed(sock, reader)
        assert_counted(reactor, server, "read_ahead_refused")
        assert_served_promptly(server.server_address)


@pytest.mark.timeout(30)
def test_a_reader_slower_than_send_min_rate_is_closed_after_send_timeout(docroot: Path) -> None:
    with hosted(files(docroot), sndbuf=SMALL_SNDBUF, send_timeout=0.5, send_min_rate=1024) as (reactor, server):
        with connect(server.server_address, rcvbuf=READER_RCVBUF) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            received = b""
            pace = threading.Event()
            deadline = time.monotonic() + 2.0  # 20 bytes in 2 s, far below 1024 B/s
            with contextlib.suppress(ConnectionResetError):
                while time.monotonic() < deadline and (byte := sock.recv(1)):
                    received += byte
                    pace.wait(PACE_S)
                while chunk := sock.recv(65536):  # then everything still on its way, at once
                    received += chunk
        assert_counted(reactor, server, "send_timeouts")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:100]
    assert len(body) < BIG, "the whole reply arrived: the slow reader was not cut off"


# -- what must keep working ----------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_expect_100_continue_with_curl_gets_the_body_through_at_once(docroot: Path, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        unavailable("curl is not installed")
    body = os.urandom(200 * 1024)
    (tmp_path / "body.bin").write_bytes(body)
    with hosted(files(docroot)) as (reactor, server):
        url = f"http://127.0.0.1:{server.server_address[1]}/upload"
        started = time.monotonic()
        result = subprocess.run([curl, "-sS", "--max-time", "5", "--data-binary", f"@{tmp_path / 'body.bin'}",
                                 "-H", "Expect: 100-continue", url], capture_output=True, timeout=10)
        elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == digest(body)
    # curl waits 1 s for "100 Continue" before it sends the body anyway.
    assert elapsed < 0.9, f"curl took {elapsed:.2f} s: no 100 Continue, it waited for its timeout"


@pytest.mark.timeout(30)
def test_a_3_mib_body_arrives_intact(docroot: Path) -> None:
    body = os.urandom(3 * 1024 * 1024)
    with hosted(files(docroot)) as (reactor, server):
        conn = http.client.HTTPConnection(*server.server_address, timeout=IO_TIMEOUT)
        try:
            conn.request("POST", "/upload", body=body, headers={"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            assert response.status == 200
            assert response.read() == digest(body)
        finally:
            conn.close()


@pytest.mark.timeout(30)
def test_a_256_kib_reply_and_one_above_write_buffer_limit_arrive_byte_for_byte(docroot: Path) -> None:
    # The server's send buffer small and the client's window small: the replies wait in the server
    # (past write_buffer_in_memory, 64 KiB, and for 3 MiB past write_buffer_limit, 1 MiB, where the
    # handler's writes block until the loop has flushed).
    huge = os.urandom(3 * 1024 * 1024)
    (docroot / "huge.bin").write_bytes(huge)
    with hosted(files(docroot), sndbuf=SMALL_SNDBUF) as (reactor, server):
        with connect(server.server_address, rcvbuf=READER_RCVBUF) as sock, sock.makefile("rb") as reader:
            for path, expected in (("/big.bin", big_content()), ("/huge.bin", huge), ("/big.bin", big_content())):
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # on one connection
                response = read_response(reader)
                assert response.status == 200
                assert len(response.body) == len(expected) and response.body == expected, path


@pytest.mark.timeout(30)
def test_five_pipelined_requests_in_one_send_get_five_replies_in_order(docroot: Path) -> None:
    with hosted(files(docroot)) as (reactor, server):
        with connect(server.server_address) as sock, sock.makefile("rb") as reader:
            sock.sendall(b"".join(b"GET /p%d.txt HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(5)))
            for index in range(5):
                response = read_response(reader)
                assert (response.status, response.body) == (200, pipelined_body(index))
            # The connection is kept alive after them.
            sock.sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_response(reader).body == SMALL
            assert_closed(sock, reader)


class TimeoutTransport(xmlrpc.client.Transport):
    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = IO_TIMEOUT
        return conn


@contextlib.contextmanager
def xmlrpc_hosted() -> Iterator[tuple[Reactor, xmlrpc.server.SimpleXMLRPCServer]]:
    with hosted(xmlrpc.server.SimpleXMLRPCRequestHandler,
                server_class=functools.partial(xmlrpc.server.SimpleXMLRPCServer, logRequests=False)) as hosting:
        server = hosting[1]
        server.register_function(lambda text: hashlib.sha256(text.encode()).hexdigest(), "sha256")
        server.register_function(pow)
        yield hosting


def xmlrpc_proxy(server: Any) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(f"http://127.0.0.1:{server.server_address[1]}/RPC2",
                                     transport=TimeoutTransport())


@pytest.mark.timeout(30)
def test_an_xmlrpc_server_works_through_the_reactor() -> None:
    text = "x" * 300_000  # a body bigger than what is kept in memory
    with xmlrpc_hosted() as (reactor, server), xmlrpc_proxy(server) as proxy:
        assert proxy.pow(2, 10) == 1024
        assert proxy.sha256(text) == hashlib.sha256(text.encode()).hexdigest()
        with pytest.raises(xmlrpc.client.Fault):
            proxy.no_such_method()


@pytest.mark.timeout(40)
def test_an_xmlrpc_call_is_served_promptly_while_slowloris_clients_trickle() -> None:
    with xmlrpc_hosted() as (reactor, server), \
            slow_clients(SLOW_CLIENTS, lambda: connect(server.server_address),
                         drip=lambda: slowloris_drip("/RPC2")) as clients, \
            xmlrpc_proxy(server) as proxy:
        wait_for(lambda: SCENARIOS["slowloris"].engaged(clients, 1), timeout=IO_TIMEOUT)
        started = time.monotonic()
        try:
            assert proxy.pow(3, 3) == 27
        except TimeoutError:
            pytest.fail(f"no XML-RPC answer within {IO_TIMEOUT:g} s beside {SLOW_CLIENTS} slowloris clients",
                        pytrace=False)
        assert time.monotonic() - started < PROMPT_S


class QuietWSGIHandler(simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["REQUEST_METHOD"] == "POST":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        out = digest(body)
    else:
        out = f"hello from {environ['PATH_INFO']}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]


@pytest.mark.timeout(30)
def test_a_wsgiref_server_works_through_the_reactor() -> None:
    with hosted(QuietWSGIHandler, server_class=simple_server.WSGIServer) as (reactor, server):
        server.set_app(wsgi_app)
        body = os.urandom(200_000)
        for method, payload, expected in (("GET", None, b"hello from /a/b\n"), ("POST", body, digest(body))):
            conn = http.client.HTTPConnection(*server.server_address, timeout=IO_TIMEOUT)
            try:
                conn.request(method, "/a/b", body=payload)
                response = conn.getresponse()
                assert response.status == 200
                assert response.read() == expected
            finally:
                conn.close()


# -- slowhttptest, 600 connections, against a server in a fresh interpreter ----------------------------

SLOWHTTPTEST = shutil.which("slowhttptest") or "/usr/bin/slowhttptest"
ATTACKERS = 600
#: What every run shares: 600 connections opened at 200/s, slowhttptest's probe given 3 s, 20 s.
COMMON = ["-c", str(ATTACKERS), "-r", "200", "-p", "3", "-l", "20"]
ATTACKS = {
    # A header line every 5 s (slowloris).
    "slowloris": (["-H", "-i", "5"], "/small.txt"),
    # A POST announcing 4096 bytes, its body coming a few bytes every 5 s (R-U-Dead-Yet), to do_POST.
    "slow-body": (["-B", "-i", "5"], "/upload"),
    # Windows of 10-20 bytes, 32 bytes read a second, of a 256 KiB reply.
    "slow-read": (["-X", "-k", "1", "-n", "1", "-w", "10", "-y", "20", "-z", "32"], "/big.bin"),
}
DISPATCHES = {
    "ThreadPool(8)": ["--dispatch", "threadpool", "--threads", "8"],
    "Prefork(2x4)": ["--dispatch", "prefork", "--workers", "2", "--threads", "4"],
}
AVAILABLE_SHARE = 0.99


def unavailable(reason: str) -> None:
    """Skip for lack of a tool; in CI (CI=true) fail instead: .ci/run installs it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run this test (.ci/run installs it)", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Second:
    second: int
    closed: int
    pending: int
    connected: int
    available: bool


def read_slowhttptest_csv(path: Path) -> list[Second]:
    """slowhttptest's CSV: ``Seconds,Closed,Pending,Connected,Service Available``, one row a second;
    the last column is the connection count when its probe was answered in time, 0 when not."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert [h.strip().lower() for h in rows[0]] == ["seconds", "closed", "pending", "connected",
                                                    "service available"], rows[0]
    return [Second(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]) > 0) for r in rows[1:] if r]


def test_the_csv_reader_reads_slowhttptest_s_columns(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("Seconds,Closed,Pending,Connected,Service Available\n"
                                    "0,0,1,0,600\n1,0,1,182,600\n2,3,0,597,0\n")
    assert read_slowhttptest_csv(tmp_path / "r.csv") == [
        Second(0, 0, 1, 0, True), Second(1, 0, 1, 182, True), Second(2, 3, 0, 597, False)]


@contextlib.contextmanager
def http_server_process(docroot: Path, *args: str) -> Iterator[int]:
    """tests/slow_scripts/http_server.py in a fresh interpreter; yields its port, stops it after."""
    with spawn_python(SCRIPTS / "http_server.py", "--docroot", str(docroot), *args) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = proc.stdout.readline()
            assert line.startswith("ready "), f"no ready line: {line!r}\n{proc.stderr.read()}"
            yield int(line.split()[1])
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            assert status == 0, proc.stderr.read()


@pytest.mark.slow  # about 25 s each; make test runs them (nothing deselects "slow")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("dispatch", DISPATCHES)
@pytest.mark.parametrize("attack", ATTACKS)
def test_slowhttptest_leaves_the_service_available(attack: str, dispatch: str, docroot: Path,
                                                   tmp_path: Path) -> None:
    if not os.access(SLOWHTTPTEST, os.X_OK):
        unavailable("slowhttptest is not installed (Debian package slowhttptest)")
    mode, path = ATTACKS[attack]
    server_args = DISPATCHES[dispatch] + (["--sndbuf", str(SMALL_SNDBUF)] if attack == "slow-read" else [])
    with http_server_process(docroot, *server_args) as port:
        result = subprocess.run([SLOWHTTPTEST, *mode, *COMMON, "-u", f"http://127.0.0.1:{port}{path}",
                                 "-g", "-o", str(tmp_path / "report")],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=45)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    seconds = read_slowhttptest_csv(tmp_path / "report.csv")
    table = "\n".join(f"{s.second:>3} s: connected {s.connected:>3}, closed {s.closed:>3}, pending {s.pending:>3}, "
                      f"{'available' if s.available else 'UNAVAILABLE'}" for s in seconds)
    # The attack took place: the server held (nearly) all of its connections at some point.
    assert max(s.connected for s in seconds) >= 0.9 * ATTACKERS, table
    share = sum(s.available for s in seconds) / len(seconds)
    assert share >= AVAILABLE_SHARE, (f"slowhttptest {attack} on {dispatch}: service available {share:.0%} of "
                                      f"{len(seconds)} s\n{table}")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_slowhttptest_check_passes_a_thread_per_connection_server(docroot: Path, tmp_path: Path) -> None:
    """The control: the same harness (slow read, the subtlest) against the stdlib's ThreadingHTTPServer,
    which no slow client starves, finds the service available: a failure above is the server's."""
    if not os.access(SLOWHTTPTEST, os.X_OK):
        unavailable("slowhttptest is not installed (Debian package slowhttptest)")
    mode, path = ATTACKS["slow-read"]
    with http_server_process(docroot, "--dispatch", "stdlib-threading", "--sndbuf", str(SMALL_SNDBUF)) as port:
        result = subprocess.run([SLOWHTTPTEST, *mode, "-c", str(ATTACKERS), "-r", "200", "-p", "3", "-l", "8",
                                 "-u", f"http://127.0.0.1:{port}{path}", "-g", "-o", str(tmp_path / "report")],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    seconds = read_slowhttptest_csv(tmp_path / "report.csv")
    assert max(s.connected for s in seconds) >= 0.9 * ATTACKERS
    assert all(s.available for s in seconds), seconds


# -- the bench's slow-clients cell, end to end and small ------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_bench_slow_clients_cell_runs_end_to_end_and_reports_its_figures(tmp_path: Path) -> None:
    # 20 attackers and 1 s runs: the figures' shape, not their values (no speed is asserted).
    result = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--workloads", "slow-clients",
                             "--contenders", "reactor-threadpool", "--slow-attackers", "20", "--duration", "0.5",
                             "--warmup", "0.1", "--pairs", "1", "--python-loadgen", "--out", str(tmp_path),
                             "--name", "slow"], capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "slow.json").read_text())
    (cell,) = results["cells"]
    assert cell["status"] == "ok", cell
    summary = cell["summary"]
    assert summary["attackers"] == 20
    servers = {row["server"]: row for row in summary["servers"]}
    expected = {"reactor ThreadPool(8)", "stdlib ThreadingHTTPServer", "waitress (8 threads)"}
    assert set(servers) == expected
    for name, row in servers.items():
        if row["status"] != "ok":
            assert name.startswith("waitress") and "not installed" in row["reason"], row
            continue
        assert row["unattacked_req_per_s"] > 0, row
        assert row["attacked_req_per_s"] >= 0 and row["ratio"] == pytest.approx(
            row["attacked_req_per_s"] / row["unattacked_req_per_s"], rel=1e-3), row
        assert row["slowloris_held"] >= 1 and row["readers_held"] >= 1, row
        assert row["rss_per_slowloris_kib"] is not None and row["rss_per_reader_kib"] is not None, row
    markdown = (tmp_path / "slow.md").read_text()
    assert "attacked / unattacked" in markdown
    assert "reactor ThreadPool(8)" in markdown and "waitress (8 threads)" in markdown
