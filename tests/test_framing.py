"""Framed message handlers (``reactor.framing``): the framers alone, then message mode on a reactor.

The framers are pure: fed every message split at every byte boundary, and
many messages at once, they must find the same messages, and their limits
must hold before anything is buffered beyond them. On a reactor, a server
whose handler is a framed one is served a message at a time under every
dispatch strategy; the same class also serves under the stdlib's blocking
``TCPServer``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import socketserver as std_socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reactor import Dispatch, Inline, Reactor, ThreadPool, request_info, socketserver
from reactor.framing import (FrameError, LengthPrefixedRequestHandler, LineRequestHandler, MessageRequestHandler,
                            next_message)
from support import ipv6_available, reactor_thread, spawn_python, wait_for

CLIENT_TIMEOUT = 5.0


# ------------------------------------------------------------------ the framers, without sockets

def framer(cls: type[MessageRequestHandler], **attributes: Any) -> MessageRequestHandler:
    """A handler instance with no connection: only its framing is used."""
    handler = cls.__new__(cls)
    for name, value in attributes.items():
        setattr(handler, name, value)
    return handler


def feed(handler: MessageRequestHandler, chunks: list[bytes]) -> tuple[list[Any], bytes]:
    """The messages found as ``chunks`` arrive one after another, and the bytes left over."""
    buffer = bytearray()
    messages = []
    for chunk in chunks:
        buffer += chunk
        while (message := next_message(handler, buffer)) is not None:
            messages.append(message)
    return messages, bytes(buffer)


def every_split(cls: type[MessageRequestHandler], stream: bytes, expected: list[Any], **attributes: Any) -> None:
    """``stream`` in one read, byte by byte, and cut in two at every boundary: always ``expected``."""
    assert feed(framer(cls, **attributes), [stream]) == (expected, b"")
    assert feed(framer(cls, **attributes), [stream[i:i + 1] for i in range(len(stream))]) == (expected, b"")
    for cut in range(len(stream) + 1):
        assert feed(framer(cls, **attributes), [stream[:cut], stream[cut:]]) == (expected, b""), cut
    for first in range(len(stream) + 1):  # and in three pieces
        for second in range(first, len(stream) + 1, 3):
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert feed(framer(cls, **attributes), chunks) == (expected, b""), (first, second)


def test_lines_are_found_at_every_split_and_many_per_read() -> None:
    stream = b"hello\nworld\r\n\n\r\nlast one\n"
    every_split(LineRequestHandler, stream, [b"hello", b"world", b"", b"", b"last one"])
    every_split(LineRequestHandler, stream, [b"hello", b"world\r", b"", b"\r", b"last one"], strip_cr=False)


def test_many_lines_in_one_read() -> None:
    lines = [f"line {n}".encode() for n in range(1000)]
    messages, rest = feed(framer(LineRequestHandler), [b"".join(line + b"\n" for line in lines) + b"partial"])
    assert messages == lines
    assert rest == b"partial"


def test_a_line_longer_than_max_line_is_refused_as_soon_as_it_is_too_long() -> None:
    handler = framer(LineRequestHandler, max_line=8)
    assert feed(handler, [b"1234567\n"]) == ([b"1234567"], b"")  # 8 bytes with the newline: fits
    with pytest.raises(FrameError, match="max_line=8"):
        feed(framer(LineRequestHandler, max_line=8), [b"12345678\n"])
    with pytest.raises(FrameError):  # no newline in the first 8 bytes: refused before more arrive
        feed(framer(LineRequestHandler, max_line=8), [b"1234", b"5678"])
    # bytes after a complete line do not count against it
    assert feed(framer(LineRequestHandler, max_line=8), [b"ab\ncdefg"]) == ([b"ab"], b"cdefg")


class SpyBuffer(bytearray):
    """Records where each newline search starts."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[int] = []

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        self.starts.append(0 if start is None else start)  # no start: from the beginning
        return super().find(sub, start, end)


