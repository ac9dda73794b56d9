"""Pure-Python load generator for the reactor benchmark: the labelled fallback of ``bench/loadgen.c``.

``bench/run.py`` uses it when no C compiler is available. It takes the same arguments and
prints the same result line as the C generator -- ``bench/LOADGEN.md`` is the contract --
except that the line says ``"generator": "python"``. That label matters: one Python thread
offers far less load and adds far more latency than the C client, so its numbers compare only
with other runs of this same generator.

Run: ``python bench/pyloadgen.py --mode crr --transport tcp --address 127.0.0.1:8000
--concurrency 50`` (``--help`` lists every option); ``--mode http --path /file --requests N
--probe-interval 0.1`` is the HTTP/1.1 keep-alive client.

Design: one thread, one ``selectors.DefaultSelector``, every socket non-blocking. Each of the
``--concurrency`` slots owns one socket at a time (a :class:`Conn`) and steps it through
connect, send and receive; a socket that fails is closed and its slot gets a new one after a
millisecond. Standard library only. The http mode is rr with an HTTP/1.1 request and a
response parser, plus probe connections opened beside the load (:class:`HttpClient`).
"""

from __future__ import annotations

import abc
import argparse
import collections
import contextlib
import dataclasses
import enum
import errno
import json
import os
import re
import resource
import selectors
import socket
import sys
from collections.abc import Callable, Sequence
from time import monotonic, monotonic_ns
from typing import TypeAlias, Union

NS_PER_S = 1_000_000_000

#: How long a slot waits after an error before it opens a new socket, so that a refusing or
#: dead server costs a thousand attempts per second and slot instead of a busy loop.
BACKOFF_NS = 1_000_000

#: Linux's value, for the Pythons (3.10) whose socket module does not name it.
IP_BIND_ADDRESS_NO_PORT: int | None = getattr(
    socket, "IP_BIND_ADDRESS_NO_PORT", 24 if sys.platform.startswith("linux") else None
)

#: The longest Unix socket path, ``sun_path`` (108 bytes on Linux) less its terminating NUL.
SUN_PATH_MAX = 107

#: The upper limits loadgen.c puts on the options, so that both accept the same command lines
#: (its own reason: nanosecond deadlines must not overflow an int64).
MAX_CONCURRENCY = 1_000_000
MAX_MESSAGE_SIZE = 1 << 24
MAX_SECONDS = 1e6

STREAM_TRANSPORTS = ("tcp", "unix")
MODE_TRANSPORTS = {
    "crr": STREAM_TRANSPORTS,
    "rr": STREAM_TRANSPORTS,
    "idle": STREAM_TRANSPORTS,
    "http": STREAM_TRANSPORTS,
    "dgram": ("udp", "unixdgram"),
}

#: http: the longest response head accepted (loadgen.c's HEAD_MAX), and the body read size.
HEAD_MAX = 8192
BODY_CHUNK = 65536
MAX_REQUESTS = 1_000_000_000
MAX_PATH = 1024

Address: TypeAlias = Union[tuple[str, int], str]


# ---------------------------------------------------------------- command line


@dataclasses.dataclass(frozen=True)
class Config:
    """The parsed command line (see bench/LOADGEN.md for what each option means)."""

    mode: str
    transport: str
    family: socket.AddressFamily
    address: Address
    concurrency: int
    duration: float
    warmup: float
    message_size: int
    source_spread: int
    timeout: float
    hold: float
    path: str = "/"
    requests: int = 0
    probe_interval: float = 0.0
    line: bool = False


