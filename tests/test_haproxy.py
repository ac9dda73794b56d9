"""The PROXY protocol against a real HAProxy (the Debian package; .ci/run installs it).

Each test writes a ``mode tcp`` configuration to a temporary directory and runs
``haproxy -db`` (foreground, no master process) as a child it ends by pid. No
fixed port: the test binds every frontend's listening socket itself (127.0.0.1:0,
[::1]:0) and HAProxy takes it over as ``bind fd@N`` (``pass_fds``); the backend
is the reactor server's real address. A small ``mode http`` frontend that
answers by itself tells when HAProxy runs, so nothing sleeps.

What every case checks: the reactor server saw the real client (the address of
the test's client socket, ``getsockname()``), ``request_info()`` kept HAProxy's
own connection as ``proxy_address``/``peer_address`` and the parsed header, and
``Reactor.server_stats()`` counts exactly what the test caused.

The tests at the end hold bugs found this way (access rules judged as if a
listener's clients were always of its own family), fixed in reactor/access.py.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pki import Pki
from reactor import Reactor, ThreadPool
from reactor.admission import request_info
from reactor.proxy_protocol import (PP2_SUBTYPE_SSL_CIPHER, PP2_SUBTYPE_SSL_KEY_ALG, PP2_SUBTYPE_SSL_SIG_ALG,
                                    PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_AUTHORITY,
                                    PP2_TYPE_CRC32C, PP2_TYPE_SSL, PP2_TYPE_UNIQUE_ID)
from support import TESTS_DIR, QuietHTTPHandler, ipv6_available, reactor_thread, spawn_python, wait_for


def _find_haproxy() -> str | None:
    for candidate in (shutil.which("haproxy"), "/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


HAPROXY = _find_haproxy()

pytestmark = pytest.mark.skipif(
    HAPROXY is None,
    reason="haproxy not found on PATH nor at /usr/sbin/haproxy (apt-get install haproxy; .ci/run installs it)")

CLIENT_TIMEOUT = 5.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

#: The admission counters; every one the test does not name must stay 0.
ADMISSION_COUNTERS = ("admitted", "refused_by_rule", "refused_by_limit", "proxy_errors", "tls_failures",
                      "timeouts", "closed_early")


def need_ipv6() -> None:
    if not ipv6_available():
        if os.environ.get("CI"):
            pytest.fail("IPv6 loopback is needed for this test")
        pytest.skip("no IPv6 loopback")


# ---------------------------------------------------------------- HAProxy as a child process

def listener(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on ``host``, port chosen by the kernel, for HAProxy to inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.fixture
def listen() -> Iterator[Any]:
    """``listen(host="127.0.0.1")``: a :func:`listener`, open until the test's end."""
    with contextlib.ExitStack() as stack:
        yield lambda host="127.0.0.1": stack.enter_context(listener(host))


CONFIG = """\
global
    nbthread 1
    log stderr format raw daemon info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 10s
    timeout server 10s
    timeout check 5s
    # A server that drops a connection at once (untrusted, bad header) would be tried again,
    # so the counters would depend on timing; one client connection is one server connection.
    retries 0

# Answers by itself: once it does, HAProxy runs (the test never sleeps).
frontend ready
    mode http
    bind fd@{ready}
    http-request return status 200 content-type text/plain string ready

"""


