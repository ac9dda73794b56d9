"""Admission: access rules, connection limits, first-bytes and I/O deadlines, before any hook runs.

Real sockets on loopback and Unix paths. Every refusal is checked from the
client's side (closed at once, never served), in the counters of
``Reactor.server_stats()``, and against a second server on the same reactor
that must keep answering meanwhile.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import Reactor, ThreadPool, socketserver
from pki import Pki
from reactor.admission import request_info
from support import QuietHTTPHandler, ipv6_available, reactor_thread, run_python, wait_for

CURL = shutil.which("curl")

CLIENT_TIMEOUT = 5.0
JOIN_TIMEOUT = 10.0


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(line.upper())


class Held(socketserver.StreamRequestHandler):
    """Answers once the test releases it; tells the test it runs."""

    def handle(self) -> None:
        self.rfile.readline()
        self.server.running.release()  # type: ignore[attr-defined]
        if self.server.release.wait(JOIN_TIMEOUT):  # type: ignore[attr-defined]
            self.wfile.write(b"released\n")


def connect(address: Any, source: str | None = None) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(address)
        return sock
    return socket.create_connection(address[:2], timeout=CLIENT_TIMEOUT,
                                    source_address=(source, 0) if source else None)


def ask(address: Any, line: bytes = b"ping\n", source: str | None = None) -> bytes:
    with connect(address, source) as sock:
        sock.sendall(line)
        return sock.makefile("rb").readline()


def refused(address: Any, source: str | None = None) -> bool:
    """True when the server closes the connection without serving it."""
    with connect(address, source) as sock:
        try:
            sock.sendall(b"ping\n")
            return sock.recv(100) == b""
        except ConnectionError:
            return True


@pytest.fixture
def reactor_with_witness() -> Iterator[tuple[Reactor, Any]]:
    """A reactor with an Inline echo server that must keep answering."""
    reactor = Reactor()
    witness = socketserver.TCPServer(("127.0.0.1", 0), Echo)
    reactor.add_server(witness)
    yield reactor, witness


# ---------------------------------------------------------------- access rules

FAMILIES = ["tcp4", "tcp6", "unix"]


def make_server(family: str, unix_dir: str, handler: Any = Echo) -> Any:
    if family == "tcp4":
        return socketserver.TCPServer(("127.0.0.1", 0), handler)
    if family == "tcp6":
        if not ipv6_available():
            pytest.fail("IPv6 loopback is needed for this test") if os.environ.get("CI") else pytest.skip("no IPv6")
        return socketserver.TCPServer(("::1", 0), handler)
    return socketserver.UnixStreamServer(os.path.join(unix_dir, "s.sock"), handler)


@pytest.mark.parametrize("family", FAMILIES)
def test_deny_refuses_and_counts_while_others_are_served(family: str, unix_dir: str,
                                                         reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    server = make_server(family, unix_dir)
    deny = {"tcp4": ["127.0.0.0/8"], "tcp6": ["::1/128"], "unix": [f"uid:{os.getuid()}"]}[family]
    reactor.add_server(server, allow=(), deny=deny)
    with reactor_thread(reactor):
        for _ in range(3):
            assert refused(server.server_address)
            assert ask(witness.server_address) == b"PING\n"
        wait_for(lambda: reactor.server_stats(server)["refused_by_rule"] == 3)
        assert reactor.server_stats(server)["admitted"] == 0
    server.server_close()


@pytest.mark.parametrize("family", FAMILIES)
def test_allow_admits_the_listed_and_refuses_everyone_else(family: str, unix_dir: str,
                                                           reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, _ = reactor_with_witness
    allowed = make_server(family, unix_dir)
    other_dir = os.path.join(unix_dir, "other")
    os.mkdir(other_dir)
    not_allowed = make_server(family, other_dir)
    yes = {"tcp4": ["127.0.0.1"], "tcp6": ["::1/128"], "unix": [f"uid:{os.getuid()}"]}[family]
    no = {"tcp4": ["10.0.0.0/8"], "tcp6": ["2001:db8::/32"], "unix": [f"uid:{os.getuid() + 1}"]}[family]
    reactor.add_server(allowed, allow=yes)
    reactor.add_server(not_allowed, allow=no)
    with reactor_thread(reactor):
        assert ask(allowed.server_address) == b"PING\n"
        assert refused(not_allowed.server_address)
        wait_for(lambda: reactor.server_stats(not_allowed)["refused_by_rule"] == 1)
        assert reactor.server_stats(allowed)["admitted"] == 1
    allowed.server_close()
    not_allowed.server_close()


def test_rules_that_cannot_apply_to_the_family_are_refused_at_add_server(unix_dir: str) -> None:
    with Reactor() as reactor:
        tcp = socketserver.TCPServer(("127.0.0.1", 0), Echo)
        try:
            with pytest.raises(ValueError):
                reactor.add_server(tcp, allow=["uid:0"])
            assert tcp not in reactor.servers
            reactor.add_server(tcp, allow=["127.0.0.1"])  # still usable
        finally:
            reactor.remove_server(tcp)
            tcp.server_close()


def test_connection_options_on_a_datagram_server_are_refused() -> None:
    with Reactor() as reactor:
        udp = socketserver.UDPServer(("127.0.0.1", 0), socketserver.DatagramRequestHandler)
        try:
            with pytest.raises(ValueError, match="stream servers"):
                reactor.add_server(udp, max_connections=3)
            assert udp not in reactor.servers
            assert not reactor.is_claimed(udp.fileno())
        finally:
            udp.server_close()


# ---------------------------------------------------------------- limits

def test_max_connections_pauses_the_listener_and_the_backlog_holds_the_rest(
        reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    server = socketserver.TCPServer(("127.0.0.1", 0), Held)
    server.running = threading.Semaphore(0)  # type: ignore[attr-defined]
    server.release = threading.Event()  # type: ignore[attr-defined]
    reactor.add_server(server, dispatch=ThreadPool(4), max_connections=2)
    with reactor_thread(reactor), contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(server.server_address)) for _ in range(3)]
        for sock in held:
            sock.sendall(b"hold\n")
        for _ in range(2):
            assert server.running.acquire(timeout=JOIN_TIMEOUT)  # type: ignore[attr-defined]
        wait_for(lambda: reactor.server_stats(server)["open"] == 2)
        assert not server.running.acquire(timeout=0.2), "a third connection was admitted"  # type: ignore[attr-defined]
        assert ask(witness.server_address) == b"PING\n"
        assert reactor.server_stats(server)["refused_by_limit"] == 0, "the cap queues in the kernel, not refuses"
        server.release.set()  # type: ignore[attr-defined]
        for sock in held:
            assert sock.makefile("rb").readline() == b"released\n"
        wait_for(lambda: reactor.server_stats(server)["open"] == 0)
        assert reactor.server_stats(server)["admitted"] == 3
    server.server_close()


def test_max_connections_per_ip_refuses_the_extra_connection_of_one_address(
        reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    server = socketserver.TCPServer(("127.0.0.1", 0), Held)
    server.running = threading.Semaphore(0)  # type: ignore[attr-defined]
    server.release = threading.Event()  # type: ignore[attr-defined]
    reactor.add_server(server, dispatch=ThreadPool(4), max_connections_per_ip=1)
    with reactor_thread(reactor), connect(server.server_address, "127.0.0.1") as first:
        first.sendall(b"hold\n")
        assert server.running.acquire(timeout=JOIN_TIMEOUT)  # type: ignore[attr-defined]
        assert refused(server.server_address, "127.0.0.1")
        with connect(server.server_address, "127.0.0.2") as other_ip:  # another client address
            other_ip.sendall(b"hold\n")
            assert server.running.acquire(timeout=JOIN_TIMEOUT)  # type: ignore[attr-defined]
            server.release.set()  # type: ignore[attr-defined]
            assert other_ip.makefile("rb").readline() == b"released\n"
        assert first.makefile("rb").readline() == b"released\n"
        assert reactor.server_stats(server)["refused_by_limit"] == 1
        assert ask(witness.server_address) == b"PING\n"
    server.server_close()


# ---------------------------------------------------------------- first bytes and I/O deadlines

@pytest.mark.parametrize("idle_clients", [1, 20])
def test_idle_connects_cannot_freeze_an_inline_reactor_with_wait_for_data(
        idle_clients: int, reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    server = socketserver.TCPServer(("127.0.0.1", 0), Echo)
    reactor.add_server(server, wait_for_data=0.5)  # Inline, as the README's one-thread pattern
    with reactor_thread(reactor), contextlib.ExitStack() as stack:
        idle = [stack.enter_context(connect(server.server_address)) for _ in range(idle_clients)]
        # Meanwhile both servers answer at once: nobody waits for the silent ones.
        assert ask(witness.server_address) == b"PING\n"
        assert ask(server.server_address) == b"PING\n"
        for sock in idle:
            assert sock.recv(10) == b""  # closed by the deadline, never handed to a handler
        wait_for(lambda: reactor.server_stats(server)["timeouts"] == idle_clients)
        assert reactor.server_stats(server)["admitted"] == 1


def test_a_client_that_speaks_late_but_within_wait_for_data_is_served(
        reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, _ = reactor_with_witness
    server = socketserver.TCPServer(("127.0.0.1", 0), Echo)
    reactor.add_server(server, wait_for_data=JOIN_TIMEOUT)
    with reactor_thread(reactor), connect(server.server_address) as sock:
        wait_for(lambda: reactor.server_stats(server)["admitting"] == 1)
        sock.sendall(b"late\n")
        assert sock.makefile("rb").readline() == b"LATE\n"


def test_io_timeout_ends_a_handler_waiting_on_a_stalled_client(
        reactor_with_witness: tuple[Reactor, Any], capfd: pytest.CaptureFixture[str]) -> None:
    reactor, witness = reactor_with_witness
    server = socketserver.TCPServer(("127.0.0.1", 0), Echo)
    reactor.add_server(server, dispatch=ThreadPool(1), io_timeout=0.3)
    with reactor_thread(reactor), connect(server.server_address) as stalled:
        stalled.sendall(b"half a li")  # and nothing more: readline() waits for the rest
        assert stalled.recv(10) == b""  # the handler gave up and the connection was closed
        wait_for(lambda: reactor.server_stats(server).get("io_timeouts") == 1)
        assert ask(server.server_address) == b"PING\n"  # the only worker is free again
        assert ask(witness.server_address) == b"PING\n"
    assert "Traceback" not in capfd.readouterr().err
    server.server_close()


class TimeoutProbe(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(f"{self.connection.gettimeout()}\n".encode())


@pytest.mark.parametrize("dispatch, io_timeout, expected", [
    (None, None, b"30.0\n"),  # inline: a silent client would stop the loop, so 30 s by default
    (None, 0, b"None\n"),  # 0: blocking, as asked
    (None, 2.5, b"2.5\n"),
    ("pool", None, b"None\n"),  # a worker thread: blocking, as socketserver
], ids=["inline-default", "inline-off", "inline-given", "pool-default"])
def test_io_timeout_defaults_to_30_s_only_for_handlers_in_the_loops_thread(
        dispatch: Any, io_timeout: Any, expected: bytes) -> None:
    reactor = Reactor()
    server = socketserver.TCPServer(("127.0.0.1", 0), TimeoutProbe)
    reactor.add_server(server, ThreadPool(1) if dispatch == "pool" else None, io_timeout=io_timeout)
    with reactor_thread(reactor):
        assert ask(server.server_address) == expected
    server.server_close()


def test_a_standalone_compat_server_keeps_blocking_sockets() -> None:
    server = socketserver.TCPServer(("127.0.0.1", 0), TimeoutProbe)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert ask(server.server_address) == b"None\n"
    finally:
        server.shutdown()
        thread.join(JOIN_TIMEOUT)
        server.server_close()


def test_request_info_names_the_peer(reactor_with_witness: tuple[Reactor, Any]) -> None:
    seen: list[Any] = []

    class Info(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            info = request_info(self.request)
            seen.append((info.client_address, info.peer_address, info.proxy_address) if info else None)
            self.wfile.write(b"ok\n")

    reactor, _ = reactor_with_witness
    server = socketserver.TCPServer(("127.0.0.1", 0), Info)
    reactor.add_server(server, io_timeout=JOIN_TIMEOUT)
    with reactor_thread(reactor), connect(server.server_address) as sock:
        sock.sendall(b"hi\n")
        assert sock.makefile("rb").readline() == b"ok\n"
        address = sock.getsockname()
    assert seen == [(address, address, None)]
    server.server_close()


# ---------------------------------------------------------------- PROXY protocol

class WhoHandler(QuietHTTPHandler):
    """An unmodified-style http.server handler: answers with the client address it sees."""

    def reply(self) -> bytes:
        info = request_info(self.request)
        return f"{self.client_address[0]} {self.client_address[1]} " \
               f"{info.proxy_address[0] if info and info.proxy_address else '-'}".encode()


V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: str, port: int, destination: str = "127.0.0.1", dport: int = 80) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {port} {dport}\r\n".encode()


def proxy_v2(source: str, port: int, destination: str | None = None, dport: int = 80, local: bool = False) -> bytes:
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    v6 = ":" in source
    destination = destination or ("::1" if v6 else "127.0.0.1")
    family = socket.AF_INET6 if v6 else socket.AF_INET
    addresses = (socket.inet_pton(family, source) + socket.inet_pton(family, destination)
                 + struct.pack("!HH", port, dport))
    return V2_SIGNATURE + bytes([0x21, 0x21 if v6 else 0x11]) + struct.pack("!H", len(addresses)) + addresses


def http_get_raw(address: Any, prefix: bytes, path: str = "/") -> bytes:
    """A GET sent right behind ``prefix`` in the same packet (the bytes after the header must survive)."""
    with connect(address) as sock:
        sock.sendall(prefix + f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_header_names_the_real_client_to_an_unmodified_http_server(
        version: str, reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    web = http.server.HTTPServer(("127.0.0.1", 0), WhoHandler)
    reactor.add_server(web, dispatch=ThreadPool(2), proxy_protocol="any", proxy_trusted=["127.0.0.0/8"])
    header = proxy_v1("203.0.113.7", 56324) if version == "v1" else proxy_v2("2001:db8::7", 56324)
    with reactor_thread(reactor):
        body = http_get_raw(web.server_address, header)
        host = "203.0.113.7" if version == "v1" else "2001:db8::7"
        assert body.split()[:2] == [host.encode(), b"56324"]
        assert body.split()[2] == b"127.0.0.1", "the proxy's own address is kept for the handler"
        assert ask(witness.server_address) == b"PING\n"


def test_proxy_local_command_keeps_the_peer_address(reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, _ = reactor_with_witness
    web = http.server.HTTPServer(("127.0.0.1", 0), WhoHandler)
    reactor.add_server(web, proxy_protocol="v2")
    with reactor_thread(reactor):
        body = http_get_raw(web.server_address, proxy_v2("", 0, local=True))
        assert body.split()[0] == b"127.0.0.1" and body.split()[2] == b"-"


@pytest.mark.parametrize("bad", ["garbage", "wrong_version", "untrusted", "silent"])
def test_a_bad_or_missing_proxy_header_drops_that_connection_only(
        bad: str, reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    web = http.server.HTTPServer(("127.0.0.1", 0), WhoHandler)
    trusted = ["10.0.0.0/8"] if bad == "untrusted" else ["127.0.0.1"]
    reactor.add_server(web, proxy_protocol="v1", proxy_trusted=trusted, header_timeout=0.3)
    payload = {"garbage": b"GET / HTTP/1.0\r\n\r\n", "wrong_version": proxy_v2("192.0.2.1", 1),
               "untrusted": proxy_v1("192.0.2.1", 1), "silent": b""}[bad]
    with reactor_thread(reactor), connect(web.server_address) as sock:
        if payload:
            sock.sendall(payload)
        try:
            assert sock.recv(100) == b""
        except ConnectionResetError:
            pass
        cause = {"garbage": "proxy_errors", "wrong_version": "proxy_errors", "untrusted": "refused_by_rule",
                 "silent": "timeouts"}[bad]
        wait_for(lambda: reactor.server_stats(web)[cause] == 1)
        assert reactor.server_stats(web)["admitted"] == 0
        assert ask(witness.server_address) == b"PING\n"
        if bad != "untrusted":
            assert http_get_raw(web.server_address, proxy_v1("192.0.2.9", 9)).split()[0] == b"192.0.2.9"


# ---------------------------------------------------------------- TLS in the loop

def https_get(address: Any, context: ssl.SSLContext, path: str = "/", server_hostname: str = "localhost") -> bytes:
    with connect(address) as raw, context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        tls.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("dispatch", ["inline", "pool"])
def test_an_unmodified_http_server_serves_https_and_a_silent_handshake_blocks_nobody(
        dispatch: str, pki: Pki, reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    web = http.server.HTTPServer(("127.0.0.1", 0), WhoHandler)
    reactor.add_server(web, dispatch=ThreadPool(2) if dispatch == "pool" else None,
                       ssl_context=pki.server_context(), handshake_timeout=0.5)
    with reactor_thread(reactor), connect(web.server_address) as silent:  # connects, never says hello
        assert https_get(web.server_address, pki.client_context()).split()[0] == b"127.0.0.1"
        assert ask(witness.server_address) == b"PING\n"
        assert silent.recv(10) == b""  # closed at handshake_timeout
        wait_for(lambda: reactor.server_stats(web)["timeouts"] == 1)
        if CURL is not None:
            result = subprocess.run([CURL, "--silent", "--show-error", "--cacert", str(pki.ca),
                                     "--max-time", str(CLIENT_TIMEOUT), f"https://127.0.0.1:{web.server_address[1]}/"],
                                    capture_output=True, text=True, timeout=CLIENT_TIMEOUT + 5, check=False)
            assert result.returncode == 0, result.stderr
            assert result.stdout.split()[0] == "127.0.0.1"
        elif os.environ.get("CI"):
            pytest.fail("curl is needed in CI")


@pytest.mark.parametrize("bad", ["plain_text", "closes_mid_handshake", "untrusting_client"])
def test_a_failed_handshake_is_one_dropped_connection(bad: str, pki: Pki,
                                                      reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, witness = reactor_with_witness
    web = http.server.HTTPServer(("127.0.0.1", 0), WhoHandler)
    reactor.add_server(web, dispatch=ThreadPool(2), ssl_context=pki.server_context())
    with reactor_thread(reactor):
        with connect(web.server_address) as sock:
            if bad == "plain_text":
                sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                with contextlib.suppress(ConnectionError):
                    assert not sock.recv(100).startswith(b"HTTP/")
            elif bad == "closes_mid_handshake":
                sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
            else:
                with pytest.raises(ssl.SSLError):
                    ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).wrap_socket(sock, server_hostname="localhost")
        wait_for(lambda: reactor.server_stats(web)["tls_failures"] == 1)
        assert https_get(web.server_address, pki.client_context()).split()[0] == b"127.0.0.1"
        assert ask(witness.server_address) == b"PING\n"


def test_sni_reaches_the_context_and_tls_sits_behind_a_proxy_header(
        pki: Pki, reactor_with_witness: tuple[Reactor, Any]) -> None:
    reactor, _ = reactor_with_witness
    names: list[str | None] = []
    context = pki.server_context()
    context.sni_callback = lambda tls, name, ctx: names.append(name)  # type: ignore[assignment,misc]
    web = http.server.HTTPServer(("127.0.0.1", 0), WhoHandler)
    reactor.add_server(web, ssl_context=context, proxy_protocol="v1")
    with reactor_thread(reactor), connect(web.server_address) as raw:
        raw.sendall(proxy_v1("198.51.100.4", 4000))
        with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.partition(b"\r\n\r\n")[2].split()[:1] == [b"198.51.100.4"]
    assert names == ["localhost"]


# ---------------------------------------------------------------- under Prefork (fresh interpreter)

PREFORK_SCRIPT = r"""
import http.server, json, os, socket, threading
from reactor import Prefork, Reactor