def int_range(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``minimum`` to ``maximum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from {minimum} to {maximum}: {text!r}")
        return value

    return parse


def seconds(*, zero_ok: bool) -> Callable[[str], float]:
    """An argparse type: a number of seconds up to MAX_SECONDS, positive (or zero if ``zero_ok``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (0 <= value <= MAX_SECONDS) or (value == 0 and not zero_ok):  # nan fails too
            kind = "non-negative" if zero_ok else "positive"
            raise argparse.ArgumentTypeError(f"must be a {kind} number up to {MAX_SECONDS:g}: {text!r}")
        return value

    return parse


def parse_address(transport: str, text: str) -> tuple[socket.AddressFamily, Address]:
    """``--address`` in the contract's syntax; ValueError says why ``text`` is not one."""
    if transport in ("unix", "unixdgram"):
        if not text or "\0" in text:
            raise ValueError("expected a socket path")
        if len(os.fsencode(text)) > SUN_PATH_MAX:
            raise ValueError(f"a Unix socket path has at most {SUN_PATH_MAX} bytes")
        return socket.AF_UNIX, text
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ValueError("expected HOST:PORT")
    family = socket.AF_INET
    if host.startswith("[") and host.endswith("]"):
        family, host = socket.AF_INET6, host[1:-1]
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        raise ValueError(f"not an IPv{4 if family == socket.AF_INET else 6} literal: {host!r}") from None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"not a port number: {port!r}")
    return family, (host, int(port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyloadgen",
        description="Pure-Python fallback of bench/loadgen.c (contract: bench/LOADGEN.md).",
    )
    parser.add_argument("--mode", required=True, choices=list(MODE_TRANSPORTS))
    parser.add_argument("--transport", required=True, choices=["tcp", "unix", "udp", "unixdgram"])
    parser.add_argument("--address", required=True,
                        help="tcp/udp: HOST:PORT (an IPv4 literal) or [IPv6]:PORT; unix/unixdgram: a path")
    parser.add_argument("--concurrency", type=int_range(1, MAX_CONCURRENCY), default=1)
    # Zero is fine (idle ignores it, and bench/run.py passes 0 there).
    parser.add_argument("--duration", type=seconds(zero_ok=True), default=2.0)
    parser.add_argument("--warmup", type=seconds(zero_ok=True), default=0.5)
    parser.add_argument("--message-size", type=int_range(1, MAX_MESSAGE_SIZE), default=12)
    parser.add_argument("--line", action="store_true", help="the request's last byte is a newline")
    # 127.0.0.(1 + n % K) must stay a valid address: K <= 255.
    parser.add_argument("--source-spread", type=int_range(0, 255), default=0)
    parser.add_argument("--timeout", type=seconds(zero_ok=False), default=2.0)
    parser.add_argument("--hold", type=seconds(zero_ok=True), default=30.0)
    parser.add_argument("--path", default="/", help="http: the request target")
    parser.add_argument("--requests", type=int_range(0, MAX_REQUESTS), default=0,
                        help="http: requests to send in all (0: no bound)")
    parser.add_argument("--probe-interval", type=seconds(zero_ok=True), default=0.0,
                        help="http: seconds between probe connections (0: none)")
    return parser


def parse_args(argv: Sequence[str] | None) -> Config:
    """The command line as a Config; exits with status 2 and a message on stderr if it is bad."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.transport not in MODE_TRANSPORTS[args.mode]:
        parser.error(f"--mode {args.mode} takes --transport {' or '.join(MODE_TRANSPORTS[args.mode])}")
    try:
        family, address = parse_address(args.transport, args.address)
    except ValueError as exc:
        parser.error(f"--address {args.address!r}: {exc}")
    if args.source_spread and (args.transport != "tcp" or family != socket.AF_INET):
        parser.error("--source-spread is for --transport tcp over IPv4 only")
    path = args.path
    if not path.startswith("/") or len(path) > MAX_PATH or any(c in path for c in " \t\r\n"):
        parser.error(f"--path: expected '/' then up to {MAX_PATH - 1} characters without blanks, got {path!r}")
    if 0 < args.probe_interval < 0.001:
        parser.error(f"--probe-interval: expected 0 or at least 0.001 seconds, got {args.probe_interval:g}")
    return Config(
        mode=args.mode, transport=args.transport, family=family, address=address,
        concurrency=args.concurrency, duration=args.duration, warmup=args.warmup,
        message_size=args.message_size, source_spread=args.source_spread,
        timeout=args.timeout, hold=args.hold, path=path, requests=args.requests,
        probe_interval=args.probe_interval, line=args.line,
    )


# ---------------------------------------------------------------- counting


def make_request(size: int, line: bool = False) -> bytes:
    """``size`` bytes: ``Hello, world`` padded with dots (cut short if ``size`` < 12), the last
    one a newline when ``line`` is true."""
    request = b"Hello, world".ljust(size, b".")[:size]
    return request[:-1] + b"\n" if line else request


def errno_name(code: int | None) -> str:
    """The key error_kinds counts an OS error under: ``ECONNREFUSED``... (``E<n>`` if unnamed,
    as loadgen.c says)."""
    return errno.errorcode.get(code or 0, f"E{code}")


class Stats:
    """What a run counts. Latencies (one per exchange counted), errors and losses are recorded
    only while ``counting`` is set, in the measured window; ``replies`` counts all the run's."""

    def __init__(self) -> None:
        self.counting = False
        self.replies = 0
        self.latencies_ns: list[int] = []
        self.error_kinds: collections.Counter[str] = collections.Counter()
        self.lost = 0

    def reply(self, started_ns: int) -> None:
        self.replies += 1
        if self.counting:
            self.latencies_ns.append(monotonic_ns() - started_ns)

    def error(self, kind: str) -> None:
        if self.counting:
            self.error_kinds[kind] += 1

    def loss(self) -> None:
        if self.counting:
            self.lost += 1


def percentile_us(sorted_ns: Sequence[int], percent: int) -> float | None:
    """The nearest-rank percentile of ``sorted_ns``, in microseconds; None without samples."""
    if not sorted_ns:
        return None
    rank = -(-percent * len(sorted_ns) // 100)  # ceil(percent/100 * n), without float rounding
    return round(sorted_ns[rank - 1] / 1000, 1)


def result_line(config: Config, stats: Stats, window_ns: int, conns_served: int) -> dict[str, object]:
    """The result object of bench/LOADGEN.md."""
    latencies = sorted(stats.latencies_ns)
    window = round(window_ns / NS_PER_S, 6)  # ops_per_s is computed from the value printed
    return {
        "generator": "python",
        "mode": config.mode,
        "transport": config.transport,
        "concurrency": config.concurrency,
        "seconds": window,
        "ops": len(latencies),
        "ops_per_s": round(len(latencies) / window, 1) if window > 0 else 0.0,
        "errors": sum(stats.error_kinds.values()),
        "lost": stats.lost,
        "conns_served": conns_served,
        "p50_us": percentile_us(latencies, 50),
        "p99_us": percentile_us(latencies, 99),
        "error_kinds": dict(sorted(stats.error_kinds.items())),
    }


# ---------------------------------------------------------------- the event loop


def connected_to_itself(sock: socket.socket) -> bool:
    """With nothing bound to the server's port, the kernel may give a client that very port
    (a TCP simultaneous open, a UDP socket sending to itself), and the client would then be
    echoed by itself. That only happens when nobody serves the address: callers count it as
    refused, like loadgen.c."""
    try:
        return bool(sock.getsockname() == sock.getpeername())
    except OSError:  # no longer connected: the socket's next use reports why
        return False


class State(enum.Enum):
    CONNECTING = enum.auto()  # waiting for a stream connect() to complete
    SENDING = enum.auto()     # part of the request is still to be sent
    RECEIVING = enum.auto()   # the request is sent, the reply is (partly) awaited


class Conn:
    """One slot's socket and the state of its current step."""

    __slots__ = ("sock", "state", "events", "ticket", "started_ns", "unsent", "received", "replied")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.state = State.CONNECTING
        self.events = 0  # what the selector watches it for; 0: not registered
        self.ticket = 0  # bumped when a timed step starts or ends, which voids older deadlines
        self.started_ns = 0
        self.unsent: bytes | memoryview = b""
        self.received = bytearray()  # a reply that came in pieces, so far
        self.replied = False  # rr: this connection has had a reply (for conns_served)


class Client(abc.ABC):
    """The event loop every mode shares: sockets, their deadlines and the slots backing off.

    Subclasses say how a slot opens its socket (``_open``), what it does when the socket is
    ready (``_on_ready``) and when its step times out (``_timed_out``).
    """

    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.request = make_request(config.message_size, config.line)
        self.timeout_ns = round(config.timeout * NS_PER_S)
        self.selector = selectors.DefaultSelector()
        self.conns: set[Conn] = set()
        # Every step has the same timeout, so deadlines are appended in order and a FIFO is all
        # the priority queue needed. An entry whose step has ended since (the connection's
        # ticket moved on) is dropped when it reaches the head.
        self.deadlines: collections.deque[tuple[int, Conn, int]] = collections.deque()
        # When each slot that failed opens its next socket: in order too, BACKOFF_NS being fixed.
        self.backoffs: collections.deque[int] = collections.deque()
        #: When a subclass has something else to do (its ``_expire`` does it), or None.
        self.next_due_ns: int | None = None

    def start(self) -> None:
        for _ in range(self.config.concurrency):
            self._open()

    def run_until(self, stop_ns: int) -> int:
        """Run the loop until ``monotonic_ns()`` reaches ``stop_ns`` (or the client has nothing
        left to do); return the time it stopped at."""
        select = self.selector.select
        on_ready = self._on_ready
        while True:
            now = monotonic_ns()
            self._expire(now)
            if now >= stop_ns or not self._busy():
                return now
            wake_ns = stop_ns
            if self.deadlines:
                wake_ns = min(wake_ns, self.deadlines[0][0])
            if self.backoffs:
                wake_ns = min(wake_ns, self.backoffs[0])
            if self.next_due_ns is not None:
                wake_ns = min(wake_ns, self.next_due_ns)
            for key, events in select((wake_ns - now) / NS_PER_S):
                on_ready(key.data, events)

    def close(self) -> None:
        for conn in self.conns:
            conn.sock.close()
        self.conns.clear()
        self.selector.close()

    def conns_served(self) -> int:
        """crr, dgram: every slot counts as served if any exchange completed."""
        return self.config.concurrency if self.stats.replies else 0

    def _open(self) -> None:
        """Give one slot a new socket and start its first step."""
        try:
            sock = self._new_socket()
        except OSError as exc:
            self._slot_failed(errno_name(exc.errno))
            return
        conn = self._new_conn(sock)
        self.conns.add(conn)
        self._start(conn)

    def _new_conn(self, sock: socket.socket) -> Conn:
        return Conn(sock)

    @abc.abstractmethod
    def _new_socket(self) -> socket.socket:
        """A configured non-blocking socket for a slot (closed again if configuring it fails)."""

    @abc.abstractmethod
    def _start(self, conn: Conn) -> None:
        """The first step of a slot's new socket."""

    @abc.abstractmethod
    def _on_ready(self, conn: Conn, events: int) -> None:
        """``conn``'s socket is ready for ``events`` (selectors.EVENT_READ/EVENT_WRITE)."""

    @abc.abstractmethod
    def _timed_out(self, conn: Conn) -> None:
        """``conn``'s current step has lasted --timeout seconds."""

    def _busy(self) -> bool:
        return True

    def _replace(self) -> None:
        """A slot's socket failed: the slot opens a new one after the backoff."""
        self.backoffs.append(monotonic_ns() + BACKOFF_NS)

    def _slot_failed(self, kind: str) -> None:
        self.stats.error(kind)
        self._replace()

    def _fail(self, conn: Conn, kind: str) -> None:
        self._close(conn)
        self._slot_failed(kind)

    def _arm(self, conn: Conn) -> None:
        """Start a timed step on ``conn``: its latency clock and its deadline."""
        now = monotonic_ns()
        conn.ticket += 1
        conn.started_ns = now
        self.deadlines.append((now + self.timeout_ns, conn, conn.ticket))

    def _disarm(self, conn: Conn) -> None:
        conn.ticket += 1

    def _close(self, conn: Conn) -> None:
        self._disarm(conn)
        self._want(conn, 0)
        conn.sock.close()
        self.conns.discard(conn)

    def _want(self, conn: Conn, events: int) -> None:
        """Have the selector watch ``conn`` for ``events`` (0: not at all)."""
        if events == conn.events:
            return
        if not conn.events:
            self.selector.register(conn.sock, events, conn)
        elif not events:
            self.selector.unregister(conn.sock)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.events = events

    def _expire(self, now: int) -> None:
        """Time out the steps whose deadline has passed; reopen the slots done backing off."""
        deadlines = self.deadlines
        while deadlines:
            deadline, conn, ticket = deadlines[0]
            if ticket != conn.ticket:  # that step has ended
                deadlines.popleft()
            elif deadline <= now:
                deadlines.popleft()
                self._timed_out(conn)
            else:
                break
        backoffs = self.backoffs
        while backoffs and backoffs[0] <= now:
            backoffs.popleft()
            self._open()


# ---------------------------------------------------------------- stream modes


class StreamClient(Client):
    """Connections over tcp or unix stream sockets. Subclasses say what a slot does once
    connected (``_connected``) and once it has a reply (``_replied``)."""

    def __init__(self, config: Config, stats: Stats) -> None:
        super().__init__(config, stats)
        self.sources = [(f"127.0.0.{1 + n}", 0) for n in range(config.source_spread)]
        self.opened = 0

    @abc.abstractmethod
    def _connected(self, conn: Conn) -> None:
        """``conn`` has just connected."""

    @abc.abstractmethod
    def _replied(self, conn: Conn) -> None:
        """``conn`` has just received a full, correct reply (already counted)."""

    def _start(self, conn: Conn) -> None:
        self._arm(conn)
        error = conn.sock.connect_ex(self.config.address)
        if error == 0:  # unix sockets connect at once
            self._connected(conn)
        elif error == errno.EINPROGRESS:
            self._want(conn, selectors.EVENT_WRITE)
        else:
            self._fail(conn, errno_name(error))

    def _new_socket(self) -> socket.socket:
        sock = socket.socket(self.config.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.config.family != socket.AF_UNIX:
                # The rest of a partly sent request must not wait for an ACK (Nagle).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.sources:
                self._bind_source(sock)
        except OSError:
            sock.close()
            raise
        return sock

    def _bind_source(self, sock: socket.socket) -> None:
        """--source-spread: bind the n-th new connection to 127.0.0.(1 + n % K), port 0."""
        if IP_BIND_ADDRESS_NO_PORT is not None:
            # Leave the port to connect(), which only needs the whole 4-tuple to be unused,
            # rather than bind(), which needs the port free on that address: many more ports.
            with contextlib.suppress(OSError):  # kernels before 4.2 lack the option
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind(self.sources[self.opened % len(self.sources)])
        self.opened += 1

    def _on_ready(self, conn: Conn, events: int) -> None:
        if conn.state is State.CONNECTING:
            self._finish_connect(conn)
        elif conn.state is State.SENDING and events & selectors.EVENT_WRITE:
            self._send(conn)  # any echo waiting is read on the next round (level-triggered)
        else:
            self._receive(conn)

    def _timed_out(self, conn: Conn) -> None:
        self._fail(conn, "TIMEOUT")

    def _finish_connect(self, conn: Conn) -> None:
        error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not error and connected_to_itself(conn.sock):
            error = errno.ECONNREFUSED
        if error:
            self._fail(conn, errno_name(error))
        else:
            self._connected(conn)

    def _send_request(self, conn: Conn) -> None:
        conn.unsent = self.request
        self._send(conn)

    def _send(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.unsent)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(conn, errno_name(exc.errno))
            return
        if sent == len(conn.unsent):
            conn.state = State.RECEIVING
            self._want(conn, selectors.EVENT_READ)
        else:
            # Keep reading while the rest waits for room: a server echoing the first part
            # would stall, and never take the rest, if nobody read its echo.
            conn.unsent = memoryview(conn.unsent)[sent:]
            conn.state = State.SENDING
            self._want(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _receive(self, conn: Conn) -> None:
        size = len(self.request)
        try:
            # Never more than the reply's size: in rr, the bytes after it belong to the next one.
            data = conn.sock.recv(size - len(conn.received))
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, errno_name(exc.errno))
            return
        if not data:
            self._fail(conn, "EOF")
            return
        if conn.received or len(data) < size:
            conn.received += data
            if len(conn.received) < size:
                return
            data = bytes(conn.received)
            conn.received.clear()
        if data != self.request:
            self._fail(conn, "MISMATCH")
            return
        self.stats.reply(conn.started_ns)
        self._replied(conn)


class CrrClient(StreamClient):
    """crr: each slot connects, exchanges one request and reply, closes, and starts over.
    Latency and timeout run from the connect() (``_open`` arms the step)."""

    def _connected(self, conn: Conn) -> None:
        self._send_request(conn)

    def _replied(self, conn: Conn) -> None:
        self._close(conn)
        self._open()


class RrClient(StreamClient):
    """rr: each slot keeps its connection and exchanges on it back to back. A connection's
    connect and each of its exchanges are timed separately; latency runs from the send."""

    def __init__(self, config: Config, stats: Stats) -> None:
        super().__init__(config, stats)
        self.served = 0

    def conns_served(self) -> int:
        return self.served

    def _connected(self, conn: Conn) -> None:
        self._exchange(conn)

    def _replied(self, conn: Conn) -> None:
        if not conn.replied:
            conn.replied = True
            self.served += 1
        self._exchange(conn)

    def _exchange(self, conn: Conn) -> None:
        self._arm(conn)
        self._send_request(conn)


class IdleClient(StreamClient):
    """idle: each slot connects and exchanges once, then keeps its connection open, unwatched.
    A connection that fails is not replaced."""

    def __init__(self, config: Config, stats: Stats) -> None:
        super().__init__(config, stats)
        self.served = 0
        self.pending = config.concurrency  # slots neither served nor failed yet

    def conns_served(self) -> int:
        return self.served

    def _busy(self) -> bool:
        return self.pending > 0

    def _replace(self) -> None:
        self.pending -= 1

    def _connected(self, conn: Conn) -> None:
        self._send_request(conn)

    def _replied(self, conn: Conn) -> None:
        self._disarm(conn)
        self._want(conn, 0)
        self.served += 1
        self.pending -= 1


# ---------------------------------------------------------------- http mode


STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [^\r\n]*)?")
CLOSING_KINDS = ("EOF", "ECONNRESET", "EPIPE")


def parse_head(head: bytes) -> tuple[int, int, bool] | str:
    """``(status, body length, closes)`` of a response head that ends with CRLF CRLF, or the
    error kind: ``BADRESPONSE`` (not an HTTP/1.x head), ``CHUNKED`` (a chunked body: only
    Content-Length bodies are read) or ``NOLENGTH`` (a body delimited by the connection's close).
    ``closes``: the server closes the connection after this response."""
    lines = head[:-4].split(b"\r\n")
    match = STATUS_LINE.fullmatch(lines[0])
    if match is None:
        return "BADRESPONSE"
    http10, status = match[1] == b"0", int(match[2])
    length: int | None = None
    close = keep_alive = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or b"\n" in line:
            return "BADRESPONSE"
        name, value = name.lower(), value.strip(b" \t")
        if name == b"content-length":
            if not (value.isdigit() and len(value) <= 15) or (length is not None and int(value) != length):
                return "BADRESPONSE"
            length = int(value)
        elif name == b"transfer-encoding":
            return "CHUNKED"
        elif name == b"connection":
            tokens = {token.strip(b" \t").lower() for token in value.split(b",")}
            close = close or b"close" in tokens
            keep_alive = keep_alive or b"keep-alive" in tokens
    bodiless = status < 200 or status in (204, 304)  # no body whatever the head says
    if length is None and not bodiless:
        return "NOLENGTH"
    return status, 0 if bodiless or length is None else length, close or (http10 and not keep_alive)


class HttpConn(Conn):
    """A connection of the http mode: a load slot's, or a probe's."""

    __slots__ = ("probe", "outstanding", "in_body", "body_left", "status", "closes")

    def __init__(self, sock: socket.socket, probe: bool = False) -> None:
        super().__init__(sock)
        self.probe = probe
        self.outstanding = False  # a request of the --requests budget is in flight
        self.in_body = False      # the head is parsed; body_left bytes of the body are to come
        self.body_left = 0
        self.status = 0
        self.closes = False       # the server closes the connection after this response


class HttpClient(StreamClient):
    """http: rr over HTTP/1.1 keep-alive. Each load slot keeps its connection and sends
    ``GET --path HTTP/1.1`` requests back to back, reading each response's head (status line,
    Content-Length) and exactly its body, until --requests have been sent in all. Beside the
    load, once ``probing`` is set, a probe connection is opened every --probe-interval: one
    request, timed from connect() to the last byte of its response, then closed.

    Whole-run counts (frozen once ``stop()`` is called): requests ``completed`` (status 200),
    ``failed`` (any other status, or an error while it was in flight), ``closed_by_server``
    (connections the server ended: EOF, reset, or a response saying it closes)."""

    def __init__(self, config: Config, stats: Stats) -> None:
        super().__init__(config, stats)
        self.request = f"GET {config.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        self.quickack: int | None = getattr(socket, "TCP_QUICKACK", None) if config.family != socket.AF_UNIX else None
        self.stopped = False
        self.issued = self.completed = self.failed = self.outstanding = self.unanswered = 0
        self.closed_by_server = 0
        self.served = 0
        self.probing = False
        self.probe_interval_ns = round(config.probe_interval * NS_PER_S)
        self.probes = 0
        self.probe_latencies_ns: list[int] = []
        self.probe_kinds: collections.Counter[str] = collections.Counter()
        self.probes_open = 0

    # -- phases

    def start_probing(self, now: int) -> None:
        if self.probe_interval_ns:
            self.probing = True
            self.next_due_ns = now

    def stop(self) -> None:
        """The load is over: nothing more is sent or counted; probes in flight are awaited."""
        self.unanswered = self.outstanding
        self.stopped = True
        self.probing = False
        self.next_due_ns = None

    def answered(self) -> bool:
        return 0 < self.config.requests == self.issued and self.outstanding == 0

    def conns_served(self) -> int:
        # loadgen.c counts slots; a slot whose server closes after each response has many
        # connections, each served once.
        return min(self.served, self.config.concurrency)

    def _busy(self) -> bool:
        return self.probes_open > 0 if self.stopped else not self.answered()

    def _budget_left(self) -> bool:
        return not self.stopped and (self.config.requests == 0 or self.issued < self.config.requests)

    # -- probes

    def _expire(self, now: int) -> None:
        super()._expire(now)
        if self.probing and self.next_due_ns is not None and now >= self.next_due_ns:
            self._open_probe()
            self.next_due_ns += self.probe_interval_ns
            if self.next_due_ns <= now:  # the loop fell behind: no burst of probes
                self.next_due_ns = now + self.probe_interval_ns

    def _open_probe(self) -> None:
        self.probes += 1
        try:
            sock = self._new_socket()
        except OSError as exc:
            self.probe_kinds[errno_name(exc.errno)] += 1
            return
        conn = HttpConn(sock, probe=True)
        self.conns.add(conn)
        self.probes_open += 1
        self._start(conn)  # arms the probe: its clock runs from connect()

    def _probe_over(self, conn: HttpConn, kind: str | None) -> None:
        self._close(conn)
        self.probes_open -= 1
        if kind is None:
            self.probe_latencies_ns.append(monotonic_ns() - conn.started_ns)
        else:
            self.probe_kinds[kind] += 1

    # -- load slots

    def _new_conn(self, sock: socket.socket) -> Conn:
        return HttpConn(sock)

    def _connected(self, conn: Conn) -> None:
        assert isinstance(conn, HttpConn)
        if conn.probe:
            self._send_request(conn)
        else:
            self._next_request(conn)

    def _replied(self, conn: Conn) -> None:
        raise AssertionError("http replies are read by _receive")  # pragma: no cover

    def _next_request(self, conn: HttpConn) -> None:
        """Send the next request of the budget, or keep the connection open, idle, unwatched."""
        if not self._budget_left():
            self._disarm(conn)
            self._want(conn, 0)
            return
        self.issued += 1
        self.outstanding += 1
        conn.outstanding = True
        conn.in_body = False
        self._arm(conn)  # latency runs from the send
        self._send_request(conn)

    def _settle(self, conn: HttpConn, completed: bool) -> None:
        if not conn.outstanding:
            return
        conn.outstanding = False
        self.outstanding -= 1
        if self.stopped:
            return
        if completed:
            self.completed += 1
        else:
            self.failed += 1

    def _replace(self) -> None:
        if self._budget_left():
            super()._replace()

    def _fail(self, conn: Conn, kind: str) -> None:
        assert isinstance(conn, HttpConn)
        if conn.probe:
            self._probe_over(conn, kind)
            return
        self._settle(conn, False)
        if not self.stopped and kind in CLOSING_KINDS:
            self.closed_by_server += 1
        super()._fail(conn, kind)

    # -- responses

    def _receive(self, conn: Conn) -> None:
        assert isinstance(conn, HttpConn)
        if conn.in_body:
            want = min(conn.body_left + 1, BODY_CHUNK)  # a byte more than the body is a bad response
        else:
            want = HEAD_MAX - len(conn.received)
        try:
            data = conn.sock.recv(want)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, errno_name(exc.errno))
            return
        if not data:
            self._fail(conn, "EOF")
            return
        if conn.in_body:
            if len(data) > conn.body_left:
                self._fail(conn, "BADRESPONSE")
                return
            conn.body_left -= len(data)
        else:
            start = max(0, len(conn.received) - 3)
            conn.received += data
            end = conn.received.find(b"\r\n\r\n", start)
            if end < 0:
                if len(conn.received) >= HEAD_MAX:
                    self._fail(conn, "BADRESPONSE")
                return
            size = end + 4
            parsed = parse_head(bytes(conn.received[:size]))
            extra = len(conn.received) - size  # body bytes read with the head
            conn.received.clear()
            if isinstance(parsed, str):
                self._fail(conn, parsed)
                return
            conn.status, conn.body_left, conn.closes = parsed
            if extra > conn.body_left:
                self._fail(conn, "BADRESPONSE")
                return
            conn.body_left -= extra
            conn.in_body = True
        if conn.body_left == 0:
            self._complete(conn)
        elif self.quickack is not None:
            # Acknowledge the part at once: a server that writes its head and body separately
            # (SimpleHTTPRequestHandler does) has the body held by Nagle until the head is
            # acknowledged, and a delayed ACK would add up to 40 ms of nobody's work per request.
            with contextlib.suppress(OSError):
                conn.sock.setsockopt(socket.IPPROTO_TCP, self.quickack, 1)

    def _complete(self, conn: HttpConn) -> None:
        ok = conn.status == 200
        kind = None if ok else f"HTTP_{conn.status}"
        if conn.probe:
            self._probe_over(conn, kind)
            return
        if ok:
            self.stats.reply(conn.started_ns)
            if not conn.replied:
                conn.replied = True
                self.served += 1
        else:
            self.stats.error(f"HTTP_{conn.status}")
        self._settle(conn, ok)
        if conn.closes:
            # The server said it closes (Connection: close, or HTTP/1.0 without keep-alive):
            # a new connection carries on.
            if not self.stopped:
                self.closed_by_server += 1
            self._close(conn)
            if self._budget_left():
                self._open()
            return
        self._next_request(conn)


# ---------------------------------------------------------------- datagram mode


class DatagramClient(Client):
    """dgram: each slot keeps one connected datagram socket with one request outstanding; a
    reply or a timeout (a loss) sends the next request."""

    def __init__(self, config: Config, stats: Stats) -> None:
        super().__init__(config, stats)
        # The server replies to the sender's address, so every socket needs one: udp binds the
        # loopback of the server's family; unixdgram binds "", which autobinds an abstract name.
        self.local: Address = ""
        if config.family != socket.AF_UNIX:
            self.local = ("::1" if config.family == socket.AF_INET6 else "127.0.0.1", 0)

    def _start(self, conn: Conn) -> None:
        self._exchange(conn)

    def _new_socket(self) -> socket.socket:
        sock = socket.socket(self.config.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self.local)
            sock.connect(self.config.address)
            if connected_to_itself(sock):
                raise ConnectionRefusedError(errno.ECONNREFUSED, "socket connected to itself")
        except OSError:
            sock.close()
            raise
        return sock

    def _on_ready(self, conn: Conn, events: int) -> None:
        if conn.state is State.SENDING:
            self._send(conn)
        else:
            self._receive(conn)

    def _timed_out(self, conn: Conn) -> None:
        self.stats.loss()
        self._exchange(conn)

    def _exchange(self, conn: Conn) -> None:
        self._arm(conn)
        self._send(conn)

    def _send(self, conn: Conn) -> None:
        try:
            conn.sock.send(self.request)
        except BlockingIOError:
            conn.state = State.SENDING
            self._want(conn, selectors.EVENT_WRITE)
            return
        except OSError as exc:
            self._fail(conn, errno_name(exc.errno))
            return
        conn.state = State.RECEIVING
        self._want(conn, selectors.EVENT_READ)

    def _receive(self, conn: Conn) -> None:
        try:
            reply = conn.sock.recv(len(self.request) + 1)  # the extra byte shows a reply too long
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, errno_name(exc.errno))
            return
        if reply != self.request:
            self._fail(conn, "MISMATCH")
            return
        self.stats.reply(conn.started_ns)
        self._exchange(conn)