class HAProxy:
    """One ``haproxy -db`` child, with its configuration file and its log (stdout and stderr)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, config: Path) -> None:
        self.proc = proc
        self.log = log
        self.config = config

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _ready(address: Any) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return sock.recv(100).startswith(b"HTTP/1.1 200")
    except OSError:  # timeout included: HAProxy has not taken the connection yet
        return False


@contextlib.contextmanager
def run_haproxy(directory: Path, sections: str, listeners: list[socket.socket]) -> Iterator[HAProxy]:
    """Run HAProxy with ``sections`` (frontends and backends naming ``fd@N`` of ``listeners``).

    Checks the configuration with ``-c`` first, waits until HAProxy answers, and
    afterwards ends it by its pid (SIGTERM) and reaps it.
    """
    assert HAPROXY is not None
    with contextlib.closing(listener()) as ready:
        config = directory / "haproxy.cfg"
        config.write_text(CONFIG.format(ready=ready.fileno()) + textwrap.dedent(sections))
        fds = [ready.fileno()] + [sock.fileno() for sock in listeners]
        check = subprocess.run([HAPROXY, "-c", "-f", str(config)], pass_fds=fds, capture_output=True,
                               text=True, timeout=START_TIMEOUT, check=False)
        assert check.returncode == 0, (f"haproxy -c rejected {config}:\n{check.stdout}{check.stderr}\n"
                                       f"{config.read_text()}")
        log = directory / "haproxy.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], pass_fds=fds, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        haproxy = HAProxy(proc, log, config)
        try:
            wait_for(lambda: proc.poll() is not None or _ready(ready.getsockname()), timeout=START_TIMEOUT,
                     message=lambda: f"haproxy did not answer:\n{haproxy.output()}")
            assert proc.poll() is None, f"haproxy exited with {proc.returncode}:\n{haproxy.output()}"
            yield haproxy
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # hard stop: closes its connections at once
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
                raise


# ---------------------------------------------------------------- the reactor side

class Who(QuietHTTPHandler):
    """An ordinary http.server handler that answers with what admission told it, as JSON.

    The answer goes out in one send (a buffered ``wfile``, flushed by http.server
    at the end of the request): HAProxy's HTTP health check resets the connection
    as soon as it has read the status line, and a body sent after that would end
    in a ConnectionResetError traceback.
    """

    wbufsize = io.DEFAULT_BUFFER_SIZE

    def reply(self) -> bytes:
        record = describe(self.request, self.client_address, self.path)
        self.server.seen.append(record)  # type: ignore[attr-defined]
        return json.dumps(record).encode()


class WhoLine(socketserver.StreamRequestHandler):
    """The same over a plain line protocol (for the Unix-socket server, which http.server cannot bind)."""

    def handle(self) -> None:
        line = self.rfile.readline().strip().decode()
        record = describe(self.request, self.client_address, line)
        self.server.seen.append(record)  # type: ignore[attr-defined]
        self.wfile.write(json.dumps(record).encode() + b"\n")


def describe(request: Any, client_address: Any, path: str) -> dict[str, Any]:
    info = request_info(request)
    assert info is not None, "an admitted connection has its request_info"
    header = info.proxy_header
    return {
        "path": path,
        "client_address": client_address,
        "info_client_address": info.client_address,
        "peer_address": info.peer_address,
        "proxy_address": info.proxy_address,
        "version": header.version if header else None,
        "command": header.command if header else None,
        "source": header.source if header else None,
        "destination": header.destination if header else None,
        "tlvs": [[kind, value.hex()] for kind, value in header.tlvs] if header else [],
        # Read ahead, the handler's request is a buffered socket over the SSLSocket, answering as it does.
        "tls": (isinstance(getattr(request, "raw_socket", request), ssl.SSLSocket)
                and info.tls is getattr(request, "raw_socket", request) and request.cipher() is not None),
        "credentials": [info.credentials.pid, info.credentials.uid] if info.credentials else None,
    }


class HTTP6Server(http.server.HTTPServer):
    address_family = socket.AF_INET6


def http_server(host: str = "127.0.0.1") -> http.server.HTTPServer:
    server = (HTTP6Server if ":" in host else http.server.HTTPServer)((host, 0), Who)
    server.seen = []  # type: ignore[attr-defined]
    return server


def backend_address(server: Any) -> str:
    host, port = server.server_address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def fd_bind(sock: socket.socket) -> str:
    return f"fd@{sock.fileno()}"


def counts(reactor: Reactor, server: Any) -> dict[str, int]:
    stats = reactor.server_stats(server)
    return {name: stats[name] for name in ADMISSION_COUNTERS}


def expect_counts(reactor: Reactor, server: Any, **expected: int) -> None:
    """Wait until the server's admission counters are exactly ``expected`` (the rest 0) and nothing is open."""
    want = {name: expected.get(name, 0) for name in ADMISSION_COUNTERS}
    wait_for(lambda: counts(reactor, server) == want and reactor.server_stats(server)["open"] == 0,
             message=lambda: f"counters {reactor.server_stats(server)}, expected {want} and nothing open")
    assert reactor.server_stats(server)["requests"] == sum(want.values())