def test_the_line_search_starts_where_the_previous_one_stopped() -> None:
    handler = framer(LineRequestHandler)
    buffer = SpyBuffer()
    for byte in b"abcdef":
        buffer.append(byte)
        assert next_message(handler, buffer) is None
    buffer += b"\nxy"
    assert next_message(handler, buffer) == b"abcdef"
    assert next_message(handler, buffer) is None
    assert buffer.starts == [0, 1, 2, 3, 4, 5, 6, 0]  # each byte looked at once; after a line, from 0


@pytest.mark.parametrize("prefix", [2, 4])
def test_length_prefixed_messages_are_found_at_every_split(prefix: int) -> None:
    payloads = [b"hello", b"", b"\x00\n\xff" * 3, b"x"]
    stream = b"".join(len(p).to_bytes(prefix, "big") + p for p in payloads)
    every_split(LengthPrefixedRequestHandler, stream, payloads, prefix=prefix)


def test_netstrings_are_found_at_every_split() -> None:
    payloads = [b"hello", b"", b"1:2,", b"x" * 12]
    stream = b"".join(b"%d:%s," % (len(p), p) for p in payloads)
    every_split(LengthPrefixedRequestHandler, stream, payloads, prefix="netstring")


@pytest.mark.parametrize("prefix", [2, 4])
def test_a_declared_length_over_max_length_is_refused_at_the_header(prefix: int) -> None:
    handler = framer(LengthPrefixedRequestHandler, prefix=prefix, max_length=10)
    assert feed(handler, [(10).to_bytes(prefix, "big") + b"x" * 10]) == ([b"x" * 10], b"")
    with pytest.raises(FrameError, match="max_length=10"):
        feed(framer(LengthPrefixedRequestHandler, prefix=prefix, max_length=10), [(11).to_bytes(prefix, "big")])


@pytest.mark.parametrize("stream", [b"12:" + b"x" * 12 + b",", b"123", b"abc:", b"1a:", b"01:x,", b":x,",
                                    b"3:abc;", b"-1:x,"])
def test_malformed_or_too_long_netstrings_are_refused(stream: bytes) -> None:
    with pytest.raises(FrameError):
        feed(framer(LengthPrefixedRequestHandler, prefix="netstring", max_length=10), [stream])


def test_replies_are_framed_as_the_messages_are() -> None:
    assert framer(LineRequestHandler).frame_reply(b"hi") == b"hi\n"
    assert framer(LengthPrefixedRequestHandler).frame_reply(b"hi") == b"\x00\x00\x00\x02hi"
    assert framer(LengthPrefixedRequestHandler, prefix=2).frame_reply(b"hi") == b"\x00\x02hi"
    assert framer(LengthPrefixedRequestHandler, prefix="netstring").frame_reply(b"hi") == b"2:hi,"
    with pytest.raises(ValueError, match="2-byte prefix"):
        framer(LengthPrefixedRequestHandler, prefix=2).frame_reply(b"x" * 65536)
    with pytest.raises(ValueError, match="prefix must be"):
        feed(framer(LengthPrefixedRequestHandler, prefix=3), [b"abc"])


class Never(MessageRequestHandler):
    """A framer that never finds a message."""

    max_buffer = 100

    def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
        return None


def test_unframed_input_beyond_max_buffer_is_a_frame_error() -> None:
    assert feed(framer(Never), [b"x" * 100]) == ([], b"x" * 100)
    with pytest.raises(FrameError, match="max_buffer=100"):
        feed(framer(Never), [b"x" * 100, b"y"])


def test_a_framer_that_consumes_nothing_is_a_programming_error() -> None:
    class Stuck(MessageRequestHandler):
        def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
            return b"", 0

    with pytest.raises(ValueError, match=r"returned \(b'', 0\)"):
        feed(framer(Stuck), [b"x"])

    class Nothing(MessageRequestHandler):
        def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
            return None, 1

    with pytest.raises(ValueError, match="not None"):
        feed(framer(Nothing), [b"x"])


# ------------------------------------------------------------------ message mode on a reactor