# ---------------------------------------------------------------- runs


TIMED_CLIENTS: dict[str, type[Client]] = {"crr": CrrClient, "rr": RrClient, "dgram": DatagramClient}


def run_timed(config: Config) -> dict[str, object]:
    """crr, rr, dgram: run --warmup seconds uncounted, then --duration seconds counted."""
    stats = Stats()
    client = TIMED_CLIENTS[config.mode](config, stats)
    try:
        started = monotonic_ns()
        stats.counting = config.warmup == 0  # then the first connects' failures count too
        client.start()
        window_start = client.run_until(started + round(config.warmup * NS_PER_S))
        stats.counting = True
        window_end = client.run_until(started + round((config.warmup + config.duration) * NS_PER_S))
    finally:
        client.close()
    return result_line(config, stats, window_end - window_start, client.conns_served())


def run_http(config: Config) -> dict[str, object]:
    """http: the load until --requests are answered (or failed) or --warmup + --duration pass,
    probes inside the measured window; then the probes still in flight, each until its reply or
    its --timeout, while the load's connections stay open (closing them could free a stalled
    server and flatter a late probe)."""
    stats = Stats()
    client = HttpClient(config, stats)
    try:
        started = monotonic_ns()
        stats.counting = config.warmup == 0
        client.start()
        window_start = ended = client.run_until(started + round(config.warmup * NS_PER_S))
        if client.answered():
            window_start = started  # answered within the warm-up: nothing measured
        else:
            stats.counting = True
            client.start_probing(window_start)
            ended = client.run_until(started + round((config.warmup + config.duration) * NS_PER_S))
        stats.counting = False
        client.stop()
        client.run_until(monotonic_ns() + 2 * client.timeout_ns)  # every probe ends by its timeout
    finally:
        client.close()
    result = result_line(config, stats, ended - window_start, client.conns_served())
    latencies = sorted(client.probe_latencies_ns)
    result.update({
        "requests": config.requests, "completed": client.completed, "failed": client.failed,
        "unanswered": client.unanswered, "closed_by_server": client.closed_by_server,
        "probes": client.probes, "probe_failures": sum(client.probe_kinds.values()),
        "probe_p50_us": percentile_us(latencies, 50), "probe_max_us": percentile_us(latencies, 100),
        "probe_error_kinds": dict(sorted(client.probe_kinds.items())),
    })
    return result


