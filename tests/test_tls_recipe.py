"""TLS by the stdlib's own recipe, hosted on a Reactor: a failed handshake costs one connection.

The recipe from the ``http.server`` and ``ssl`` docs wraps the listening
socket, ``server.socket = context.wrap_socket(server.socket, server_side=True)``,
so the server's unmodified ``get_request()`` (``SSLSocket.accept()``) accepts
*and* runs the whole server-side handshake. Every way a client can botch that
handshake therefore surfaces as an exception out of ``get_request()``: an
``SSLError`` whose ``errno`` is an OpenSSL code, a ``TimeoutError`` with no
errno, a ``ConnectionResetError``. Each must drop that one connection and
leave the listener, and every other server on the reactor, serving.

Everything is real: a throwaway CA and server certificate made by the
``openssl`` command, TLS clients that verify against that CA (Python's ``ssl``
and ``curl --cacert``), loopback sockets. The reactor runs in a background
thread. The handshake still runs blocking in the reactor's thread (the
connection layer will move it out); every bad client here finishes its part
before the good request is made, and the kernel's accept queue is FIFO, so the
good request is only taken once the bad one has been dealt with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import logging
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reactor import Dispatch, Inline, Reactor, ThreadPool, socketserver
from pki import OPENSSL, Pki
from support import run_python

CURL = shutil.which("curl")

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command to make certificates")

#: Every client socket and request in this module gives up after this long.
CLIENT_TIMEOUT = 5.0

# ---------------------------------------------------------------- the servers

class HelloHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET with 200 and ``hello <path>``."""

    def do_GET(self) -> None:
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