class Gate:
    """A handler waits on it: ``entered`` once it runs, then until ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


class Recording:
    """A server mixin that records its hooks (and the gates its handlers wait on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[str] = []
        self.gates: dict[bytes, Gate] = {}
        self.errors: list[BaseException | None] = []
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.events.append("verify_request")
        return True

    def shutdown_request(self, request: Any) -> None:
        self.events.append("shutdown_request")
        super().shutdown_request(request)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.events.append("handle_error")
        self.errors.append(sys.exc_info()[1])


class RecordingTCP(Recording, socketserver.TCPServer):
    pass


class RecordingUnix(Recording, socketserver.UnixStreamServer):
    pass


class Words(LineRequestHandler):
    """Upper-cases lines; ``boom`` raises, ``sleep S`` sleeps, ``block NAME`` waits on a gate."""

    max_line = 64

    def setup(self) -> None:
        self.server.events.append("setup")  # type: ignore[attr-defined]

    def handle_message(self, line: bytes) -> bytes | None:
        if line == b"boom":
            raise ValueError("boom")
        if line.startswith(b"sleep "):
            time.sleep(float(line.split()[1]))
        elif line.startswith(b"block "):
            gate = self.server.gates[line.split()[1]]  # type: ignore[attr-defined]
            gate.entered.set()
            gate.release.wait(CLIENT_TIMEOUT)
        elif line == b"silent":
            return None
        elif line == b"two":
            self.write(b"one")
            return b"two"
        elif line == b"who":
            return json.dumps([os.getpid(), threading.current_thread().name]).encode()
        return line.upper()

    def frame_error(self, exc: FrameError) -> bytes | None:
        return b"ERROR " + str(exc).encode() + b"\n"

    def finish(self) -> None:
        self.server.events.append("finish")  # type: ignore[attr-defined]


STRATEGIES: dict[str, Callable[[], Dispatch]] = {"Inline": Inline, "ThreadPool": lambda: ThreadPool(4)}


@contextlib.contextmanager
def hosted(dispatch: Any = None, handler: Any = Words, family: str = "tcp4", unix_dir: str | None = None,
           **options: Any) -> Iterator[tuple[Reactor, Any]]:
    reactor = Reactor()
    if family == "unix":
        assert unix_dir is not None
        server: Any = RecordingUnix(os.path.join(unix_dir, "s.sock"), handler)
    else:
        if family == "tcp6" and not ipv6_available():
            pytest.fail("IPv6 loopback is needed") if os.environ.get("CI") else pytest.skip("no IPv6")
        server = RecordingTCP(("127.0.0.1" if family == "tcp4" else "::1", 0), handler)
    try:
        reactor.add_server(server, dispatch, **options)
        with reactor_thread(reactor):
            try:
                yield reactor, server
            finally:
                for gate in server.gates.values():  # before the reactor drains
                    gate.release.set()
    finally:
        server.server_close()


class Client:
    """A line client."""

    def __init__(self, server: Any, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(server.address_family, socket.SOCK_STREAM)
            sock.settimeout(CLIENT_TIMEOUT)
            sock.connect(server.server_address)
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, *lines: bytes) -> None:
        self.sock.sendall(b"".join(line + b"\n" for line in lines))

    def line(self) -> bytes:
        return self.reader.readline()

    def lines(self, count: int) -> list[bytes]:
        return [self.line() for _ in range(count)]

    def ask(self, line: bytes) -> bytes:
        self.send(line)
        return self.line()

    def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        try:
            return self.reader.read()
        except ConnectionResetError:
            return b"<reset>"

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("family", ["tcp4", "tcp6", "unix"])
def test_message_mode_serves_every_stream_family(family: str, strategy: str, unix_dir: str) -> None:
    with hosted(STRATEGIES[strategy](), family=family, unix_dir=unix_dir) as (reactor, server):
        with Client(server) as one, Client(server) as other:
            assert one.ask(b"hello") == b"HELLO\n"
            one.send(b"a", b"b", b"silent", b"two", b"c\r")  # many messages in one read
            assert one.lines(5) == [b"A\n", b"B\n", b"one\n", b"two\n", b"C\n"]
            assert other.ask(b"x") == b"X\n"
            wait_for(lambda: reactor.server_stats(server)["message_connections"] == 2, timeout=CLIENT_TIMEOUT)
            one.sock.shutdown(socket.SHUT_WR)
            assert one.rest() == b""  # EOF answered by a close
        wait_for(lambda: server.events.count("shutdown_request") == 2, timeout=CLIENT_TIMEOUT)
        stats = reactor.server_stats(server)
        assert stats["messages"] == 7
        assert stats["dispatched"] == stats["requests"] + stats["messages"] == 9
        assert stats["message_connections"] == 0
        assert stats["parked"] == 0


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_setup_and_finish_run_once_per_connection(strategy: str) -> None:
    with hosted(STRATEGIES[strategy]()) as (reactor, server):
        with Client(server) as client:
            for word in (b"a", b"b", b"c"):
                assert client.ask(word) == word.upper() + b"\n"
        wait_for(lambda: "shutdown_request" in server.events, timeout=CLIENT_TIMEOUT)
    assert server.events == ["verify_request", "setup", "finish", "shutdown_request"]


def test_replies_keep_request_order_while_the_pool_runs_other_connections() -> None:
    with hosted(ThreadPool(4)) as (reactor, server):
        gate = server.gates[b"g"] = Gate()
        with Client(server) as slow, Client(server) as other:
            slow.send(b"block g", b"after")
            assert gate.entered.wait(CLIENT_TIMEOUT)
            # The blocked message holds one worker; its connection's next message waits for it,
            # while another connection is served meanwhile.
            assert other.ask(b"meanwhile") == b"MEANWHILE\n"
            assert reactor.server_stats(server)["messages"] == 2  # block g, meanwhile: not "after"
            gate.release.set()
            assert slow.lines(2) == [b"BLOCK G\n", b"AFTER\n"]


def test_messages_of_different_connections_run_on_every_worker_at_once() -> None:
    with hosted(ThreadPool(8)) as (reactor, server):
        gates = [server.gates.setdefault(f"g{n}".encode(), Gate()) for n in range(8)]
        clients = [Client(server) for _ in range(8)]
        try:
            for n, client in enumerate(clients):
                client.send(f"block g{n}".encode())
            for gate in gates:  # all 8 handlers run together: one per worker, not one per connection
                assert gate.entered.wait(CLIENT_TIMEOUT)
            assert reactor.server_stats(server)["message_connections"] == 8
            for gate in gates:
                gate.release.set()
            for n, client in enumerate(clients):
                assert client.line() == f"BLOCK G{n}\n".encode()
        finally:
            for client in clients:
                client.close()


def test_replies_keep_request_order_with_handlers_of_different_durations() -> None:
    rng = random.Random(11)
    with hosted(ThreadPool(8)) as (reactor, server):
        clients = [Client(server) for _ in range(6)]
        try:
            sent = []
            for index, client in enumerate(clients):
                lines = [f"sleep {rng.choice((0, 0.001, 0.005, 0.02))} c{index}m{n}".encode() for n in range(10)]
                client.send(*lines)  # pipelined: all at once
                sent.append(lines)
            for client, lines in zip(clients, sent):
                assert client.lines(len(lines)) == [line.upper() + b"\n" for line in lines]
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_handler_that_raises_is_reported_and_closes_only_its_connection(strategy: str) -> None:
    with hosted(STRATEGIES[strategy]()) as (reactor, server):
        with Client(server) as bad, Client(server) as good:
            bad.send(b"first", b"boom", b"never")
            assert bad.line() == b"FIRST\n"  # replies before the failure are flushed
            assert bad.rest() == b""
            assert good.ask(b"still") == b"STILL\n"
        wait_for(lambda: server.events.count("shutdown_request") == 2, timeout=CLIENT_TIMEOUT)
        assert server.events.count("handle_error") == 1
        assert isinstance(server.errors[0], ValueError)
        assert server.events.count("finish") == 2


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_setup_or_a_framer_that_raises_is_reported_and_closes_that_connection(strategy: str) -> None:
    class Fragile(Words):
        def setup(self) -> None:
            super().setup()
            if self.server.events.count("setup") == 1:  # type: ignore[attr-defined]
                raise RuntimeError("the first setup fails")

        def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
            if buffer.startswith(b"!"):
                raise RuntimeError("framer bug")
            return super().frame(buffer)

    with hosted(STRATEGIES[strategy](), handler=Fragile) as (reactor, server):
        with Client(server) as client:
            assert client.rest() == b""
        with Client(server) as client:
            assert client.ask(b"a") == b"A\n"
            client.send(b"!")
            assert client.rest() == b""
        with Client(server) as client:
            assert client.ask(b"b") == b"B\n"
        wait_for(lambda: server.events.count("shutdown_request") == 3, timeout=CLIENT_TIMEOUT)
        assert server.events.count("handle_error") == 2
        assert [str(exc) for exc in server.errors] == ["the first setup fails", "framer bug"]
        assert server.events.count("finish") == 2  # only handlers whose setup() succeeded


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_an_overlong_line_gets_the_protocols_error_then_a_close(strategy: str) -> None:
    with hosted(STRATEGIES[strategy]()) as (reactor, server):
        with Client(server) as client:
            client.send(b"ok", b"x" * 100)
            assert client.line() == b"OK\n"
            assert client.line() == b"ERROR line longer than max_line=64 bytes\n"
            assert client.rest() == b""
        wait_for(lambda: "shutdown_request" in server.events, timeout=CLIENT_TIMEOUT)
        assert reactor.server_stats(server)["frame_errors"] == 1
        assert "handle_error" not in server.events


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_lines_arriving_one_whole_line_a_chunk_are_framed_as_any_others(strategy: str) -> None:
    # Under Inline a chunk that is exactly one line skips the buffer (a fast path): the same
    # answers, limits and counts as lines that arrive split or several to a chunk.
    with hosted(STRATEGIES[strategy]()) as (reactor, server), Client(server) as client:
        assert client.ask(b"cr\r") == b"CR\n"  # "cr\r\n": the \r is stripped
        assert client.ask(b"x" * 63) == b"X" * 63 + b"\n"  # 64 bytes with its newline: max_line
        assert client.ask(b"two") == b"one\n"  # written, then returned: in that order
        assert client.line() == b"two\n"
        client.sock.sendall(b"sil")
        client.sock.sendall(b"ent\nsplit\n")  # no answer, then one for a line split across chunks
        assert client.line() == b"SPLIT\n"
        assert client.ask(b"y" * 64) == b"ERROR line longer than max_line=64 bytes\n"
        assert client.rest() == b""
        stats = reactor.server_stats(server)
        assert (stats["messages"], stats["frame_errors"]) == (5, 1)


@pytest.mark.parametrize("strategy", [*sorted(STRATEGIES), "blocking"])
def test_a_client_still_sending_a_huge_line_gets_the_error_not_a_reset(strategy: str) -> None:
    options: dict[str, Any] = {"keepalive_timeout": 0} if strategy == "blocking" else {}
    dispatch = ThreadPool(2) if strategy == "blocking" else STRATEGIES[strategy]()
    class Roomy(Words):
        max_buffer = 32 * 1024 * 1024  # also how much is dropped while lingering

    with hosted(dispatch, handler=Roomy, **options) as (reactor, server), Client(server) as client:
        failures: list[OSError] = []

        def send() -> None:  # more than the socket buffers hold: sent only if the server reads it
            try:
                client.sock.sendall(b"x" * 16 * 1024 * 1024 + b"\n")
            except OSError as exc:
                failures.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        sender.join(CLIENT_TIMEOUT)
        # The server answered, sent EOF, and read and dropped the rest of the line: no reset,
        # so the answer is still there to read once the whole line is sent.
        assert failures == []
        assert client.line() == b"ERROR line longer than max_line=64 bytes\n"
        assert client.rest() == b""


def test_a_connection_idle_past_keepalive_timeout_is_closed() -> None:
    with hosted(ThreadPool(2), keepalive_timeout=0.2) as (reactor, server):
        with Client(server) as client:
            assert client.ask(b"a") == b"A\n"
            assert client.rest() == b""  # closed once idle for 0.2 s
        wait_for(lambda: "shutdown_request" in server.events, timeout=CLIENT_TIMEOUT)
        stats = reactor.server_stats(server)
        assert (stats["keepalive_expired"], stats["message_connections"]) == (1, 0)
        assert server.events[-2:] == ["finish", "shutdown_request"]


def test_leaving_lets_the_message_in_flight_finish_and_flush_then_closes() -> None:
    reactor = Reactor()
    server = RecordingTCP(("127.0.0.1", 0), Words)
    gate = server.gates[b"g"] = Gate()
    try:
        reactor.add_server(server, ThreadPool(2), keepalive_timeout=60)
        with reactor_thread(reactor), Client(server) as busy, Client(server) as idle:
            assert idle.ask(b"i") == b"I\n"
            busy.send(b"block g", b"not started")
            assert gate.entered.wait(CLIENT_TIMEOUT)
            removed = threading.Event()
            reactor.call_soon_threadsafe(lambda: reactor.remove_server(server, on_removed=removed.set))
            assert idle.rest() == b""  # nothing in flight: closed at once
            gate.release.set()
            assert busy.rest() == b"BLOCK G\n"  # answered, flushed, then closed; the next one never ran
            assert removed.wait(CLIENT_TIMEOUT)
        assert server.events.count("finish") == 2
        assert server.events.count("shutdown_request") == 2
    finally:
        gate.release.set()
        reactor.close()
        server.server_close()


def test_while_a_message_is_in_flight_the_connection_is_read_only_up_to_max_buffer() -> None:
    class Bounded(Words):
        max_buffer = 4096

    reactor = Reactor()
    server = RecordingTCP(("127.0.0.1", 0), Bounded)
    # Small kernel buffers on both sides, so that what the client gets rid of is mostly what
    # the server read.
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    gate = server.gates[b"g"] = Gate()
    flood = b"".join(b"line %06d %s\n" % (n, b"x" * 40) for n in range(80_000))  # 4 MB, lines under max_line
    try:
        reactor.add_server(server, ThreadPool(2))
        with reactor_thread(reactor):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            sock.settimeout(CLIENT_TIMEOUT)
            sock.connect(server.server_address)
            with Client(server, sock) as client, Client(server) as other:
                client.send(b"block g")
                assert gate.entered.wait(CLIENT_TIMEOUT)
                sock.setblocking(False)
                sent = 0
                while sent < len(flood):
                    try:
                        sent += sock.send(flood[sent:sent + 65536])
                    except BlockingIOError:
                        # Writable again within half a second: the server is still reading.
                        if not select.select([], [sock], [], 0.5)[1]:
                            break
                # The server read max_buffer bytes (and one read) past the message in flight, then
                # stopped: the rest waits in the kernel's buffers, not in the server's memory.
                assert sent < 1_000_000, sent
                assert other.ask(b"meanwhile") == b"MEANWHILE\n"  # the loop serves everyone else
                gate.release.set()
                sock.settimeout(CLIENT_TIMEOUT)
                assert client.line() == b"BLOCK G\n"
                assert client.line() == b"LINE 000000 " + b"X" * 40 + b"\n"  # read again, in order
    finally:
        gate.release.set()
        reactor.close()
        server.server_close()


def test_a_drain_past_its_deadline_closes_the_connection_and_finishes_the_handler_later() -> None:
    reactor = Reactor()
    server = RecordingTCP(("127.0.0.1", 0), Words)
    gate = server.gates[b"g"] = Gate()
    try:
        reactor.add_server(server, ThreadPool(2, drain_timeout=0.2))
        with reactor_thread(reactor), Client(server) as busy:
            busy.send(b"block g")
            assert gate.entered.wait(CLIENT_TIMEOUT)
            removed = threading.Event()
            reactor.call_soon_threadsafe(lambda: reactor.remove_server(server, on_removed=removed.set))
            assert removed.wait(CLIENT_TIMEOUT)  # aborted at the deadline, the handler still running
            assert busy.rest() == b""
            assert "finish" not in server.events  # never while its message runs
            gate.release.set()
            wait_for(lambda: "finish" in server.events, timeout=CLIENT_TIMEOUT)
        assert server.events[-2:] == ["shutdown_request", "finish"]  # closed at once, finished when it returned
    finally:
        gate.release.set()
        reactor.close()
        server.server_close()


def test_a_client_that_reads_no_replies_stops_being_read() -> None:
    class Big(LineRequestHandler):
        def handle_message(self, line: bytes) -> bytes:
            return b"x" * 100_000

    reactor = Reactor()
    server = RecordingTCP(("127.0.0.1", 0), Big)
    other = RecordingTCP(("127.0.0.1", 0), Words)
    try:
        reactor.add_server(server, Inline())
        reactor.add_server(other, Inline())
        with reactor_thread(reactor), Client(server) as client, Client(other) as ping:
            client.send(*[b"m"] * 200)  # 20 MB of replies asked for, none read
            wait_for(lambda: reactor.server_stats(server)["messages"] > 0, timeout=CLIENT_TIMEOUT)
            # The loop stops framing once the write buffer is above its high-water mark,
            # and goes on serving everything else.
            assert ping.ask(b"ping") == b"PING\n"
            seen = reactor.server_stats(server)["messages"]
            assert ping.ask(b"ping") == b"PING\n"
            assert reactor.server_stats(server)["messages"] == seen < 200
    finally:
        server.server_close()
        other.server_close()


def test_tls_connections_are_served_a_message_at_a_time(pki: Any) -> None:
    with hosted(ThreadPool(2), ssl_context=pki.server_context()) as (reactor, server):
        context = pki.client_context()
        raw = socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)
        with context.wrap_socket(raw, server_hostname="localhost") as tls, Client(server, tls) as client:
            client.send(*[f"m{n}".encode() for n in range(50)])  # decrypted in one go: pending() matters
            assert client.lines(50) == [f"M{n}\n".encode() for n in range(50)]
            assert client.ask(b"again") == b"AGAIN\n"
            client.send(b"x" * 100)
            assert client.line().startswith(b"ERROR")
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                assert client.reader.read() == b""
        assert reactor.server_stats(server)["frame_errors"] == 1


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_client_that_stops_sending_while_its_message_runs_still_gets_the_reply(pki: Any, tls: bool) -> None:
    options = {"ssl_context": pki.server_context()} if tls else {}
    with hosted(ThreadPool(2), **options) as (reactor, server):
        gate = server.gates[b"g"] = Gate()

        def connect() -> socket.socket:
            raw = socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT)
            return pki.client_context().wrap_socket(raw, server_hostname="localhost") if tls else raw

        sock = connect()
        with Client(server, sock) as client:
            client.send(b"block g")
            assert gate.entered.wait(CLIENT_TIMEOUT)
            socket.socket.shutdown(sock, socket.SHUT_WR)  # a bare FIN, under TLS too (no close_notify)
            with Client(server, connect()) as other:  # a round trip through the loop: the FIN was seen
                assert other.ask(b"ping") == b"PING\n"
            gate.release.set()
            assert client.line() == b"BLOCK G\n"
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                assert client.reader.read() == b""