# ---------------------------------------------------------------- clients

def client(address: Any) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CLIENT_TIMEOUT)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def read_all(sock: Any) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def http_get(frontend: socket.socket, path: str = "/") -> tuple[dict[str, Any], list[Any]]:
    """GET ``path`` through HAProxy's ``frontend``: the JSON reply and the client socket's own address."""
    with client(frontend.getsockname()) as sock:
        me = list(sock.getsockname())
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return json.loads(body), me


def closed_unserved(frontend: socket.socket) -> bool:
    """True when the connection through HAProxy ends without a byte of answer."""
    with client(frontend.getsockname()) as sock:
        try:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        except ConnectionError:
            return True
        return read_all(sock) == b""


def check_proxied(record: dict[str, Any], me: list[Any], frontend: Any, version: int,
                  proxy_host: str = "127.0.0.1") -> None:
    """The server saw the test's client socket, HAProxy stayed the peer, the header named both ends."""
    assert record["client_address"] == me, "the handler's client_address is the real client"
    assert record["info_client_address"] == me
    assert record["version"] == version and record["command"] == "PROXY"
    assert record["source"] == me[:2]
    assert record["destination"] == list(frontend[:2]), "the frontend's address, which the client connected to"
    assert record["proxy_address"] == record["peer_address"], "HAProxy's own connection is kept"
    assert record["proxy_address"][0] == proxy_host and record["proxy_address"] != me


# ---------------------------------------------------------------- send-proxy / send-proxy-v2 to http.server

SENDERS = {1: "send-proxy", 2: "send-proxy-v2"}
MODES = [(1, "v1"), (2, "v2"), (1, "any"), (2, "any")]
#: (frontend host, backend host)
NETWORKS = {"ipv4": ("127.0.0.1", "127.0.0.1"), "ipv6-client": ("::1", "127.0.0.1"), "ipv6": ("::1", "::1")}


@pytest.mark.parametrize("dispatch", ["inline", "pool"])
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("version,mode", MODES, ids=[f"{SENDERS[v]}-to-{m}" for v, m in MODES])
def test_an_unmodified_http_server_behind_haproxy_sees_the_real_client(
        version: int, mode: str, network: str, dispatch: str, tmp_path: Path, listen: Any) -> None:
    front_host, back_host = NETWORKS[network]
    if ":" in front_host:
        need_ipv6()
    reactor = Reactor()
    web = http_server(back_host)
    reactor.add_server(web, dispatch=ThreadPool(2) if dispatch == "pool" else None, proxy_protocol=mode,
                       proxy_trusted=["127.0.0.1", "::1"], io_timeout=CLIENT_TIMEOUT)
    front = listen(front_host)
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                server s1 {backend_address(web)} {SENDERS[version]}
            """, [front]):
        for n in range(2):
            record, me = http_get(front, f"/{n}")
            assert record["path"] == f"/{n}"
            check_proxied(record, me, front.getsockname(), version, proxy_host=back_host)
            assert record["tlvs"] == [] and not record["tls"]
        expect_counts(reactor, web, admitted=2)
    web.server_close()


@pytest.mark.parametrize("version,mode", [(2, "v1"), (1, "v2")], ids=["send-proxy-v2-to-v1", "send-proxy-to-v2"])
def test_the_other_version_from_haproxy_is_an_error_never_a_guess(
        version: int, mode: str, tmp_path: Path, listen: Any) -> None:
    reactor = Reactor()
    web = http_server()
    reactor.add_server(web, proxy_protocol=mode)
    front = listen()
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                server s1 {backend_address(web)} {SENDERS[version]}
            """, [front]):
        assert closed_unserved(front)
        expect_counts(reactor, web, proxy_errors=1)
    assert web.seen == []  # type: ignore[attr-defined]
    web.server_close()