@dataclasses.dataclass
class Site:
    """An HTTPS server (stdlib recipe) and a plain echo server on one Reactor, in a thread."""

    pki: Pki
    reactor: Reactor
    web: http.server.HTTPServer
    echo: socketserver.TCPServer

    @property
    def web_address(self) -> tuple[str, int]:
        host, port = self.web.socket.getsockname()[:2]
        return host, port

    def https_get(self, path: str) -> bytes:
        """A verified HTTPS GET with Python's client; returns the body of the 200 answer."""
        host, port = self.web_address
        connection = http.client.HTTPSConnection(host, port, timeout=CLIENT_TIMEOUT,
                                                 context=self.pki.client_context())
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200, (response.status, body)
        return body

    def curl_get(self, path: str, *, cacert: bool = True) -> subprocess.CompletedProcess[str]:
        assert CURL is not None
        host, port = self.web_address
        argv = [CURL, "--silent", "--show-error", "--fail", "--noproxy", "*",
                "--max-time", str(CLIENT_TIMEOUT), f"https://{host}:{port}{path}"]
        if cacert:
            argv[1:1] = ["--cacert", str(self.pki.ca)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT + 5, check=False)

    def echo_round_trip(self, payload: bytes = b"ping") -> bytes:
        with socket.create_connection(self.echo.server_address, timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(payload + b"\n")
            return recv_until_closed(sock).rstrip(b"\n")


def recv_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes; a reset counts as closed."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


DISPATCHES: dict[str, Callable[[], Dispatch]] = {
    "ThreadPool": lambda: ThreadPool(max_workers=2),
    "Inline": Inline,
}


@contextlib.contextmanager
def running_site(pki: Pki, dispatch: Dispatch) -> Iterator[Site]:
    with contextlib.ExitStack() as stack:
        web = http.server.HTTPServer(("127.0.0.1", 0), HelloHandler)
        stack.callback(web.server_close)  # a server detached by a failure is no longer the reactor's to close
        # The recipe of the http.server and ssl docs, unchanged.
        web.socket = pki.server_context().wrap_socket(web.socket, server_side=True)
        echo = socketserver.TCPServer(("127.0.0.1", 0), EchoHandler)
        stack.callback(echo.server_close)
        reactor = Reactor()
        stack.callback(reactor.close)
        reactor.add_server(web, dispatch=dispatch)
        reactor.add_server(echo, dispatch=Inline())
        # A daemon thread, so a reactor that never returns fails the test instead of hanging pytest.
        thread = threading.Thread(target=reactor.serve_forever, name="reactor-tls", daemon=True)
        thread.start()

        def stop() -> None:
            reactor.stop()
            thread.join(10)
            assert not thread.is_alive(), "serve_forever() did not return after stop()"

        stack.callback(stop)
        yield Site(pki=pki, reactor=reactor, web=web, echo=echo)


@pytest.fixture(params=list(DISPATCHES))
def site(request: pytest.FixtureRequest, pki: Pki) -> Iterator[Site]:
    with running_site(pki, DISPATCHES[request.param]()) as running:
        yield running


# ---------------------------------------------------------------- clients that botch the handshake

def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello, made by Python's client without a socket."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100  # a handshake record
    return hello


def connect_then_close(site: Site) -> None:
    """``nc -z``: connect, then close without a byte."""
    with socket.create_connection(site.web_address, timeout=CLIENT_TIMEOUT):
        pass


def plain_text(site: Site) -> None:
    """Plain HTTP to the TLS port; the server gives up and closes the connection."""
    with socket.create_connection(site.web_address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = recv_until_closed(sock)
    assert not answer.startswith(b"HTTP/"), answer


def half_client_hello(site: Site) -> None:
    """Half a ClientHello, then close (FIN)."""
    hello = client_hello()
    with socket.create_connection(site.web_address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(hello[: len(hello) // 2])


def reset_mid_handshake(site: Site) -> None:
    """Half a ClientHello, then abort the connection (RST, by SO_LINGER with a zero timeout)."""
    hello = client_hello()
    with socket.create_connection(site.web_address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(hello[: len(hello) // 2])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def client_rejects_the_certificate(site: Site) -> None:
    """A client that trusts no CA: it fails verification and sends the server an alert."""
    untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, but knows no CA
    with socket.create_connection(site.web_address, timeout=CLIENT_TIMEOUT) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.wrap_socket(sock, server_hostname="127.0.0.1")


def curl_without_the_ca(site: Site) -> None:
    """curl with only the system's CAs: it fails verification."""
    if CURL is None:
        pytest.skip("needs the curl command")
    result = site.curl_get("/untrusted", cacert=False)
    assert result.returncode != 0, result.stdout


BAD_CLIENTS: dict[str, Callable[[Site], None]] = {
    function.__name__: function
    for function in (connect_then_close, plain_text, half_client_hello, reset_mid_handshake,
                     client_rejects_the_certificate, curl_without_the_ca)
}


def reactor_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("reactor") and record.levelno >= logging.ERROR]


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("bad_client", list(BAD_CLIENTS))
def test_a_failed_handshake_drops_one_connection_and_both_servers_keep_serving(
        site: Site, bad_client: str, caplog: pytest.LogCaptureFixture) -> None:
    assert site.https_get("/before") == b"hello /before"
    BAD_CLIENTS[bad_client](site)
    assert site.https_get("/after") == b"hello /after"
    assert site.echo_round_trip(b"still here") == b"still here"
    assert site.web in site.reactor.servers
    assert reactor_errors(caplog) == []


@pytest.mark.skipif(CURL is None, reason="needs the curl command")
def test_curl_with_the_ca_is_served_after_every_kind_of_bad_client(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    for name, bad_client in BAD_CLIENTS.items():
        bad_client(site)
        result = site.curl_get(f"/after-{name}")
        assert result.returncode == 0, f"after {name}: curl exit {result.returncode}: {result.stderr}"
        assert result.stdout == f"hello /after-{name}"
        assert site.echo_round_trip(name.encode()) == name.encode()
    assert site.web in site.reactor.servers
    assert reactor_errors(caplog) == []


def test_a_burst_of_port_scans_is_dropped_and_the_client_behind_it_served(
        site: Site, caplog: pytest.LogCaptureFixture) -> None:
    # As many dead connections as the listen backlog holds (more would only
    # make the kernel drop SYNs and the clients retry a second later).
    caplog.set_level(logging.WARNING, logger="reactor")
    scans = site.web.request_queue_size
    for _ in range(scans):
        connect_then_close(site)
    assert site.https_get("/after-scan") == b"hello /after-scan"
    assert site.echo_round_trip() == b"ping"
    assert reactor_errors(caplog) == []
    # Each is counted; the log says so once per kind of failure, not once per scan.
    assert site.reactor.server_stats(site.web)["dropped"] == scans
    said = [r for r in caplog.records if "dropped a connection" in r.getMessage()]
    assert 1 <= len(said) <= 2, [r.getMessage() for r in said]


# A handshake that hits a socket timeout needs socket.setdefaulttimeout(), which
# is global to the process: it runs in a fresh interpreter, never in pytest's.
HANDSHAKE_TIMEOUT_CHILD = r"""
import http.client, http.server, socket, ssl, sys, threading
from reactor import Reactor, ThreadPool

ca, cert, key = sys.argv[1:4]
socket.setdefaulttimeout(0.3)  # accepted sockets inherit it: the handshake times out after 0.3 s


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


web = http.server.HTTPServer(("127.0.0.1", 0), Hello)
server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
server_context.load_cert_chain(cert, key)
web.socket = server_context.wrap_socket(web.socket, server_side=True)
reactor = Reactor()
reactor.add_server(web, dispatch=ThreadPool(2))
thread = threading.Thread(target=reactor.serve_forever)
thread.start()
try:
    address = web.socket.getsockname()
    with socket.create_connection(address, timeout=5) as silent:
        silent.settimeout(5)
        # Sends nothing: the server's handshake times out and closes the connection.
        print("silent client closed by the server:", silent.recv(1) == b"", flush=True)
    connection = http.client.HTTPSConnection(
        *address, timeout=5, context=ssl.create_default_context(cafile=ca))
    connection.request("GET", "/")
    response = connection.getresponse()
    print("then served:", response.status, response.read().decode(), flush=True)
    connection.close()
    print("still hosted:", web in reactor.servers, flush=True)
finally:
    reactor.stop()
    thread.join(10)
    reactor.close()
    web.server_close()
"""


def test_a_handshake_that_times_out_drops_the_connection_not_the_listener(pki: Pki) -> None:
    result = run_python(HANDSHAKE_TIMEOUT_CHILD, str(pki.ca), str(pki.cert), str(pki.key), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "silent client closed by the server: True",
        "then served: 200 ok",
        "still hosted: True",
    ], result.stderr
    assert "listener failed" not in result.stderr