class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.client_address[0]} {os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

def get(address, client):
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(f"PROXY TCP4 {client} 127.0.0.1 1234 80\r\n".encode() + b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
    return data.partition(b"\r\n\r\n")[2].decode()

with Reactor() as reactor:
    web = http.server.HTTPServer(("127.0.0.1", 0), Who)
    reactor.add_server(web, dispatch=Prefork(1, graceful_timeout=5), proxy_protocol="v1",
                       deny=["198.51.100.0/24"], wait_for_data=5, io_timeout=5)

    def client():
        try:
            print(json.dumps([get(web.server_address, "192.0.2.1"), get(web.server_address, "198.51.100.1"),
                              os.getpid()]), flush=True)
        finally:
            reactor.stop()

    threading.Thread(target=client).start()
    reactor.serve_forever()
"""


def test_prefork_workers_admit_connections_with_the_same_options() -> None:
    result = run_python(PREFORK_SCRIPT, timeout=60)
    assert result.returncode == 0, result.stderr
    allowed, refused_reply, master = json.loads(result.stdout.splitlines()[-1])
    client, worker = allowed.split()
    assert client == "192.0.2.1", "the worker read the PROXY header"
    assert int(worker) != master, "served by a worker, not the master"
    assert refused_reply == "", "the worker applied the deny list to the proxied client"


# ---------------------------------------------------------------- standalone compat servers

def test_a_standalone_compat_server_takes_connection_options(pki: Pki) -> None:
    from reactor import AdmissionOptions

    options = AdmissionOptions(ssl_context=pki.server_context(), wait_for_data=JOIN_TIMEOUT,
                               deny=["192.0.2.0/24"], proxy_protocol="v1")
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo, connection_options=options)
    thread = threading.Thread(target=server.serve_forever, name="serve_forever")
    thread.start()
    try:
        with connect(server.server_address) as raw:
            raw.sendall(proxy_v1("198.51.100.3", 3333))
            with pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"over tls\n")
                assert tls.makefile("rb").readline() == b"OVER TLS\n"
        with connect(server.server_address) as denied:
            denied.sendall(proxy_v1("192.0.2.200", 1))
            with contextlib.suppress(ConnectionError):
                assert denied.recv(10) == b""
    finally:
        server.shutdown()
        thread.join(JOIN_TIMEOUT)
        server.server_close()
    assert not thread.is_alive()


def test_connection_options_on_a_standalone_datagram_server_are_refused() -> None:
    from reactor import AdmissionOptions

    with pytest.raises(ValueError, match="stream servers"):
        socketserver.UDPServer(("127.0.0.1", 0), socketserver.DatagramRequestHandler,
                               connection_options=AdmissionOptions(io_timeout=1))


PREFORK_SILENT_CLIENT_SCRIPT = r"""
import json, os, signal
from reactor import Prefork, Reactor, socketserver

class Pid(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(f"{os.getpid()}\n".encode())

reactor = Reactor()
server = socketserver.TCPServer(("127.0.0.1", 0), Pid)
reactor.add_server(server, Prefork(1, heartbeat_timeout=2))
reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
print(json.dumps(server.server_address), flush=True)
reactor.serve_forever()
reactor.close()
server.server_close()
"""


def test_an_inline_prefork_worker_gives_up_on_a_silent_client_before_its_heartbeat_does() -> None:
    import signal

    from support import spawn_python

    with spawn_python(PREFORK_SILENT_CLIENT_SCRIPT) as proc:
        assert proc.stdout is not None
        address = tuple(json.loads(proc.stdout.readline()))
        try:
            first = ask(address, b"who\n").strip()
            with connect(address) as silent:
                silent.sendall(b"half a li")  # the handler waits for the rest of the line
                assert silent.recv(10) == b""  # closed after io_timeout = heartbeat_timeout / 2
            assert ask(address, b"who\n").strip() == first  # the same worker: it was never killed
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, proc.stderr.read() if proc.stderr else ""