# ---------------------------------------------------------------- TLVs

def sub_tlvs(ssl_value: bytes) -> dict[int, bytes]:
    """The sub-TLVs of a PP2_TYPE_SSL value (after its client byte and 4-byte verify field)."""
    found, pos = {}, 5
    while pos < len(ssl_value):
        kind, length = ssl_value[pos], int.from_bytes(ssl_value[pos + 1:pos + 3], "big")
        found[kind] = ssl_value[pos + 3:pos + 3 + length]
        pos += 3 + length
    return found


def test_proxy_v2_tlvs_from_an_haproxy_that_ends_tls_reach_request_info(
        tmp_path: Path, listen: Any, pki: Pki) -> None:
    """HAProxy ends the client's TLS and sends unique-id, authority (the SNI), ssl (with its
    version, cipher, signature and key algorithm sub-TLVs) and crc32c TLVs."""
    bundle = tmp_path / "server-bundle.pem"
    bundle.write_text(pki.cert.read_text() + pki.key.read_text())
    reactor = Reactor()
    web = http_server()
    reactor.add_server(web, dispatch=ThreadPool(2), proxy_protocol="v2", proxy_trusted=["127.0.0.1"])
    front = listen()
    options = "unique-id,authority,ssl,ssl-cipher,cert-sig,cert-key,crc32c"
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)} ssl crt {bundle}
                unique-id-format id-%ci-%cp
                default_backend be
            backend be
                server s1 {backend_address(web)} send-proxy-v2 proxy-v2-options {options}
            """, [front]):
        with client(front.getsockname()) as raw, \
                pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            me = list(tls.getsockname())
            tls.sendall(b"GET /tlv HTTP/1.0\r\nHost: x\r\n\r\n")
            reply = read_all(tls)
            tls_version, cipher = tls.version(), tls.cipher()[0]
        expect_counts(reactor, web, admitted=1)
    web.server_close()
    record = json.loads(reply.partition(b"\r\n\r\n")[2])
    check_proxied(record, me, front.getsockname(), 2)
    tlvs = {kind: bytes.fromhex(value) for kind, value in record["tlvs"]}
    assert len(tlvs) == len(record["tlvs"]), "each TLV once"
    assert tlvs[PP2_TYPE_UNIQUE_ID] == f"id-{me[0]}-{me[1]}".encode()
    assert tlvs[PP2_TYPE_AUTHORITY] == b"localhost", "the SNI the client sent"
    assert len(tlvs[PP2_TYPE_CRC32C]) == 4  # and it matched, or the parser would have dropped the connection
    ssl_tlv = tlvs[PP2_TYPE_SSL]
    assert ssl_tlv[0] == 0x01, "PP2_CLIENT_SSL only: over TLS, without a client certificate"
    assert ssl_tlv[1:5] == b"\0\0\0\0", "verify: 0 (nothing failed)"
    subs = sub_tlvs(ssl_tlv)
    assert subs[PP2_SUBTYPE_SSL_VERSION] == tls_version.encode()
    assert subs[PP2_SUBTYPE_SSL_CIPHER] == cipher.encode()
    # HAProxy's certificate, made by tests/pki.py: an EC P-256 key, signed by an EC CA with SHA-256.
    assert subs[PP2_SUBTYPE_SSL_SIG_ALG] == b"ecdsa-with-SHA256"
    assert subs[PP2_SUBTYPE_SSL_KEY_ALG] == b"EC256"
    assert not record["tls"], "HAProxy ended TLS: the reactor server speaks plain HTTP"


# ---------------------------------------------------------------- a Unix-socket backend

def test_a_unix_socket_backend_gets_the_tcp_client_and_haproxy_credentials(
        tmp_path: Path, listen: Any, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s.sock")
    reactor = Reactor()
    server = socketserver.UnixStreamServer(path, WhoLine)
    server.seen = []  # type: ignore[attr-defined]
    reactor.add_server(server, dispatch=ThreadPool(2), proxy_protocol="v2", proxy_trusted=[f"uid:{os.getuid()}"])
    front = listen()
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                server s1 unix@{path} send-proxy-v2
            """, [front]) as haproxy:
        with client(front.getsockname()) as sock:
            me = list(sock.getsockname())
            sock.sendall(b"who\n")
            record = json.loads(sock.makefile("rb").readline())
        expect_counts(reactor, server, admitted=1)
        pid = haproxy.pid
    server.server_close()
    assert record["path"] == "who"
    assert record["client_address"] == me and record["source"] == me
    assert record["destination"] == list(front.getsockname())
    assert record["proxy_address"] == record["peer_address"] == "", "HAProxy's unnamed Unix socket"
    assert record["credentials"] == [pid, os.getuid()], "SO_PEERCRED names the HAProxy process"


