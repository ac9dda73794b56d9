"""Parking keep-alive connections between requests (``reactor.keepalive``).

A connection whose handler exposes a request boundary (an unmodified HTTP/1.1
``http.server`` handler, or a ``RequestLoop`` handler) waits in the loop
between its requests, holding no thread: so idle keep-alive clients never
starve a pool or freeze an inline reactor, a pipelined request is never
stranded in a buffer, and the handler's hooks run as socketserver runs them.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reactor import Inline, Reactor, ThreadPool, socketserver
from reactor.keepalive import RequestLoop, parking_factory
from support import QuietHTTPHandler, ipv6_available, reactor_thread, wait_for

CLIENT_TIMEOUT = 5.0


class KeepAliveHTTP(QuietHTTPHandler):
    protocol_version = "HTTP/1.1"


def get(conn: http.client.HTTPConnection, path: str = "/") -> bytes:
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 200
    return response.read()


@contextlib.contextmanager
def clients(address: Any, count: int) -> Iterator[list[http.client.HTTPConnection]]:
    conns = [http.client.HTTPConnection(address[0], address[1], timeout=CLIENT_TIMEOUT) for _ in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


@contextlib.contextmanager
def hosted_http(handler: Any = KeepAliveHTTP, dispatch: Any = None, **options: Any
                ) -> Iterator[tuple[Reactor, http.server.HTTPServer]]:
    reactor = Reactor()
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    try:
        reactor.add_server(server, dispatch, **options)
        with reactor_thread(reactor):
            yield reactor, server
    finally:
        server.server_close()


def udp_echo(reactor: Reactor) -> socketserver.UDPServer:
    class Echo(socketserver.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    server = socketserver.UDPServer(("127.0.0.1", 0), Echo)
    reactor.add_server(server)
    return server


def udp_round_trip(address: Any) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.sendto(b"ping", address)
        return sock.recv(100)


# ------------------------------------------------------------------ idle clients hold nothing

@pytest.mark.parametrize("dispatch", [lambda: ThreadPool(2, 0), lambda: Inline()], ids=["ThreadPool(2,0)", "Inline"])
def test_idle_keepalive_clients_hold_no_worker_and_each_is_served_again(dispatch: Any) -> None:
    with hosted_http(dispatch=dispatch()) as (reactor, server):
        with clients(server.server_address, 20) as idle:
            for conn in idle:
                assert get(conn) == b"ok\n"
            wait_for(lambda: reactor.server_stats(server)["parked"] == 20, timeout=CLIENT_TIMEOUT,
                     message="20 idle keep-alive connections parked")
            with clients(server.server_address, 1) as (fresh,):
                assert get(fresh) == b"ok\n"  # served although 20 clients hold connections
            for conn in idle:
                assert get(conn) == b"ok\n"  # the same connections, served again
                assert conn.sock is not None
            stats = reactor.server_stats(server)
            assert stats["requests"] == 21
            # 20 second requests, and maybe the fresh client's close, read by its handler
            assert stats["resumed"] in (20, 21)
            assert stats["dispatched"] == stats["requests"] + stats["resumed"]


def test_an_idle_keepalive_client_does_not_freeze_an_inline_reactor_for_other_servers() -> None:
    with hosted_http(dispatch=Inline()) as (reactor, server):
        echo = udp_echo(reactor)
        try:
            with clients(server.server_address, 3) as idle:
                for conn in idle:
                    get(conn)
                assert udp_round_trip(echo.server_address) == b"ping"
        finally:
            reactor.call_soon_threadsafe(reactor.remove_server, echo)
            wait_for(lambda: echo not in reactor.servers, timeout=CLIENT_TIMEOUT)
            echo.server_close()


def test_parking_off_keeps_the_stdlib_behaviour_a_connection_holds_its_worker() -> None:
    with hosted_http(dispatch=ThreadPool(1, 0), keepalive_timeout=0) as (reactor, server):
        with clients(server.server_address, 1) as (first,):
            get(first)
            with socket.create_connection(server.server_address, timeout=0.5) as second:
                second.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                with pytest.raises(TimeoutError):
                    second.recv(100)  # the only worker is still waiting on the first client
            assert reactor.server_stats(server)["parked"] == 0


# ------------------------------------------------------------------ nothing stranded

def test_pipelined_requests_in_the_handlers_buffer_are_served_at_once() -> None:
    with hosted_http(dispatch=ThreadPool(2)) as (reactor, server):
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /last HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 4


def test_a_request_sent_right_after_a_reply_is_not_lost_while_the_connection_parks() -> None:
    with hosted_http(dispatch=ThreadPool(1)) as (reactor, server):
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
            reader = sock.makefile("rb")
            for _ in range(50):  # each request races the server parking the connection
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert reader.readline() == b"HTTP/1.1 200 OK\r\n"
                length = 0
                while (line := reader.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                assert reader.read(length) == b"ok\n"
            reader.close()


# ------------------------------------------------------------------ idle deadline and leaving

class RecordingLoop(RequestLoop, socketserver.StreamRequestHandler):
    """A line protocol through the documented hook; records its hooks on the server."""

    def setup(self) -> None:
        super().setup()
        self.server.events.append("setup")  # type: ignore[attr-defined]

    def handle_one_request(self) -> None:
        line = self.rfile.readline()
        self.server.events.append(f"request:{line.strip().decode()}")  # type: ignore[attr-defined]
        if not line or line == b"quit\n":
            self.close_connection = True
            return
        if line == b"boom\n":
            raise ValueError("boom")
        self.wfile.write(line.upper())

    def finish(self) -> None:
        self.server.events.append("finish")  # type: ignore[attr-defined]
        super().finish()


class RecordingServer(socketserver.TCPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[str] = []
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.events.append("verify_request")
        return True

    def shutdown_request(self, request: Any) -> None:
        self.events.append("shutdown_request")
        super().shutdown_request(request)

    def close_request(self, request: Any) -> None:
        self.events.append("close_request")
        super().close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.events.append("handle_error")


@contextlib.contextmanager
def hosted_lines(dispatch: Any, **options: Any) -> Iterator[tuple[Reactor, RecordingServer]]:
    reactor = Reactor()
    server = RecordingServer(("127.0.0.1", 0), RecordingLoop)
    try:
        reactor.add_server(server, dispatch, **options)
        with reactor_thread(reactor):
            yield reactor, server
    finally:
        server.server_close()


def lines_client(server: Any) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)


@pytest.mark.parametrize("dispatch", [lambda: ThreadPool(1), lambda: Inline()], ids=["ThreadPool(1)", "Inline"])
def test_the_hooks_run_once_per_connection_across_parked_requests(dispatch: Any) -> None:
    with hosted_lines(dispatch()) as (reactor, server):
        with lines_client(server) as sock, lines_client(server) as other:
            reader = sock.makefile("rb")
            for word in (b"a", b"b", b"c"):
                sock.sendall(word + b"\n")
                assert reader.readline() == word.upper() + b"\n"
                other.sendall(b"x\n")  # another connection takes turns on the same worker
                assert other.recv(10) == b"X\n"
            sock.sendall(b"quit\n")
            assert reader.read() == b""
            reader.close()
            wait_for(lambda: "close_request" in server.events, timeout=CLIENT_TIMEOUT)
    first = [event for event in server.events if event != "request:x"]
    assert first[:first.index("close_request") + 1] == [
        "verify_request", "setup", "request:a", "verify_request", "setup",
        "request:b", "request:c", "request:quit", "finish", "shutdown_request", "close_request",
    ]


def test_a_handler_that_raises_on_a_resumed_request_is_finished_reported_and_closed() -> None:
    with hosted_lines(ThreadPool(1)) as (reactor, server):
        with lines_client(server) as sock:
            sock.sendall(b"a\n")
            assert sock.recv(10) == b"A\n"
            wait_for(lambda: reactor.server_stats(server)["parked"] == 1, timeout=CLIENT_TIMEOUT)
            sock.sendall(b"boom\n")
            assert sock.recv(10) == b""
        wait_for(lambda: "close_request" in server.events, timeout=CLIENT_TIMEOUT)
        assert server.events[-4:] == ["finish", "handle_error", "shutdown_request", "close_request"]
        with lines_client(server) as sock:  # and the server goes on
            sock.sendall(b"z\n")
            assert sock.recv(10) == b"Z\n"


def test_a_connection_idle_past_keepalive_timeout_is_finished_and_closed() -> None:
    with hosted_lines(ThreadPool(1), keepalive_timeout=0.2) as (reactor, server):
        with lines_client(server) as sock:
            sock.sendall(b"a\n")
            assert sock.recv(10) == b"A\n"
            assert sock.recv(10) == b""  # closed by the server once idle for 0.2 s
        wait_for(lambda: "close_request" in server.events, timeout=CLIENT_TIMEOUT)
        assert server.events[-3:] == ["finish", "shutdown_request", "close_request"]
        stats = reactor.server_stats(server)
        assert (stats["keepalive_expired"], stats["parked"]) == (1, 0)


@pytest.mark.parametrize("dispatch", [lambda: ThreadPool(2), lambda: Inline()], ids=["ThreadPool(2)", "Inline"])
def test_leaving_closes_parked_connections_at_once(dispatch: Any) -> None:
    reactor = Reactor()
    server = RecordingServer(("127.0.0.1", 0), RecordingLoop)
    try:
        reactor.add_server(server, dispatch(), keepalive_timeout=60)
        with reactor_thread(reactor, close=False), lines_client(server) as sock:
            sock.sendall(b"a\n")
            assert sock.recv(10) == b"A\n"
            wait_for(lambda: reactor.server_stats(server)["parked"] == 1, timeout=CLIENT_TIMEOUT)
            reactor.call_soon_threadsafe(reactor.remove_server, server)
            assert sock.recv(10) == b""  # not after keepalive_timeout=60
        assert server.events[-3:] == ["finish", "shutdown_request", "close_request"]
    finally:
        reactor.close()
        server.server_close()


class UpperLoop(RequestLoop, socketserver.StreamRequestHandler):
    def handle_one_request(self) -> None:
        line = self.rfile.readline()
        if not line:
            self.close_connection = True
            return
        self.wfile.write(line.upper())


@pytest.mark.parametrize("family", ["tcp4", "tcp6", "unix"])
def test_connections_park_on_every_stream_family(family: str, unix_dir: str) -> None:
    reactor = Reactor()
    if family == "unix":
        server: Any = socketserver.UnixStreamServer(os.path.join(unix_dir, "s.sock"), UpperLoop)
    else:
        if family == "tcp6" and not ipv6_available():
            pytest.fail("IPv6 loopback is needed") if os.environ.get("CI") else pytest.skip("no IPv6")
        server = socketserver.TCPServer(("127.0.0.1" if family == "tcp4" else "::1", 0), UpperLoop)
    try:
        reactor.add_server(server, ThreadPool(1, 0))
        with reactor_thread(reactor):
            address = server.server_address
            sockets = [socket.socket(server.address_family, socket.SOCK_STREAM) for _ in range(3)]
            with contextlib.ExitStack() as stack:
                for sock in sockets:
                    stack.enter_context(sock)
                    sock.settimeout(CLIENT_TIMEOUT)
                    sock.connect(address)
                for round_ in range(3):  # three connections take turns on one worker
                    for index, sock in enumerate(sockets):
                        sock.sendall(f"r{round_}c{index}\n".encode())
                        assert sock.recv(100) == f"R{round_}C{index}\n".encode()
                assert reactor.server_stats(server)["resumed"] >= 6
    finally:
        server.server_close()


# ------------------------------------------------------------------ which handlers park

def test_only_handlers_with_a_known_request_loop_park() -> None:
    class OwnLoop(KeepAliveHTTP):
        def handle(self) -> None:
            super().handle()

    assert parking_factory(KeepAliveHTTP) is not None
    assert parking_factory(RecordingLoop) is not None
    assert parking_factory(OwnLoop) is None  # overrides handle(): keeps its connection
    assert parking_factory(socketserver.StreamRequestHandler) is None
    assert parking_factory(lambda *args: None) is None
    variant = parking_factory(functools.partial(http.server.SimpleHTTPRequestHandler, directory="/"))
    assert isinstance(variant, functools.partial) and variant.keywords == {"directory": "/"}
    assert issubclass(variant.func, http.server.SimpleHTTPRequestHandler)
    assert variant.func.__name__ == "SimpleHTTPRequestHandler"


def test_a_threading_server_brings_its_own_concurrency_and_does_not_park() -> None:
    reactor = Reactor()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHTTP)
    server.daemon_threads = True
    try:
        reactor.add_server(server)
        with reactor_thread(reactor), clients(server.server_address, 2) as conns:
            for conn in conns:
                assert get(conn) == b"ok\n"
            assert reactor.server_stats(server)["parked"] == 0
    finally:
        server.server_close()


def test_simple_http_request_handler_through_a_partial_serves_files_while_parking(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_bytes(b"x" * 5000)

    class Files(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with hosted_http(functools.partial(Files, directory=str(tmp_path)), ThreadPool(1)) as (reactor, server):
        with clients(server.server_address, 5) as conns:
            for _ in range(2):
                for conn in conns:
                    assert get(conn, "/file.txt") == b"x" * 5000
            assert reactor.server_stats(server)["resumed"] >= 5


def test_a_standalone_compat_server_parks_only_when_given_a_dispatch() -> None:
    for dispatch, expect_parked in ((None, False), (ThreadPool(1), True)):
        server = RecordingServer(("127.0.0.1", 0), RecordingLoop, dispatch=dispatch)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            with lines_client(server) as first:
                first.sendall(b"a\n")
                assert first.recv(10) == b"A\n"
                with lines_client(server) as second:
                    second.sendall(b"b\n")
                    second.settimeout(0.5 if not expect_parked else CLIENT_TIMEOUT)
                    if expect_parked:
                        assert second.recv(10) == b"B\n"
                    else:
                        with pytest.raises(TimeoutError):
                            second.recv(10)  # the stdlib's: one connection at a time
        finally:
            server.shutdown()
            thread.join(CLIENT_TIMEOUT)
            server.server_close()


# ------------------------------------------------------------------ TLS

def test_https_keepalive_connections_park_and_pipelined_tls_requests_are_not_stranded(pki: Any) -> None:
    with hosted_http(dispatch=ThreadPool(1), ssl_context=pki.server_context()) as (reactor, server):
        context = pki.client_context()
        conns = [http.client.HTTPSConnection("localhost", server.server_address[1], timeout=CLIENT_TIMEOUT,
                                             context=context) for _ in range(3)]
        try:
            for _ in range(2):
                for conn in conns:
                    assert get(conn) == b"ok\n"
            assert reactor.server_stats(server)["resumed"] >= 3
        finally:
            for conn in conns:
                conn.close()
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"GET / HTTP/1.1\r\nHost: x\r\n"
                            b"Connection: close\r\n\r\n")
                data = b""
                with contextlib.suppress(ssl.SSLEOFError):
                    while chunk := tls.recv(65536):
                        data += chunk
        assert data.count(b"HTTP/1.1 200 OK") == 3


# ------------------------------------------------------------------ the scenario, in a fresh process

IDLE_CLIENTS_SCRIPT = r"""
import http.server, json, signal, sys
from reactor import Inline, Prefork, Reactor, ThreadPool, socketserver

class Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *args):
        pass

class Echo(socketserver.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read())

reactor = Reactor()
servers = {}
for name, dispatch in (("inline", Inline()), ("threads", ThreadPool(2, 0)), ("prefork", Prefork(1))):
    servers[name] = http.server.HTTPServer(("127.0.0.1", 0), Hello)
    # As the README advises for servers sharing a reactor: idle connects wait in admission.
    reactor.add_server(servers[name], dispatch, wait_for_data=60, io_timeout=60)
servers["udp"] = socketserver.UDPServer(("127.0.0.1", 0), Echo)
reactor.add_server(servers["udp"])
reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
print(json.dumps({name: server.server_address for name, server in servers.items()}), flush=True)
reactor.serve_forever()
reactor.close()
for server in servers.values():
    server.server_close()
print("stopped", flush=True)
"""


def test_idle_clients_of_inline_threadpool_and_prefork_servers_sharing_a_reactor_hold_nothing() -> None:
    import json
    import signal

    from support import spawn_python

    with spawn_python(IDLE_CLIENTS_SCRIPT) as proc, contextlib.ExitStack() as stack:
        assert proc.stdout is not None
        addresses = {name: tuple(address) for name, address in json.loads(proc.stdout.readline()).items()}
        http_servers = [addresses[name] for name in ("inline", "threads", "prefork")]
        for address in http_servers:
            for _ in range(10):  # keep-alive clients, idle after one request
                conn = stack.enter_context(contextlib.closing(
                    http.client.HTTPConnection(*address, timeout=10)))
                assert get(conn) == b"ok\n"
            for _ in range(10):  # clients that connect and say nothing
                stack.enter_context(socket.create_connection(address, timeout=CLIENT_TIMEOUT))
        assert udp_round_trip(addresses["udp"]) == b"ping"
        for address in http_servers:
            with clients(address, 1) as (fresh,):
                assert get(fresh) == b"ok\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.read() == "stopped\n"


PREFORK_RECYCLING_SCRIPT = r"""
import http.server, json, os, signal, threading
from reactor import Prefork, Reactor

