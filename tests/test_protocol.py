"""The Protocol API (``Reactor.create_server``, ``reactor.protocol``): one behavioural suite.

Stream connections run over every family (tcp4, tcp6, Unix stream) in plain
and TLS; the protocol callbacks run in the reactor's thread (the reactor runs
in a thread of the test), clients are blocking sockets in the test's thread.
Every wait is a poll with a deadline (``wait_for``) or a round trip through
the loop (``in_loop``), never a sleep. A representative subset runs under
``Prefork`` in a fresh interpreter, and so do the 10,000 connections.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import ssl
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reactor import DatagramProtocol, Protocol, Reactor, Transport
from reactor.protocol import MAX_READ, MIN_READ, READ_GROWTH, DatagramTransport, StreamServer
from support import ipv6_available, reactor_thread, run_python, wait_for

CLIENT_TIMEOUT = 5.0

STREAM_FAMILIES = ["tcp4", "tcp6", "unix"]
TCP_FAMILIES = ["tcp4", "tcp6"]


def needs(family: str) -> None:
    if family.endswith("6") and not ipv6_available():
        pytest.skip("IPv6 is not available")


def address_for(family: str, unix_dir: str) -> Any:
    if family in ("tcp4", "udp4"):
        return ("127.0.0.1", 0)
    if family in ("tcp6", "udp6"):
        return ("::1", 0)
    return os.path.join(unix_dir, "s")


# ------------------------------------------------------------------ a protocol that records

class Recorder(Protocol):
    """Records every callback (in the loop's thread) and checks the lifecycle rules as it goes."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.events: list[tuple[str, Any]] = []
        self.transport: Transport | None = None
        self.received = bytearray()
        self.violations: list[str] = []
        env.protocols.append(self)

    def _event(self, name: str, arg: Any = None) -> None:
        if not self.events and name != "made":
            self.violations.append(f"{name} before connection_made")
        if any(event == "lost" for event, _ in self.events):
            self.violations.append(f"{name} after connection_lost")
        reactor = self.env.reactor
        if not (reactor.in_loop() or not reactor.running):  # a tick, or close() aborting what is left
            self.violations.append(f"{name} while another thread runs the loop")
        self.events.append((name, arg))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    @property
    def lost(self) -> bool:
        return "lost" in self.names

    @property
    def lost_exc(self) -> Any:
        return next(arg for name, arg in self.events if name == "lost")

    def connection_made(self, transport: Any) -> None:
        self._event("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._event("data", data)
        self.received += data

    def eof_received(self) -> bool | None:
        self._event("eof")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._event("lost", exc)

    def pause_writing(self) -> None:
        self._event("pause_writing")

    def resume_writing(self) -> None:
        self._event("resume_writing")


class Echo(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(data)


# ------------------------------------------------------------------ the harness

class Env:
    """One served Protocol server and its clients."""

    def __init__(self, family: str, tls: bool, pki: Any, unix_dir: str) -> None:
        self.family = family
        self.tls = tls
        self.pki = pki
        self.unix_dir = unix_dir
        self.protocols: list[Recorder] = []
        self.clients: list[socket.socket] = []
        self.reactor = Reactor()
        self.server: StreamServer | None = None

    def serve(self, protocol: Callable[[Env], Recorder], **options: Any) -> StreamServer:
        if self.tls:
            options.setdefault("ssl_context", self.pki.server_context())
        options.setdefault("drain_timeout", 5.0)
        server = self.reactor.create_server(lambda: protocol(self), address_for(self.family, self.unix_dir),
                                            **options)
        assert isinstance(server, StreamServer)
        self.server = server
        return server

    def connect(self, *, rcvbuf: int | None = None, handshake: bool = True) -> socket.socket:
        assert self.server is not None
        sock = socket.socket(self.server.socket.family, socket.SOCK_STREAM)
        self.clients.append(sock)
        sock.settimeout(CLIENT_TIMEOUT)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(self.server.server_address)
        if self.tls and handshake:
            sock = self.pki.client_context().wrap_socket(sock, server_hostname="localhost")
            self.clients.append(sock)
        return sock

    def in_loop(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` in the loop's thread and return its result (a round trip)."""
        done = threading.Event()
        box: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                box.append((True, function(*args)))
            except BaseException as exc:  # handed back to the test's thread
                box.append((False, exc))
            finally:
                done.set()

        self.reactor.call_soon_threadsafe(run)
        assert done.wait(CLIENT_TIMEOUT), "the loop did not run a callback"
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def protocol(self, index: int = -1, *, count: int | None = None) -> Recorder:
        wanted = count if count is not None else (index + 1 if index >= 0 else 1)
        wait_for(lambda: len(self.protocols) >= wanted, timeout=CLIENT_TIMEOUT,
                 message=lambda: f"{wanted} connections made, {len(self.protocols)} so far")
        return self.protocols[index]

    def close_clients(self) -> None:
        for sock in self.clients:
            sock.close()
        self.clients.clear()

    def check(self) -> None:
        for protocol in self.protocols:
            assert not protocol.violations, protocol.violations
            names = protocol.names
            assert names[:1] == ["made"]
            assert names.count("lost") <= 1


@pytest.fixture(params=[(family, tls) for family in STREAM_FAMILIES for tls in (False, True)],
                ids=lambda p: f"{p[0]}-{'tls' if p[1] else 'plain'}")
def env(request: pytest.FixtureRequest, pki: Any, unix_dir: str) -> Iterator[Env]:
    family, tls = request.param
    needs(family)
    environment = Env(family, tls, pki, unix_dir)
    try:
        with reactor_thread(environment.reactor):
            try:
                yield environment
            finally:
                environment.close_clients()
    finally:
        environment.close_clients()
        environment.reactor.close()
    environment.check()


@pytest.fixture(params=TCP_FAMILIES)
def tcp_env(request: pytest.FixtureRequest, pki: Any, unix_dir: str) -> Iterator[Env]:
    needs(request.param)
    environment = Env(request.param, False, pki, unix_dir)
    with reactor_thread(environment.reactor):
        try:
            yield environment
        finally:
            environment.close_clients()
    environment.check()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF (a reset, or a TLS alert, after the data counts as EOF)."""
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, ssl.SSLError):
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def shut_write(sock: socket.socket) -> None:
    """The client's half-close; under TLS a bare TCP FIN (no close_notify), which servers take as EOF."""
    socket.socket.shutdown(sock, socket.SHUT_WR)


def small_send_buffer(transport: Any) -> None:
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


# ------------------------------------------------------------------ echo

def test_echo_many_messages_on_several_connections(env: Env) -> None:
    server = env.serve(Echo)
    clients = [env.connect() for _ in range(3)]
    for round_ in range(20):
        for index, client in enumerate(clients):
            message = b"message %d on %d\n" % (round_, index)
            client.sendall(message)
            assert recv_exactly(client, len(message)) == message
    big = os.urandom(300_000)
    clients[0].sendall(big)
    assert recv_exactly(clients[0], len(big)) == big
    for client in clients:
        client.close()
    wait_for(lambda: len(env.protocols) == 3 and all(p.lost for p in env.protocols), timeout=CLIENT_TIMEOUT)
    assert [p.lost_exc for p in env.protocols] == [None, None, None]
    assert all("eof" in p.names for p in env.protocols)
    wait_for(lambda: not server.transports, timeout=CLIENT_TIMEOUT)


# ------------------------------------------------------------------ writing: watermarks and a slow reader

TOTAL = 4 << 20
CHUNK = 16 << 10
HIGH, LOW = 64 << 10, 16 << 10


class Producer(Recorder):
    """Writes TOTAL bytes in CHUNKs, as fast as flow control allows, then closes."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        small_send_buffer(transport)
        transport.set_write_buffer_limits(high=HIGH, low=LOW)
        assert transport.get_write_buffer_limits() == (LOW, HIGH)
        self.sent = 0
        self.paused = False
        self.max_buffered = 0
        self.produce()

    def produce(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.paused and self.sent < TOTAL:
            transport.write(bytes([self.sent // CHUNK % 251]) * CHUNK)
            self.sent += CHUNK
            self.max_buffered = max(self.max_buffered, transport.get_write_buffer_size())
        if self.sent >= TOTAL and not transport.is_closing():
            transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        assert self.transport is not None
        assert self.transport.get_write_buffer_size() <= LOW
        self.paused = False
        self.produce()


def expected_stream() -> bytes:
    return b"".join(bytes([offset // CHUNK % 251]) * CHUNK for offset in range(0, TOTAL, CHUNK))


def test_slow_reader_pauses_the_writer_and_the_buffer_stays_within_the_marks(env: Env) -> None:
    env.serve(Producer)
    client = env.connect(rcvbuf=4096)
    producer = env.protocol()
    wait_for(lambda: "pause_writing" in producer.names, timeout=CLIENT_TIMEOUT, message="pause_writing() called")
    buffered = env.in_loop(producer.transport.get_write_buffer_size)  # type: ignore[union-attr]
    assert HIGH < buffered <= HIGH + CHUNK
    assert producer.sent < TOTAL  # the reader is slow: the producer really waits
    received = recv_all(client)
    assert len(received) == TOTAL and received == expected_stream()
    wait_for(lambda: producer.lost, timeout=CLIENT_TIMEOUT)
    assert producer.lost_exc is None
    assert producer.names.count("pause_writing") >= 1
    assert producer.names.count("resume_writing") >= 1
    assert producer.max_buffered <= HIGH + CHUNK


def test_write_buffer_limits_are_validated_and_a_lower_mark_pauses_at_once(tcp_env: Env) -> None:
    tcp_env.serve(Recorder)
    client = tcp_env.connect(rcvbuf=4096)
    protocol = tcp_env.protocol()
    transport = protocol.transport
    assert transport is not None
    assert tcp_env.in_loop(transport.get_write_buffer_limits) == (16 << 10, 64 << 10)
    with pytest.raises(ValueError):
        tcp_env.in_loop(transport.set_write_buffer_limits, 10, 20)

    def fill() -> int:
        small_send_buffer(transport)
        for _ in range(100):
            transport.write(b"x" * 8192)
        return transport.get_write_buffer_size()

    buffered = tcp_env.in_loop(fill)
    assert buffered > 0
    assert "pause_writing" in protocol.names  # above the default 64 KiB
    # The writes went out at once as far as the kernel took them: only the rest is buffered.
    assert buffered < 100 * 8192
    received = recv_exactly(client, 100 * 8192)
    assert received == b"x" * (100 * 8192)
    wait_for(lambda: "resume_writing" in protocol.names, timeout=CLIENT_TIMEOUT)
    assert tcp_env.in_loop(transport.get_write_buffer_size) == 0


def test_writelines_and_bytes_like_objects(tcp_env: Env) -> None:
    tcp_env.serve(Recorder)
    client = tcp_env.connect()
    transport = tcp_env.protocol().transport
    assert transport is not None
    tcp_env.in_loop(transport.writelines, [b"a", bytearray(b"b"), memoryview(b"c")])
    tcp_env.in_loop(transport.write, memoryview(b"xdx")[1:2])
    tcp_env.in_loop(transport.write, b"")
    assert recv_exactly(client, 4) == b"abcd"
    with pytest.raises(TypeError):
        tcp_env.in_loop(transport.write, "text")


# ------------------------------------------------------------------ reading: pause and resume

class PausedAtOnce(Recorder):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.pause_reading()


def test_pause_reading_in_connection_made_is_honoured_until_resumed(env: Env) -> None:
    env.serve(PausedAtOnce)
    client = env.connect()
    protocol = env.protocol()
    client.sendall(b"early")
    for _ in range(3):  # ticks in which readable bytes would have been delivered
        env.in_loop(lambda: None)
    assert "data" not in protocol.names
    transport = protocol.transport
    assert transport is not None
    assert env.in_loop(transport.is_reading) is False
    env.in_loop(transport.resume_reading)
    wait_for(lambda: bytes(protocol.received) == b"early", timeout=CLIENT_TIMEOUT)
    assert env.in_loop(transport.is_reading) is True
    # Paused again later, bytes wait; resumed, they arrive (under TLS, also bytes OpenSSL already decrypted).
    env.in_loop(transport.pause_reading)
    client.sendall(b"later")
    env.in_loop(lambda: None)
    env.in_loop(lambda: None)
    assert bytes(protocol.received) == b"early"
    env.in_loop(transport.resume_reading)
    wait_for(lambda: bytes(protocol.received) == b"earlylater", timeout=CLIENT_TIMEOUT)


def queued_bytes(transport: Any) -> int:
    """Bytes waiting in the kernel's receive queue of the transport's socket (encrypted under TLS)."""
    sock = transport.get_extra_info("socket")
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_reads_grow_for_a_bulk_sender_and_shrink_back_after_a_small_read(env: Env) -> None:
    env.serve(PausedAtOnce)
    client = env.connect()
    protocol = env.protocol()
    transport = protocol.transport
    assert transport is not None
    bulk = os.urandom(100_000)  # within the default receive queue of every family
    client.sendall(bulk)
    wait_for(lambda: env.in_loop(queued_bytes, transport) >= len(bulk), timeout=CLIENT_TIMEOUT)
    env.in_loop(transport.resume_reading)
    wait_for(lambda: len(protocol.received) == len(bulk), timeout=CLIENT_TIMEOUT)
    assert bytes(protocol.received) == bulk
    chunks = [len(data) for name, data in protocol.events if name == "data"]
    # Each read that fills what it asked for asks 16 times more: 256 B, 4 KiB, then 64 KiB
    # (under TLS a read returns one record at most, 16 KiB).
    assert chunks[:2] == [MIN_READ, MIN_READ * READ_GROWTH]
    assert max(chunks) <= MAX_READ
    if not env.tls:
        assert chunks[2] == MAX_READ
    # A small read brings the size back down: a burst that follows is read from 256 bytes up again.
    client.sendall(b"tiny")
    wait_for(lambda: protocol.received.endswith(b"tiny"), timeout=CLIENT_TIMEOUT)
    burst = os.urandom(1000)
    client.sendall(burst)
    wait_for(lambda: protocol.received.endswith(burst), timeout=CLIENT_TIMEOUT)
    assert [len(data) for name, data in protocol.events[-2:]] == [MIN_READ, len(burst) - MIN_READ]


def test_an_eof_that_arrives_while_reading_is_paused_waits_for_resume(env: Env) -> None:
    env.serve(PausedAtOnce)
    client = env.connect()
    protocol = env.protocol()
    client.sendall(b"then eof")
    shut_write(client)
    for _ in range(3):
        env.in_loop(lambda: None)
    assert protocol.names == ["made"]
    assert protocol.transport is not None
    env.in_loop(protocol.transport.resume_reading)
    wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    assert bytes(protocol.received) == b"then eof"
    assert protocol.names[-2:] == ["eof", "lost"]


class PauseAfterFirstByte(Recorder):
    """Pauses reading inside data_received: nothing more is delivered in that read loop."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.pause_reading()


def test_pause_reading_inside_data_received_stops_delivery_at_once(env: Env) -> None:
    env.serve(PauseAfterFirstByte)
    client = env.connect()
    protocol = env.protocol()
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=client.sendall, args=(payload,))
    sender.start()
    try:
        deliveries = 0
        while len(protocol.received) < len(payload):
            deliveries += 1
            wait_for(lambda: protocol.names.count("data") >= deliveries, timeout=CLIENT_TIMEOUT)
            for _ in range(2):
                env.in_loop(lambda: None)
            assert protocol.names.count("data") == deliveries  # paused: one delivery per resume
            assert protocol.transport is not None
            env.in_loop(protocol.transport.resume_reading)
    finally:
        sender.join(CLIENT_TIMEOUT)
    assert bytes(protocol.received) == payload


# ------------------------------------------------------------------ EOF and half-close

def test_eof_closes_the_transport_by_default(env: Env) -> None:
    env.serve(Echo)
    client = env.connect()
    client.sendall(b"last words")
    assert recv_exactly(client, 10) == b"last words"
    shut_write(client)
    assert recv_all(client) == b""
    protocol = env.protocol()
    wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    assert protocol.names[-2:] == ["eof", "lost"]
    assert protocol.lost_exc is None


class HalfClose(Recorder):
    """On EOF: answer, send EOF, and keep the transport (eof_received returns True)."""

    def eof_received(self) -> bool | None:
        super().eof_received()
        transport = self.transport
        assert transport is not None
        self.can_write_eof = transport.can_write_eof()
        transport.write(b"got: " + bytes(self.received))
        if self.can_write_eof:
            transport.write_eof()
            transport.write_eof()  # idempotent
            try:
                transport.write(b"more")
            except RuntimeError:
                self.write_after_eof_raised = True
        else:
            try:
                transport.write_eof()
            except NotImplementedError:
                self.write_eof_raised = True
        self.eof_handled = True
        return True


def test_half_close_eof_received_true_keeps_writing_and_write_eof(env: Env) -> None:
    env.serve(HalfClose)
    client = env.connect()
    client.sendall(b"question")
    protocol = env.protocol()
    wait_for(lambda: bytes(protocol.received) == b"question", timeout=CLIENT_TIMEOUT)
    shut_write(client)
    received = recv_all(client)
    wait_for(lambda: getattr(protocol, "eof_handled", False), timeout=CLIENT_TIMEOUT)
    transport = protocol.transport
    assert transport is not None
    if env.tls:
        # TLS cannot half-close: can_write_eof() is False, write_eof() raises, and EOF closes the connection.
        assert protocol.can_write_eof is False and protocol.write_eof_raised
        # A client's bare FIN is a ragged EOF: OpenSSL answers it with an alert and ends the
        # session, so the reply is lost (and the write that tried may be the error that ends it).
        assert received in (b"", b"got: question")
        wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
        assert protocol.lost_exc is None or type(protocol.lost_exc).__name__ == "SSLEOFError"
        return
    else:
        assert received == b"got: question"
        assert protocol.can_write_eof is True and protocol.write_after_eof_raised
        for _ in range(2):
            env.in_loop(lambda: None)
        assert not protocol.lost  # both directions are shut, but the protocol still owns the transport
        assert env.in_loop(transport.is_closing) is False
        env.in_loop(transport.close)
        wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    assert protocol.lost_exc is None


def test_write_eof_after_buffered_data_sends_the_data_first(tcp_env: Env) -> None:
    tcp_env.serve(Recorder)
    client = tcp_env.connect(rcvbuf=4096)
    transport = tcp_env.protocol().transport
    assert transport is not None
    payload = os.urandom(1 << 20)

    def write_then_eof() -> int:
        small_send_buffer(transport)
        transport.write(payload)
        transport.write_eof()
        return transport.get_write_buffer_size()

    assert tcp_env.in_loop(write_then_eof) > 0
    assert recv_all(client) == payload
    client.sendall(b"still open the other way")
    protocol = tcp_env.protocol()
    wait_for(lambda: bytes(protocol.received) == b"still open the other way", timeout=CLIENT_TIMEOUT)


# ------------------------------------------------------------------ abort, reset, write after close

def test_abort_discards_the_buffer_and_calls_connection_lost_once(env: Env) -> None:
    env.serve(Recorder)
    client = env.connect(rcvbuf=4096)
    protocol = env.protocol()
    transport = protocol.transport
    assert transport is not None

    def fill_then_abort() -> tuple[int, int, bool]:
        small_send_buffer(transport)
        transport.write(b"x" * (1 << 20))
        before = transport.get_write_buffer_size()
        transport.abort()
        transport.abort()  # idempotent
        transport.close()  # no-op after abort
        return before, transport.get_write_buffer_size(), transport.is_closing()

    before, after, closing = env.in_loop(fill_then_abort)
    assert before > 0 and after == 0 and closing
    received = recv_all(client)
    assert len(received) < 1 << 20
    wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    assert protocol.lost_exc is None
    for _ in range(2):
        env.in_loop(lambda: None)
    assert protocol.names.count("lost") == 1


def test_peer_reset_reaches_connection_lost_with_the_error(env: Env) -> None:
    env.serve(Echo)
    client = env.connect()
    client.sendall(b"hi")
    assert recv_exactly(client, 2) == b"hi"
    protocol = env.protocol()
    if env.family == "unix":
        # A Unix peer that closes with unread bytes resets the connection.
        assert protocol.transport is not None
        env.in_loop(protocol.transport.write, b"never read")
        wait_for(lambda: env.in_loop(protocol.transport.get_write_buffer_size) == 0, timeout=CLIENT_TIMEOUT)
    else:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    exc = protocol.lost_exc
    if env.tls and env.family == "unix":
        # Before Python 3.13 the ssl module loses a reset's errno and reports an EOF, and a
        # Unix socket keeps no state that tells them apart.
        assert exc is None or isinstance(exc, ConnectionResetError), repr(exc)
    else:
        assert isinstance(exc, ConnectionResetError), repr(exc)
        assert "eof" not in protocol.names


class CloseThenWrite(Recorder):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        transport = self.transport
        assert transport is not None
        transport.write(b"bye")
        transport.close()
        transport.close()  # idempotent
        transport.write(b"dropped 1")
        transport.write(b"dropped 2")


def test_write_after_close_is_dropped_with_one_warning(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="reactor.protocol")
    env.serve(CloseThenWrite)
    client = env.connect()
    client.sendall(b"go")
    assert recv_all(client) == b"bye"
    protocol = env.protocol()
    wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    warnings = [r for r in caplog.records if "after close" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].levelno == logging.WARNING
    assert protocol.lost_exc is None


# ------------------------------------------------------------------ a callback that raises

class Boom(Echo):
    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise ValueError("boom from data_received")
        super().data_received(data)


def test_a_callback_that_raises_is_logged_and_aborts_only_its_connection(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor.protocol")
    env.serve(Boom)
    other = env.connect()
    other.sendall(b"before")
    assert recv_exactly(other, 6) == b"before"
    victim = env.connect()
    victim.sendall(b"ok")
    assert recv_exactly(victim, 2) == b"ok"
    victim.sendall(b"boom")
    assert recv_all(victim) == b""
    casualty = env.protocols[1]
    wait_for(lambda: casualty.lost, timeout=CLIENT_TIMEOUT)
    assert isinstance(casualty.lost_exc, ValueError)
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
    assert "data_received" in records[0].getMessage()
    # The other connection, and new ones, go on.
    other.sendall(b"after")
    assert recv_exactly(other, 5) == b"after"
    fresh = env.connect()
    fresh.sendall(b"fresh")
    assert recv_exactly(fresh, 5) == b"fresh"
    assert not env.protocols[0].lost


class FailsToStart(Recorder):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        raise RuntimeError("no")


def test_connection_made_that_raises_closes_the_connection(tcp_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor.protocol")
    tcp_env.serve(FailsToStart)
    client = tcp_env.connect()
    assert recv_all(client) == b""
    protocol = tcp_env.protocol()
    wait_for(lambda: protocol.lost, timeout=CLIENT_TIMEOUT)
    assert isinstance(protocol.lost_exc, RuntimeError)
    assert protocol.names == ["made", "lost"]


class LostRaises(Echo):
    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        raise RuntimeError("from connection_lost")


def test_connection_lost_that_raises_is_logged_and_the_socket_closed(
        tcp_env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="reactor.protocol")
    server = tcp_env.serve(LostRaises)
    client = tcp_env.connect()
    client.close()
    protocol = tcp_env.protocol()
    wait_for(lambda: protocol.lost and not server.transports, timeout=CLIENT_TIMEOUT)
    wait_for(lambda: any("connection_lost" in r.getMessage() for r in caplog.records), timeout=CLIENT_TIMEOUT)
    second = tcp_env.connect()
    second.sendall(b"x")
    assert recv_exactly(second, 1) == b"x"


# ------------------------------------------------------------------ leaving: drain and abort

class SendsOnRequest(Recorder):
    """On any data: writes PAYLOAD (more than the kernel takes from a slow reader)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        small_send_buffer(transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(PAYLOAD)


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_remove_server_flushes_buffered_data_then_closes(env: Env) -> None:
    server = env.serve(SendsOnRequest)
    client = env.connect(rcvbuf=4096)
    client.sendall(b"go")
    protocol = env.protocol()
    wait_for(lambda: "data" in protocol.names, timeout=CLIENT_TIMEOUT)
    transport = protocol.transport
    assert transport is not None
    assert env.in_loop(transport.get_write_buffer_size) > 0  # data in flight
    removed = threading.Event()
    env.reactor.call_soon_threadsafe(lambda: env.reactor.remove_server(server, on_removed=removed.set))
    wait_for(lambda: env.in_loop(transport.is_closing), timeout=CLIENT_TIMEOUT)
    assert not removed.is_set()
    assert recv_all(client) == PAYLOAD
    assert removed.wait(CLIENT_TIMEOUT)
    assert protocol.names.count("lost") == 1 and protocol.lost_exc is None
    server.server_close()


def test_reactor_close_drains_connections_with_data_in_flight(pki: Any, unix_dir: str) -> None:
    env = Env("tcp4", False, pki, unix_dir)
    try:
        env.serve(SendsOnRequest)
        clients = [env.connect(rcvbuf=4096) for _ in range(3)]
        for client in clients:
            client.sendall(b"go")
        env.reactor.run_until(lambda: len(env.protocols) == 3 and all("data" in p.names for p in env.protocols),
                              CLIENT_TIMEOUT)
        results: list[bytes] = []
        readers = [threading.Thread(target=lambda c=client: results.append(recv_all(c))) for client in clients]
        for reader in readers:
            reader.start()
        env.reactor.close()  # drains: flushes every buffer, then closes
        for reader in readers:
            reader.join(CLIENT_TIMEOUT)
        assert results == [PAYLOAD] * 3
        assert all(p.names.count("lost") == 1 and p.lost_exc is None for p in env.protocols)
    finally:
        env.close_clients()
        env.reactor.close()
    env.check()


def test_connections_are_aborted_at_the_drain_deadline(tcp_env: Env) -> None:
    server = tcp_env.serve(SendsOnRequest, drain_timeout=0.3)
    client = tcp_env.connect(rcvbuf=4096)
    client.sendall(b"go")
    protocol = tcp_env.protocol()
    wait_for(lambda: "data" in protocol.names, timeout=CLIENT_TIMEOUT)
    removed = threading.Event()
    started = time.monotonic()
    tcp_env.reactor.call_soon_threadsafe(lambda: tcp_env.reactor.remove_server(server, on_removed=removed.set))
    assert removed.wait(CLIENT_TIMEOUT)  # the client never reads: aborted after drain_timeout
    assert time.monotonic() - started >= 0.25
    assert protocol.names.count("lost") == 1
    assert len(recv_all(client)) < len(PAYLOAD)
    server.server_close()


def test_reactor_close_aborts_at_the_drain_deadline(pki: Any, unix_dir: str) -> None:
    env = Env("tcp4", False, pki, unix_dir)
    try:
        env.serve(SendsOnRequest, drain_timeout=0.3)
        client = env.connect(rcvbuf=4096)
        client.sendall(b"go")
        env.reactor.run_until(lambda: bool(env.protocols) and "data" in env.protocols[0].names, CLIENT_TIMEOUT)
        started = time.monotonic()
        env.reactor.close()  # the client never reads: aborted after drain_timeout, inside close()
        assert 0.25 <= time.monotonic() - started < CLIENT_TIMEOUT
        protocol = env.protocols[0]
        assert protocol.names.count("lost") == 1 and protocol.lost_exc is None
        assert len(recv_all(client)) < len(PAYLOAD)
    finally:
        env.close_clients()
        env.reactor.close()
    env.check()


def test_an_idle_connection_is_closed_at_once_when_the_server_leaves(env: Env) -> None:
    server = env.serve(Echo)
    client = env.connect()
    client.sendall(b"x")
    assert recv_exactly(client, 1) == b"x"
    removed = threading.Event()
    env.reactor.call_soon_threadsafe(lambda: env.reactor.remove_server(server, on_removed=removed.set))
    assert removed.wait(CLIENT_TIMEOUT)
    assert recv_all(client) == b""
    assert env.protocol().lost_exc is None
    server.server_close()


# ------------------------------------------------------------------ what a transport knows

def test_get_extra_info(env: Env) -> None:
    env.serve(Recorder)
    client = env.connect()
    protocol = env.protocol()
    transport = protocol.transport
    assert transport is not None
    assert env.server is not None

    def facts() -> dict[str, Any]:
        names = ["peername", "sockname", "socket", "client_address", "proxy_address", "request_info",
                 "ssl_object", "peercert", "cipher", "sslcontext"]
        return {name: transport.get_extra_info(name) for name in names}

    info = env.in_loop(facts)
    assert info["sockname"] == env.server.server_address
    assert isinstance(info["socket"], socket.socket)
    assert info["proxy_address"] is None
    if env.family != "unix":
        assert info["peername"][:2] == client.getsockname()[:2]
        assert info["client_address"][:2] == client.getsockname()[:2]
    if env.tls:
        assert isinstance(info["ssl_object"], ssl.SSLSocket)
        assert info["peercert"] is None  # no client certificate asked for
        assert isinstance(info["cipher"], tuple)
        assert isinstance(info["sslcontext"], ssl.SSLContext)
        assert info["request_info"] is not None
    else:
        assert info["ssl_object"] is None and info["cipher"] is None
    assert env.in_loop(transport.get_extra_info, "nonsense", 42) == 42
    assert env.in_loop(transport.get_protocol) is protocol
    assert "Transport" in repr(transport)


def test_proxy_v1_header_gives_the_client_address_and_the_proxy_address(pki: Any, unix_dir: str) -> None:
    env = Env("tcp4", False, pki, unix_dir)
    with reactor_thread(env.reactor):
        try:
            env.serve(Recorder, proxy_protocol="v1")
            client = env.connect()
            client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\nhello")
            protocol = env.protocol()
            wait_for(lambda: bytes(protocol.received) == b"hello", timeout=CLIENT_TIMEOUT)
            transport = protocol.transport
            assert transport is not None
            assert env.in_loop(transport.get_extra_info, "client_address") == ("192.0.2.7", 40000)
            assert env.in_loop(transport.get_extra_info, "proxy_address") == client.getsockname()
            assert env.in_loop(transport.get_extra_info, "peername") == client.getsockname()
        finally:
            env.close_clients()
    env.check()


# ------------------------------------------------------------------ admission and counters

@pytest.mark.parametrize("rule", ["deny", "allow"])
def test_access_rules_refuse_before_any_protocol_is_made(tcp_env: Env, rule: str) -> None:
    loopback = "127.0.0.0/8" if tcp_env.family == "tcp4" else "::1/128"
    others = "192.0.2.0/24" if tcp_env.family == "tcp4" else "2001:db8::/32"
    server = tcp_env.serve(Echo, **({"deny": [loopback]} if rule == "deny" else {"allow": [others]}))
    client = tcp_env.connect()
    assert recv_all(client) == b""
    wait_for(lambda: tcp_env.reactor.server_stats(server)["refused_by_rule"] == 1, timeout=CLIENT_TIMEOUT)
    assert tcp_env.protocols == []


def test_max_connections_holds_the_next_client_until_one_closes(env: Env) -> None:
    server = env.serve(Echo, max_connections=2)
    first, second = env.connect(), env.connect()
    for client in (first, second):
        client.sendall(b"in")
        assert recv_exactly(client, 2) == b"in"
    third = env.connect(handshake=False)  # waits in the backlog: no handshake yet under TLS
    for _ in range(3):
        env.in_loop(lambda: None)
    assert len(env.protocols) == 2
    stats = env.reactor.server_stats(server)
    assert stats["open"] == 2
    first.close()
    if env.tls:
        third = env.pki.client_context().wrap_socket(third, server_hostname="localhost")
        env.clients.append(third)
    third.sendall(b"third")
    assert recv_exactly(third, 5) == b"third"
    assert env.protocols[0].lost
    wait_for(lambda: env.reactor.server_stats(server)["admitted"] == 3, timeout=CLIENT_TIMEOUT)


def test_stats_count_connections(tcp_env: Env) -> None:
    server = tcp_env.serve(Echo)
    for _ in range(5):
        client = tcp_env.connect()
        client.sendall(b"x")
        assert recv_exactly(client, 1) == b"x"
        client.close()
    wait_for(lambda: tcp_env.reactor.server_stats(server)["requests"] == 5, timeout=CLIENT_TIMEOUT)
    stats = tcp_env.reactor.server_stats(server)
    assert stats["dispatched"] == 5 and stats["dropped"] == 0
    wait_for(lambda: not server.transports, timeout=CLIENT_TIMEOUT)


def test_create_server_refuses_a_thread_pool(unix_dir: str) -> None:
    from reactor import ThreadPool

    with Reactor() as reactor:
        pool = ThreadPool(2)
        with pytest.raises(ValueError, match="loop's thread"):
            reactor.create_server(Echo, ("127.0.0.1", 0), dispatch=pool)


# ------------------------------------------------------------------ datagrams

class DatagramEcho(DatagramProtocol):
    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.transport: DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.log.append(("made", threading.current_thread().name))
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.log.append(("datagram", data))
        assert self.transport is not None
        if data.startswith(b"to:"):
            self.transport.sendto(b"x", eval(data[3:].decode()))  # a bad destination, from the test
        else:
            self.transport.sendto(data, addr)

    def error_received(self, exc: OSError) -> None:
        self.log.append(("error", exc))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.log.append(("lost", exc))


@pytest.mark.parametrize("family", ["udp4", "udp6", "unix-dgram"])
def test_datagram_protocol(family: str, unix_dir: str) -> None:
    needs(family)
    log: list[tuple[str, Any]] = []
    reactor = Reactor()
    server = reactor.create_server(lambda: DatagramEcho(log), address_for(family, unix_dir), type=socket.SOCK_DGRAM,
                                   max_packet_size=1024)
    assert log == [("made", threading.current_thread().name)]  # made when hosting starts
    with reactor_thread(reactor, close=False), \
            socket.socket(server.socket.family, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.bind(os.path.join(unix_dir, "c") if family == "unix-dgram" else (server.server_address[0], 0))
        client.sendto(b"hello", server.server_address)
        assert client.recv(2048) == b"hello"
        client.sendto(b"x" * 2000, server.server_address)  # too large: dropped, never cut
        client.sendto(b"x" * 1024, server.server_address)  # exactly the size: taken
        assert client.recv(2048) == b"x" * 1024
        assert server.truncated_datagrams == 1
        assert reactor.server_stats(server)["dropped"] == 1
        assert ("datagram", b"x" * 1024) in log and not any(len(d) == 2000 for n, d in log if n == "datagram")
        bad = {"udp4": ("255.255.255.255", 9), "udp6": ("ff02::1", 9, 0, 99999),
               "unix-dgram": os.path.join(unix_dir, "nobody")}[family]
        client.sendto(b"to:" + repr(bad).encode(), server.server_address)
        wait_for(lambda: any(name == "error" for name, _ in log), timeout=CLIENT_TIMEOUT)
        error = next(arg for name, arg in log if name == "error")
        assert isinstance(error, OSError)
        client.sendto(b"still", server.server_address)
        assert client.recv(2048) == b"still"
        removed = threading.Event()
        reactor.call_soon_threadsafe(lambda: reactor.remove_server(server, on_removed=removed.set))
        assert removed.wait(CLIENT_TIMEOUT)
    reactor.close()
    server.server_close()
    assert log[-1] == ("lost", None)
    assert [name for name, _ in log].count("lost") == 1


class FloodingDatagrams(DatagramProtocol):
    """Answers one datagram with many, to a peer that does not read: the queue fills, then drops."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        for _ in range(3000):
            self.transport.sendto(b"y" * 1000, addr)
        self.log.append(f"queued {self.transport.get_write_buffer_size()}")

    def pause_writing(self) -> None:
        self.log.append("pause_writing")

    def resume_writing(self) -> None:
        self.log.append("resume_writing")

    def error_received(self, exc: OSError) -> None:
        self.log.append("error")


def test_datagram_send_queue_is_bounded_and_flow_controlled(unix_dir: str) -> None:
    log: list[str] = []
    reactor = Reactor()
    server = reactor.create_server(lambda: FloodingDatagrams(log), os.path.join(unix_dir, "s"), type=socket.SOCK_DGRAM)
    with reactor_thread(reactor), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.bind(os.path.join(unix_dir, "c"))
        client.sendto(b"go", server.server_address)
        wait_for(lambda: any(entry.startswith("queued") for entry in log), timeout=CLIENT_TIMEOUT)
        assert "pause_writing" in log and "error" in log  # the queue's bound reached: drops are told
        received = 0
        while "resume_writing" not in log:
            assert client.recv(2048) == b"y" * 1000
            received += 1
            assert received <= 3000
        assert received > 0


def test_datagram_limit_above_one_read_still_drops_what_is_larger(unix_dir: str) -> None:
    # A max_packet_size above MAX_READ is read through a buffer of the server's (see get_request).
    from reactor.protocol import MAX_READ
    limit = MAX_READ + 40_000
    log: list[tuple[str, Any]] = []
    reactor = Reactor()
    server = reactor.create_server(lambda: DatagramEcho(log), os.path.join(unix_dir, "s"), type=socket.SOCK_DGRAM,
                                   max_packet_size=limit)
    with reactor_thread(reactor), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.settimeout(CLIENT_TIMEOUT)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * limit)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * limit)
        client.bind(os.path.join(unix_dir, "c"))
        client.sendto(b"y" * (limit + 1), server.server_address)  # dropped, never cut
        client.sendto(b"x" * limit, server.server_address)
        assert client.recv(2 * limit) == b"x" * limit
        assert server.truncated_datagrams == 1
        assert reactor.server_stats(server)["dropped"] == 1
    server.server_close()


class BatchRecorder(DatagramProtocol):
    """Records each datagram with the tick it arrived in; ``raise`` raises, ``stop`` stops the reactor."""

    def __init__(self, reactor: Reactor, log: list[tuple[int, bytes]]) -> None:
        self.reactor = reactor
        self.log = log
        self.tick = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.log.append((self.tick, data))
        if data == b"raise":
            raise ValueError("a datagram_received that raises")
        if data == b"stop":
            self.reactor.stop()


def test_datagram_server_serves_a_batch_per_wakeup_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    from reactor.protocol import DATAGRAMS_PER_WAKEUP
    log: list[tuple[int, bytes]] = []
    reactor = Reactor()
    protocol = BatchRecorder(reactor, log)
    server = reactor.create_server(lambda: protocol, ("127.0.0.1", 0), type=socket.SOCK_DGRAM, max_packet_size=100)
    burst = [b"%d" % i for i in range(DATAGRAMS_PER_WAKEUP + 10)]
    burst[3], burst[5] = b"raise", b"x" * 101  # a failing callback and a datagram over the limit, mid-batch
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client, caplog.at_level(logging.ERROR):
            client.bind(("127.0.0.1", 0))
            for datagram in burst:
                client.sendto(datagram, server.server_address)
            client.sendto(b"stop", server.server_address)
            client.sendto(b"after", server.server_address)
            served = len(burst) - 1 + 2

            def tick() -> bool:
                if reactor.stopping:
                    reactor.serve_forever()  # returns at once, and the reactor takes requests again
                protocol.tick += 1
                reactor.run_once(1.0)
                return len(log) == served

            wait_for(tick, timeout=CLIENT_TIMEOUT, interval=0)
        wanted = [d for d in burst if len(d) <= 100] + [b"stop", b"after"]
        assert [data for _, data in log] == wanted  # in order, the one after the failure too
        per_tick = [sum(1 for t, _ in log if t == n) for n in range(1, protocol.tick + 1)]
        assert max(per_tick) <= DATAGRAMS_PER_WAKEUP
        stop_tick = next(t for t, data in log if data == b"stop")
        assert all(t > stop_tick for t, data in log if data == b"after")  # nothing taken after stop()
        assert "a datagram_received that raises" in caplog.text
        assert server.truncated_datagrams == 1
        stats = reactor.server_stats(server)
        assert stats["requests"] == served and stats["dispatched"] == served and stats["dropped"] == 1
    finally:
        reactor.close()
        server.server_close()


# ------------------------------------------------------------------ Prefork, in a fresh interpreter

PREFORK_SCRIPT = r"""
import os, socket, ssl, sys, threading
from reactor import Prefork, Protocol, Reactor
from support import reactor_thread, wait_for
from pki import make_pki
from pathlib import Path

family, use_tls, workdir, threads = sys.argv[1], sys.argv[2] == "tls", sys.argv[3], int(sys.argv[4])
PAYLOAD = bytes(range(256)) * 4096

class Echo(Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    def data_received(self, data):
        if data == b"boom":
            raise ValueError("boom")
        if data == b"payload":
            self.transport.write(PAYLOAD)
        else:
            self.transport.write(b"%d:" % os.getpid() + data)

options = {}
if use_tls:
    pki = make_pki(Path(workdir))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.cert, pki.key)
    client_context = ssl.create_default_context(cafile=str(pki.ca))
    options["ssl_context"] = server_context
address = ("127.0.0.1", 0) if family == "tcp4" else os.path.join(workdir, "s")
reactor = Reactor()
server = reactor.create_server(Echo, address, dispatch=Prefork(2, graceful_timeout=10, threads=threads), **options)

def connect(rcvbuf=None):
    sock = socket.socket(server.socket.family, socket.SOCK_STREAM)
    sock.settimeout(10)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(server.server_address)
    return client_context.wrap_socket(sock, server_hostname="localhost") if use_tls else sock

def ask(sock, message):
    sock.sendall(message)
    reply = sock.recv(1000)
    pid, _, echoed = reply.partition(b":")
    assert echoed == message, reply
    return int(pid)

def read_all(sock, out):
    data = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    out.append(bytes(data))

slow = None
results = []
with reactor_thread(reactor):
    keep = connect()
    pids = {ask(connect(), b"hello %d" % i) for i in range(20)}
    assert os.getpid() not in pids, pids
    victim = connect()
    ask(victim, b"ok")
    victim.sendall(b"boom")
    assert victim.recv(100) == b""
    assert ask(keep, b"still") in pids
    wait_for(lambda: reactor.server_stats(server)["requests"] >= 22, timeout=20)
    slow = connect(rcvbuf=4096)
    slow.sendall(b"payload")
    assert slow.recv(1) == PAYLOAD[:1]
    reader = threading.Thread(target=read_all, args=(slow, results))
    reader.start()
    # leaving the block stops the reactor; close() drains the workers: data in flight is flushed
reader.join(20)
assert results == [PAYLOAD[1:]], [len(r) for r in results]
keep.close(); victim.close(); slow.close()
print("pids", len(pids))
print("ok")
"""


@pytest.mark.parametrize("family,tls,threads", [("tcp4", False, 0), ("unix", True, 0), ("tcp4", False, 2)],
                         ids=["tcp4-plain", "unix-tls", "tcp4-plain-threads"])
def test_prefork_serves_protocols_in_worker_processes(family: str, tls: bool, threads: int, unix_dir: str) -> None:
    # With threads, a worker's pool thread takes each connection and hands it to the worker's loop.
    result = run_python(PREFORK_SCRIPT, family, "tls" if tls else "plain", unix_dir, str(threads), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "ok", result.stdout + result.stderr
    assert "boom" in result.stderr  # the worker logged the callback that raised


# ------------------------------------------------------------------ 10,000 connections

CONNECTIONS = 10_000

C10K_SERVER = r"""
import resource, socket, subprocess, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
needed = int(sys.argv[1]) + 200
if hard != resource.RLIM_INFINITY and hard < needed:
    print(f"skip: RLIMIT_NOFILE hard limit {hard} < {needed}: cannot hold {sys.argv[1]} connections")
    sys.exit(0)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else needed, hard))
from reactor import Protocol, Reactor

count = int(sys.argv[1])
state = {"made": 0, "answered": 0, "lost": 0, "peak": 0}

class Echo(Protocol):
    def connection_made(self, transport):
        self.transport = transport
        state["made"] += 1
        state["peak"] = max(state["peak"], len(server.transports))
    def data_received(self, data):
        state["answered"] += 1
        self.transport.write(data)
    def connection_lost(self, exc):
        state["lost"] += 1

reactor = Reactor()
server = reactor.create_server(Echo, ("127.0.0.1", 0))
started = time.monotonic()
client = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(server.server_address[1]), str(count)],
                          stdout=subprocess.PIPE, text=True)
reactor.run_until(lambda: client.poll() is not None or state["lost"] == count, timeout=120)
reactor.run_until(lambda: state["lost"] == count, timeout=10)
output = client.communicate(timeout=10)[0]
reactor.close()
print(output.strip())
print("server", state["made"], state["answered"], state["lost"], state["peak"], f"{time.monotonic() - started:.1f}s")
"""

C10K_CLIENT = r"""
import resource, selectors, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, count = int(sys.argv[1]), int(sys.argv[2])
selector = selectors.DefaultSelector()
socks, connecting, connected = [], set(), 0
MAX_PENDING = 500
while connected < count:
    while len(socks) < count and len(connecting) < MAX_PENDING:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
        connecting.add(sock)
        selector.register(sock, selectors.EVENT_WRITE)
    for key, _ in selector.select(10):
        sock = key.fileobj
        selector.unregister(sock)
        connecting.discard(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        assert error == 0, f"connect failed: {error}"
        connected += 1
# Every connection is open now: ask on each, expect one answer on each.
for index, sock in enumerate(socks):
    sock.send(b"%d\n" % index)
    selector.register(sock, selectors.EVENT_READ, index)
answered = 0
while answered < count:
    events = selector.select(20)
    assert events, f"no answer within 20 s ({answered} of {count})"
    for key, _ in events:
        assert key.fileobj.recv(100) == b"%d\n" % key.data
        selector.unregister(key.fileobj)
        answered += 1
for sock in socks:
    sock.close()
print("client", connected, answered)
"""


def test_ten_thousand_connections_each_answered_once() -> None:
    started = time.monotonic()
    result = run_python(C10K_SERVER, str(CONNECTIONS), C10K_CLIENT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    if result.stdout.startswith("skip:"):
        pytest.skip(result.stdout.strip())
    lines = result.stdout.splitlines()
    assert lines[0] == f"client {CONNECTIONS} {CONNECTIONS}", result.stdout + result.stderr
    server = lines[1].split()
    assert server[1:5] == [str(CONNECTIONS)] * 4, result.stdout  # made, answered, lost, all open at once
    assert time.monotonic() - started < 60, result.stdout