# ---------------------------------------------------------------- health checks

@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_health_checks_with_check_send_proxy_are_admitted_and_served(
        version: int, tmp_path: Path, listen: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """HTTP health checks behind a PROXY header get their 200 and count as admitted connections.

    A v2 check sends the LOCAL command (no addresses: the real endpoints stay); a v1
    check names the check's own connection (HAProxy is both source and peer).
    """
    reactor = Reactor()
    web = http_server()
    reactor.add_server(web, dispatch=ThreadPool(2), proxy_protocol="any", proxy_trusted=["127.0.0.1"])
    checks = 3
    front = listen()

    def quiet() -> bool:  # every connection accepted so far was admitted, served and closed
        stats = reactor.server_stats(web)
        return (stats["requests"] == stats["admitted"] == len(web.seen)  # type: ignore[attr-defined]
                and stats["open"] == stats["admitting"] == 0)

    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                option httpchk GET /health
                server s1 {backend_address(web)} {SENDERS[version]} check check-send-proxy inter 100ms rise 1 fall 1
            """, [front]) as haproxy:
        wait_for(lambda: len(web.seen) >= checks, message="HAProxy's health checks")  # type: ignore[attr-defined]
        record, me = http_get(front, "/client")  # the server is up: HAProxy forwards
        # Checks go on meanwhile: wait for a moment between two of them.
        wait_for(quiet, message=lambda: f"{reactor.server_stats(web)} for {web.seen}")  # type: ignore[attr-defined]
        stats, seen = reactor.server_stats(web), list(web.seen)  # type: ignore[attr-defined]
        output = haproxy.output()
    web.server_close()
    assert "is DOWN" not in output and "check failed" not in output.lower(), output
    assert {name: stats[name] for name in ADMISSION_COUNTERS} == {
        **dict.fromkeys(ADMISSION_COUNTERS, 0), "admitted": len(seen)}
    health = [r for r in seen if r["path"] == "/health"]
    assert len(health) == len(seen) - 1 >= checks
    for check in health:
        assert check["version"] == version
        assert check["client_address"] == check["peer_address"], "HAProxy's own connection"
        if version == 2:
            assert check["command"] == "LOCAL" and check["source"] is None and check["proxy_address"] is None
        else:
            assert check["command"] == "PROXY" and check["source"] == check["peer_address"]
    check_proxied(record, me, front.getsockname(), version)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


# ---------------------------------------------------------------- PROXY header, then TLS to the reactor

@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_passes_tls_through_behind_its_proxy_header(
        version: int, tmp_path: Path, listen: Any, pki: Pki) -> None:
    reactor = Reactor()
    web = http_server()
    reactor.add_server(web, dispatch=ThreadPool(2), proxy_protocol="any", proxy_trusted=["127.0.0.1"],
                       ssl_context=pki.server_context(), handshake_timeout=CLIENT_TIMEOUT)
    front = listen()
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                server s1 {backend_address(web)} {SENDERS[version]}
            """, [front]):
        with client(front.getsockname()) as raw, \
                pki.client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            me = list(tls.getsockname())
            tls.sendall(b"GET /tls HTTP/1.0\r\nHost: x\r\n\r\n")
            head, _, body = read_all(tls).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200")
        expect_counts(reactor, web, admitted=1)
    web.server_close()
    record = json.loads(body)
    check_proxied(record, me, front.getsockname(), version)
    assert record["tls"], "the handler got the SSLSocket from request_info"