def test_admission_runs_first_and_counts_message_mode_connections_against_its_limits() -> None:
    class Peer(LineRequestHandler):
        def handle_message(self, line: bytes) -> bytes:
            info = request_info(self.request)
            assert info is not None
            return f"{info.client_address[0]} {line.decode()}".encode()

    header = "PROXY TCP4 192.0.2.{} 192.0.2.1 5555 80\r\n"
    with hosted(ThreadPool(2), handler=Peer, proxy_protocol="v1", max_connections=1) as (reactor, server):
        first = Client(server)
        try:
            first.sock.sendall(header.format(10).encode() + b"hello\n")
            assert first.line() == b"192.0.2.10 hello\n"
            stats = reactor.server_stats(server)
            assert (stats["open"], stats["message_connections"]) == (1, 1)
            with Client(server) as second:
                second.sock.sendall(header.format(11).encode() + b"next\n")
                second.sock.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    second.sock.recv(100)  # at max_connections: it waits in the backlog
                first.close()
                second.sock.settimeout(CLIENT_TIMEOUT)
                assert second.line() == b"192.0.2.11 next\n"
        finally:
            first.close()


def test_length_prefixed_messages_in_message_mode() -> None:
    class Reverse(LengthPrefixedRequestHandler):
        prefix = 2
        max_length = 1000

        def handle_message(self, message: bytes) -> bytes:
            return message[::-1]

    with hosted(ThreadPool(2), handler=Reverse) as (reactor, server):
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
            sock.sendall(b"\x00\x03abc\x00\x00\x00\x02xy")
            reader = sock.makefile("rb")
            assert reader.read(5 + 2 + 4) == b"\x00\x03cba\x00\x00\x00\x02yx"
            sock.sendall(b"\xff\xff")  # over max_length: closed without a word (no frame_error)
            assert reader.read() == b""
            reader.close()
        wait_for(lambda: reactor.server_stats(server)["frame_errors"] == 1, timeout=CLIENT_TIMEOUT)