class WhoAmI(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps([os.getpid(), threading.current_thread().name]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

reactor = Reactor()
server = http.server.HTTPServer(("127.0.0.1", 0), WhoAmI)
reactor.add_server(server, Prefork(1, threads=2, max_requests=4), keepalive_timeout=60)
reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
print(json.dumps(server.server_address), flush=True)
reactor.serve_forever()
reactor.close()
server.server_close()
"""


def test_prefork_workers_run_parked_connections_on_their_threads_and_count_them_for_max_requests() -> None:
    import json
    import signal

    from support import spawn_python

    with spawn_python(PREFORK_RECYCLING_SCRIPT) as proc:
        assert proc.stdout is not None
        address = tuple(json.loads(proc.stdout.readline()))
        try:
            with clients(address, 1) as (conn,):
                answers = [json.loads(get(conn)) for _ in range(4)]
                pids = {pid for pid, _ in answers}
                assert len(pids) == 1
                assert all(thread != "MainThread" for _, thread in answers), answers
                # The 4th request recycled the worker: its parked connection was closed.
                with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
                    get(conn)
            with clients(address, 1) as (conn,):
                (pid, _), = [json.loads(get(conn))]
                assert pid not in pids  # a new worker
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, proc.stderr.read() if proc.stderr else ""


def test_a_new_client_is_taken_while_parked_connections_requests_fill_the_pool() -> None:
    gate = threading.Event()

    class Gated(KeepAliveHTTP):
        def reply(self) -> bytes:
            if self.path == "/gate":
                gate.wait(60)  # set by the test (at the latest when it ends)
            return b"ok\n"

    with hosted_http(Gated, ThreadPool(2, 2)) as (reactor, server), contextlib.ExitStack() as release:
        release.callback(gate.set)
        with clients(server.server_address, 12) as conns:
            for conn in conns:
                get(conn)
            wait_for(lambda: reactor.server_stats(server)["parked"] == 12, timeout=CLIENT_TIMEOUT)
            for conn in conns[:2]:  # both workers held
                conn.request("GET", "/gate")
            for conn in conns[2:]:  # ten next requests of parked connections wait for a worker
                conn.request("GET", "/")
            wait_for(lambda: reactor.server_stats(server)["resumed"] == 12, timeout=CLIENT_TIMEOUT)
            with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as fresh:
                fresh.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                # Taken although the pool has 12 requests in flight for its capacity of 4:
                # it waits in the same FIFO as the parked connections' requests, not in the backlog.
                wait_for(lambda: reactor.server_stats(server)["requests"] == 13, timeout=CLIENT_TIMEOUT)
                gate.set()
                assert fresh.makefile("rb").readline() == b"HTTP/1.1 200 OK\r\n"
            for conn in conns:
                response = conn.getresponse()
                assert response.status == 200
                response.read()