# ---------------------------------------------------------------- an untrusted HAProxy

def test_an_haproxy_outside_proxy_trusted_is_refused_and_the_other_server_answers(
        tmp_path: Path, listen: Any) -> None:
    reactor = Reactor()
    untrusting = http_server()
    trusting = http_server()
    reactor.add_server(untrusting, proxy_protocol="v2", proxy_trusted=["10.0.0.0/8"])
    reactor.add_server(trusting, proxy_protocol="v2", proxy_trusted=["127.0.0.0/8"])
    front_a, front_b = listen(), listen()
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe_untrusting
                bind {fd_bind(front_a)}
                default_backend be_untrusting
            backend be_untrusting
                server s1 {backend_address(untrusting)} send-proxy-v2
            frontend fe_trusting
                bind {fd_bind(front_b)}
                default_backend be_trusting
            backend be_trusting
                server s1 {backend_address(trusting)} send-proxy-v2
            """, [front_a, front_b]):
        for _ in range(2):
            assert closed_unserved(front_a)
            record, me = http_get(front_b)
            check_proxied(record, me, front_b.getsockname(), 2)
        expect_counts(reactor, untrusting, refused_by_rule=2)
        expect_counts(reactor, trusting, admitted=2)
    assert untrusting.seen == []  # type: ignore[attr-defined]
    untrusting.server_close()
    trusting.server_close()


# ---------------------------------------------------------------- limits judge the proxied client

class Held(socketserver.StreamRequestHandler):
    """Says which client it serves, then holds the connection until the test releases it."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(json.dumps(self.client_address).encode() + b"\n")
        self.server.release.wait(CLIENT_TIMEOUT)  # type: ignore[attr-defined]


def test_max_connections_per_ip_counts_the_real_clients_not_haproxy(tmp_path: Path, listen: Any) -> None:
    """Every connection comes from HAProxy's address; the per-IP limit counts the proxied clients."""
    reactor = Reactor()
    server = socketserver.TCPServer(("127.0.0.1", 0), Held)
    server.release = threading.Event()  # type: ignore[attr-defined]
    reactor.add_server(server, dispatch=ThreadPool(4), proxy_protocol="v1", proxy_trusted=["127.0.0.1"],
                       max_connections_per_ip=1)
    front = listen()

    def hold(source: str) -> tuple[socket.socket, bytes]:
        sock = socket.create_connection(front.getsockname(), timeout=CLIENT_TIMEOUT, source_address=(source, 0))
        try:
            sock.sendall(b"hold\n")
            return sock, sock.recv(4096)
        except ConnectionResetError:
            return sock, b""

    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                server s1 {backend_address(server)} send-proxy
            """, [front]), contextlib.ExitStack() as stack:
        first, first_reply = hold("127.0.0.1")
        stack.enter_context(first)
        other, other_reply = hold("127.0.0.2")  # another client IP, through the same HAProxy
        stack.enter_context(other)
        assert json.loads(first_reply) == list(first.getsockname())
        assert json.loads(other_reply) == list(other.getsockname())
        extra, extra_reply = hold("127.0.0.1")  # a second connection of the first client's IP
        stack.enter_context(extra)
        assert extra_reply == b"", "refused: that client IP already has its one connection"
        server.release.set()  # type: ignore[attr-defined]
        expect_counts(reactor, server, admitted=2, refused_by_limit=1)
    server.server_close()


# ---------------------------------------------------------------- under Prefork (a fresh interpreter)

PREFORK_SCRIPT = r"""
import http.server, json, os, sys
from handlers import emit, on_stdin_lines
from reactor import Prefork, Reactor
from reactor.admission import request_info

class Server(http.server.HTTPServer):
    def hosting_started(self, hosted):
        self.hosted = hosted  # the worker's hosting: its admission counters