def test_with_parking_off_the_handler_blocks_on_its_connection_as_socketserver_does() -> None:
    with hosted(ThreadPool(2), keepalive_timeout=0) as (reactor, server):
        with Client(server) as client:
            assert client.ask(b"a") == b"A\n"
            assert client.ask(b"b") == b"B\n"
            assert reactor.server_stats(server)["message_connections"] == 0
            assert reactor.server_stats(server)["messages"] == 0


# ------------------------------------------------------------------ the same class, blocking

def test_the_same_handler_serves_under_the_stdlibs_blocking_tcp_server() -> None:
    class Server(Recording, std_socketserver.TCPServer):
        pass

    server = Server(("127.0.0.1", 0), Words)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        with Client(server) as client:
            client.send(b"a", b"two", b"silent", b"b")
            assert client.lines(3) == [b"A\n", b"one\n", b"two\n"]
            assert client.ask(b"c") == b"B\n"
            assert client.line() == b"C\n"
            client.send(b"y" * 100)
            assert client.line() == b"ERROR line longer than max_line=64 bytes\n"
            assert client.rest() == b""
        with Client(server) as client:
            assert client.ask(b"z") == b"Z\n"
        wait_for(lambda: server.events.count("finish") == 2, timeout=CLIENT_TIMEOUT)
        assert server.events[:3] == ["verify_request", "setup", "finish"]
    finally:
        server.shutdown()
        thread.join(CLIENT_TIMEOUT)
        server.server_close()