def run_idle(config: Config) -> dict[str, object]:
    """idle: open every connection and exchange once on each, print ``HOLDING <served>``, hold
    them until stdin's EOF or --hold seconds. The counted window is the opening phase."""
    stats = Stats()
    stats.counting = True
    client = IdleClient(config, stats)
    try:
        started = monotonic_ns()
        client.start()
        # Every connection's deadline falls before this, so none is left pending after it.
        ended = client.run_until(monotonic_ns() + client.timeout_ns)
        print(f"HOLDING {client.served}", flush=True)
        wait_for_stdin_eof(config.hold)
    finally:
        client.close()
    return result_line(config, stats, ended - started, client.conns_served())


def wait_for_stdin_eof(timeout: float) -> None:
    """Return when stdin reaches its end or after ``timeout`` seconds, whichever comes first."""
    if sys.stdin is None:
        return  # started with fd 0 closed: no stdin, and fd 0 may be one of our sockets by now
    deadline = monotonic() + timeout
    # poll(), unlike epoll, takes any stdin: a regular file or /dev/null is always readable,
    # and soon at its end.
    with selectors.PollSelector() as selector:
        selector.register(0, selectors.EVENT_READ)
        while (left := deadline - monotonic()) > 0:
            if selector.select(left) and not read_stdin():
                return


def read_stdin() -> bytes:
    """Whatever stdin has (b"" at its end, or if reading it fails: a hung-up tty, say)."""
    try:
        return os.read(0, 65536)
    except OSError:
        return b""


def raise_fd_limit() -> None:
    """Every connection is an fd: let --concurrency go as high as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit may be refused (it is above fs.nr_open): keep the soft one.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    raise_fd_limit()
    if config.mode == "idle":
        result = run_idle(config)
    elif config.mode == "http":
        result = run_http(config)
    else:
        result = run_timed(config)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