class Who(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        info = request_info(self.request)
        body = json.dumps({"client_address": self.client_address, "proxy_address": info.proxy_address,
                           "peer_address": info.peer_address, "version": info.proxy_header.version,
                           "pid": os.getpid(), "stats": self.server.hosted.stats()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass

workers = int(sys.argv[1])
with Reactor() as reactor:
    web = Server(("127.0.0.1", 0), Who)
    prefork = Prefork(workers, graceful_timeout=5)
    reactor.add_server(web, dispatch=prefork, proxy_protocol="any", proxy_trusted=["127.0.0.1"], io_timeout=5)

    def announce_when_ready():
        if len(prefork.stats()["ready"]) >= workers:
            emit("ready", web.server_address[1], os.getpid())
        else:
            reactor.call_later(0.01, announce_when_ready)

    on_stdin_lines(reactor, {})  # EOF on stdin stops it
    reactor.call_soon(announce_when_ready)
    reactor.serve_forever()
emit("stopped")
"""


@pytest.mark.parametrize("version", [1, 2])
def test_prefork_workers_behind_haproxy_see_the_real_client(version: int, tmp_path: Path, listen: Any) -> None:
    workers, requests = 2, 6
    env = {"PYTHONPATH": str(TESTS_DIR / "prefork_scripts")}
    with spawn_python(PREFORK_SCRIPT, str(workers), env=env) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            pytest.fail(f"the prefork script did not start: {line}\n{proc.stderr.read() if proc.stderr else ''}")
        port, master = int(line[1]), int(line[2])
        try:
            front = listen()
            with run_haproxy(tmp_path, f"""
                    frontend fe
                        bind {fd_bind(front)}
                        default_backend be
                    backend be
                        server s1 127.0.0.1:{port} {SENDERS[version]}
                    """, [front]):
                replies = [http_get(front) for _ in range(requests)]
        finally:
            proc.stdin.close()
        assert proc.stdout.read().split() == ["stopped"]
        assert proc.wait(STOP_TIMEOUT) == 0, proc.stderr.read() if proc.stderr else ""
    served: dict[int, list[dict[str, Any]]] = {}
    for record, me in replies:
        assert record["client_address"] == me, "the worker read the PROXY header"
        assert record["version"] == version
        assert record["proxy_address"] == record["peer_address"] and record["proxy_address"][0] == "127.0.0.1"
        assert record["pid"] != master, "served by a worker"
        served.setdefault(record["pid"], []).append(record["stats"])
    for pid, stats in served.items():
        # Each worker counts its own connections: the last reply it gave saw all of them.
        assert stats[-1]["admitted"] == len(stats), (pid, stats)
        assert all(stats[-1][name] == 0 for name in ADMISSION_COUNTERS if name != "admitted"), (pid, stats)


# ---------------------------------------------------------------- access rules behind a proxy (bugs found here)
#
# Each test below describes the right behaviour and FAILS on reactor as it is: the access
# rules (reactor/access.py) are checked and applied as if a listener's clients were always
# of the listener's own family, which a PROXY header makes untrue.

@pytest.mark.parametrize("rules", ["deny-haproxy-uid", "allow-another-uid"])
def test_uid_rules_of_a_unix_listener_judge_the_proxy_behind_a_header(rules: str, tmp_path: Path, listen: Any,
                                                                     unix_dir: str) -> None:
    """A Unix listener's uid:/gid: allow/deny entries judge the peer (the proxy) even when the
    PROXY header names an IP client. (They were skipped, so a denied peer was admitted.)

    The bug: AccessRules.permits consulted the credential entries only for a Unix-path client,
    and for an IP client with no network allow entry returned True; with ``proxy_trusted``
    empty (the default) any local user could bypass a uid deny by sending a PROXY header.
    """
    uid = os.getuid()  # HAProxy runs as we do
    path = os.path.join(unix_dir, "s.sock")
    reactor = Reactor()
    server = socketserver.UnixStreamServer(path, WhoLine)
    server.seen = []  # type: ignore[attr-defined]
    keywords = {"deny": [f"uid:{uid}"]} if rules == "deny-haproxy-uid" else {"allow": [f"uid:{uid + 1}"]}
    reactor.add_server(server, proxy_protocol="v2", **keywords)  # type: ignore[arg-type]
    front = listen()
    with reactor_thread(reactor), run_haproxy(tmp_path, f"""
            frontend fe
                bind {fd_bind(front)}
                default_backend be
            backend be
                server s1 unix@{path} send-proxy-v2
            """, [front]):
        with client(front.getsockname()) as sock:
            sock.sendall(b"who\n")
            reply = read_all(sock)
        wait_for(lambda: reactor.server_stats(server)["requests"] == 1)
        stats = counts(reactor, server)
    server.server_close()
    assert reply == b"", f"served although {keywords} excludes HAProxy's uid {uid}: {reply!r}"
    assert stats == {**dict.fromkeys(ADMISSION_COUNTERS, 0), "refused_by_rule": 1}


@pytest.mark.parametrize("listener_family", ["ipv4-listener", "unix-listener"])
def test_network_rules_may_name_the_proxied_clients_family(listener_family: str, tmp_path: Path,
                                                           listen: Any, unix_dir: str) -> None:
    """add_server takes allow lists that only proxied clients can match. (It refused them.)

    Behind HAProxy an IPv4 listener serves the IPv6 clients of an IPv6 frontend, and a Unix
    listener serves TCP clients. AccessRules.validate_for used to raise ValueError for an
    IPv6-only allow list on an AF_INET listener and for any network entry on an AF_UNIX
    listener, whatever ``proxy_protocol`` said: such a backend could not filter its real
    clients at all.
    """
    if listener_family == "ipv4-listener":
        need_ipv6()
        server: Any = http_server()
        front = listen("::1")
        allow, target = ["::1"], backend_address(server)
    else:
        path = os.path.join(unix_dir, "s.sock")
        server = socketserver.UnixStreamServer(path, WhoLine)
        server.seen = []
        front = listen()
        allow, target = ["127.0.0.1"], f"unix@{path}"
    reactor = Reactor()
    try:
        reactor.add_server(server, proxy_protocol="v2", allow=allow)
        with reactor_thread(reactor, close=False), run_haproxy(tmp_path, f"""
                frontend fe
                    bind {fd_bind(front)}
                    default_backend be
                backend be
                    server s1 {target} send-proxy-v2
                """, [front]):
            with client(front.getsockname()) as sock:
                me = list(sock.getsockname())
                sock.sendall(b"GET /allowed HTTP/1.0\r\n\r\n" if listener_family == "ipv4-listener" else b"who\n")
                assert read_all(sock) != b"", "the allowed client was refused"
            expect_counts(reactor, server, admitted=1)
        assert list(server.seen[0]["client_address"]) == me
    finally:
        reactor.close()
        server.server_close()


def test_a_network_allow_list_refuses_a_proxied_unix_client() -> None:
    """(Not from HAProxy 2.6, which sends LOCAL for its Unix-socket clients; any v2 sender
    may name AF_UNIX addresses): a TCP listener with ``allow=["192.0.2.0/24"]`` refuses a
    connection whose v2 header names Unix-socket addresses. (The Unix source path became the
    client address, which AccessRules.permits judged by the credential entries alone: none
    configured, so it was admitted.)
    """
    import struct

    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    addresses = b"/run/client.sock".ljust(108, b"\0") + b"/run/haproxy.sock".ljust(108, b"\0")
    header = signature + bytes([0x21, 0x31]) + struct.pack("!H", len(addresses)) + addresses
    reactor = Reactor()
    web = http_server()
    reactor.add_server(web, proxy_protocol="v2", allow=["192.0.2.0/24"])
    with reactor_thread(reactor):
        with client(web.server_address) as sock:
            sock.sendall(header + b"GET / HTTP/1.0\r\n\r\n")
            reply = read_all(sock)
        wait_for(lambda: reactor.server_stats(web)["requests"] == 1)
        stats = counts(reactor, web)
    web.server_close()
    assert reply == b"", f"a client with no IP address passed an allow list of networks: {reply[:40]!r}"
    assert stats == {**dict.fromkeys(ADMISSION_COUNTERS, 0), "refused_by_rule": 1}