def test_a_standalone_compat_server_blocks_without_dispatch_and_frames_in_the_loop_with_one() -> None:
    for dispatch, message_mode in ((None, False), (ThreadPool(2), True)):
        server = RecordingTCP(("127.0.0.1", 0), Words, dispatch=dispatch)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            with Client(server) as first, Client(server) as second:
                assert first.ask(b"a") == b"A\n"
                second.send(b"b")
                second.sock.settimeout(CLIENT_TIMEOUT if message_mode else 0.3)
                if message_mode:
                    assert second.line() == b"B\n"
                else:
                    with pytest.raises(TimeoutError):
                        second.line()  # the stdlib's: one connection at a time, inline
        finally:
            server.shutdown()
            thread.join(CLIENT_TIMEOUT)
            server.server_close()


# ------------------------------------------------------------------ Prefork, in a fresh interpreter

PREFORK_SCRIPT = r"""
import json, os, signal, threading
from reactor import Prefork, Reactor, socketserver

class Who(socketserver.LineRequestHandler):
    def handle_message(self, line):
        return json.dumps([os.getpid(), threading.current_thread().name, line.decode()]).encode()

reactor = Reactor()
servers = {}
for name, strategy in (("inline", Prefork(2)), ("threads", Prefork(1, threads=2))):
    servers[name] = socketserver.TCPServer(("127.0.0.1", 0), Who)
    reactor.add_server(servers[name], strategy)
reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
print(json.dumps({"pid": os.getpid(), **{name: s.server_address for name, s in servers.items()}}), flush=True)
reactor.serve_forever()
reactor.close()
print("stopped", flush=True)
"""


def test_prefork_workers_serve_framed_messages_in_their_own_loops() -> None:
    with spawn_python(PREFORK_SCRIPT) as proc:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        try:
            for name in ("inline", "threads"):
                with socket.create_connection(tuple(info[name]), timeout=10) as sock:
                    reader = sock.makefile("rb")
                    sock.sendall(b"a\nb\nc\n")
                    answers = [json.loads(reader.readline()) for _ in range(3)]
                    reader.close()
                assert [line for _, _, line in answers] == ["a", "b", "c"]
                pids = {pid for pid, _, _ in answers}
                assert len(pids) == 1 and info["pid"] not in pids  # one worker, not the master
                threads = {thread for _, thread, _ in answers}
                assert (threads == {"MainThread"}) is (name == "inline"), threads
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.read() == "stopped\n"
