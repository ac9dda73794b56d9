"""Event-driven connections: ``Protocol`` callbacks over a ``Transport`` the loop owns.

The socketserver model gives each connection a blocking handler. New code
that serves many mostly idle connections in one thread wants events instead:
``Reactor.create_server(factory, address)`` makes a listener whose every
connection gets a :class:`Protocol` instance from ``factory()``, driven by
the loop through a :class:`Transport`. Names and meanings follow asyncio's,
so that knowledge carries over; the docstrings say where they differ.

Theory of operation
-------------------
The listener is an ordinary hosted server (the stdlib duck type), so
everything ``add_server`` does applies unchanged: access rules and limits,
PROXY headers, TLS handshakes in the loop, first-byte and I/O deadlines,
counters, graceful leaving. Only at ``process_request`` does the path differ:
instead of running a handler, the server wraps the admitted socket in a
``Transport`` and calls ``connection_made``; from then on the loop calls the
protocol when bytes arrive, and the connection costs no thread.

Rules
-----
1. Every protocol callback runs in the loop's thread. ``connection_made``
   comes first, ``connection_lost`` last and exactly once; nothing is called
   in between after ``connection_lost``.
2. ``write()`` sends at once and buffers only what the kernel did not take;
   the writer is registered only while something is buffered (write
   interest is never toggled for a write that completes). The buffer is a
   ``bytearray`` trimmed from the front (amortised O(1)), never re-sliced.
3. Flow control: above the high-water mark the protocol's
   ``pause_writing()`` is called, at or below the low-water mark
   ``resume_writing()``. The buffer is not capped beyond that: a protocol
   that ignores ``pause_writing()`` owns its memory.
4. Reading: one ``recv`` per readiness event, and more only while each read
   fills the buffer (up to a bounded number per event), so a request/reply
   connection pays no extra system call and a bulk sender cannot starve
   the others. Under TLS, bytes OpenSSL already decrypted are read too.
   The size asked for adapts: small (``MIN_READ``) while reads are small,
   sixteen times larger after each read that filled it, up to ``MAX_READ``.
   A read allocates what it asks for before it shrinks to what arrived, and
   a small request costs far less to allocate than 64 KiB.
5. A protocol callback that raises is logged with the connection, and that
   connection is aborted (``connection_lost`` receives the exception); the
   loop and every other connection go on.
6. Leaving (``remove_server``, ``close()``, SIGTERM): the listener stops
   accepting, each transport stops reading and closes once its buffer is
   flushed, all under the server's ``drain_timeout``; what is left is aborted.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol as _TypingProtocol

from ._errors import RequestDropped
from ._platform import HAS_RECVMSG_TRUNC, TCP_INFO, TCP_STATE_CLOSE
from ._ratelimit import RateLimitedLog
from .admission import request_info
from .binding import UnixSocketPath, create_server_socket, describe_address
from .loop import EventLoop

if TYPE_CHECKING:
    from .accept import HostedServer

__all__ = [
    "BaseProtocol", "DatagramProtocol", "DatagramServer", "DatagramTransport", "Protocol", "StreamServer",
    "Transport", "TransportOwner",
]

logger = logging.getLogger(__name__)

#: Default write-buffer marks (asyncio's): pause the producer above 64 KiB, resume at 16 KiB.
DEFAULT_HIGH_WATER = 64 * 1024
#: Most bytes asked of one ``recv``. Kept below glibc's mmap threshold (128 KiB): ``recv(n)``
#: allocates n bytes before it shrinks them to what arrived, and at 256 KiB (asyncio's size)
#: each call paid an mmap/munmap pair, about 14 us, five times the cost of the system call.
MAX_READ = 64 * 1024
#: The size asked of a connection's first ``recv``, and again after a read of at most this
#: many bytes. Small enough for the interpreter's own allocator (objects up to 512 bytes).
MIN_READ = 256
#: How much the size asked for grows after a read that filled it: 256 B, 4 KiB, 64 KiB.
READ_GROWTH = 16
#: Most reads per readiness event (each only when the previous one filled the buffer).
READS_PER_EVENT = 16
#: Datagrams a DatagramTransport queues (beyond the high-water mark they are dropped).
MAX_QUEUED_DATAGRAMS = 1024
#: Most datagrams a DatagramServer reads per readiness event (libuv reads 32): enough to
#: make the wake-up cheap per datagram, few enough that the loop's other servers get a turn.
DATAGRAMS_PER_WAKEUP = 64

_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0))

#: Plain sockets are read and written with ``os.read``/``os.write`` on their descriptor: the
#: same system calls as ``recv``/``send`` without flags, minus the socket methods' argument
#: parsing and timeout bookkeeping (about a tenth of the loop's cost per request/reply).
#: The transport's socket is always non-blocking, so the timeout logic has nothing to do.
_FD_IO = os.name == "posix"

#: Errors that say the peer went away: logged at debug level, not as failures.
_PEER_GONE = frozenset(getattr(errno, name) for name in ("ECONNRESET", "EPIPE", "ECONNABORTED", "ETIMEDOUT",
                                                         "ENOTCONN", "ESHUTDOWN") if hasattr(errno, name))


class BaseProtocol:
    """What every protocol can be told: the connection came, went, or its writes back up."""

    def connection_made(self, transport: Any) -> None:
        """The connection is ready; ``transport`` is how to talk on it."""

    def connection_lost(self, exc: BaseException | None) -> None:
        """The connection is closed (``exc`` is None for a clean close or EOF)."""

    def pause_writing(self) -> None:
        """The transport's buffer went above its high-water mark: stop writing for now."""

    def resume_writing(self) -> None:
        """The buffer drained to its low-water mark: writing may go on."""


class Protocol(BaseProtocol):
    """The callbacks of one stream connection (TCP over IPv4/IPv6, Unix stream), as asyncio's.

    Subclass it and override what you need; the loop calls ``connection_made``
    first, then ``data_received`` for each chunk of bytes and
    ``eof_received`` when the peer stops sending, then ``connection_lost``.
    """

    def data_received(self, data: bytes) -> None:
        """Some bytes arrived (any split: messages need framing of their own)."""

    def eof_received(self) -> bool | None:
        """The peer closed its sending side. Return a true value to keep writing (a
        half-close); otherwise the transport closes itself. Under TLS the value is ignored."""
        return None


class DatagramProtocol(BaseProtocol):
    """The callbacks of a datagram endpoint (UDP, Unix datagram), as asyncio's."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """One datagram arrived from ``addr`` (one too large for the buffer is dropped, never cut)."""

    def error_received(self, exc: OSError) -> None:
        """A send failed (e.g. ECONNREFUSED from an ICMP message), or a reply was dropped."""


class TransportOwner(_TypingProtocol):
    """What a :class:`Transport` reports to: the server that made it (:class:`StreamServer`, or
    the message mode of ``reactor.framing``)."""

    #: A short name for logs.
    name: str

    def warn(self, cause: object, message: str, *args: Any) -> None:
        """Log a warning a client can cause, rate-limited per cause."""

    def transport_ended(self, transport: Transport) -> None:
        """The transport is closed and ``connection_lost`` was called: release its socket."""


class Transport:
    """One stream connection owned by the loop; what a :class:`Protocol` writes to.

    Made by the server for each admitted connection; not instantiated by users.
    Differences from asyncio: ``get_extra_info("ssl_object")`` is the
    non-blocking ``ssl.SSLSocket`` (no ``SSLObject``), and the extra names
    ``client_address``, ``proxy_address`` and ``request_info`` carry what
    admission learned (the proxied client behind a PROXY header).

    Thread-safety: every method belongs to the loop's thread.
    """

    # Slots lie in memory in this order: what a read and a write touch comes first, so that with
    # thousands of connections an event costs the fewest cache lines.
    __slots__ = ("_read", "_io_target", "_protocol", "_read_size", "_tls", "_send", "_writer_registered",
                 "_closing", "_eof_pending", "_reading", "_buffer", "_loop", "_sock", "_fd", "_server",
                 "_client_address", "_high", "_low", "_started", "_lost", "_eof_sent", "_protocol_paused",
                 "_would_block", "_dropped_writes", "__weakref__")

    def __init__(self, loop: EventLoop, sock: socket.socket, protocol: Protocol, server: TransportOwner,
                 client_address: Any) -> None:
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._server = server
        self._client_address = client_address
        self._buffer = bytearray()
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._reading = True
        self._started = False
        self._closing = False
        self._lost = False
        self._eof_pending = False
        self._eof_sent = False
        self._protocol_paused = False
        self._writer_registered = False
        self._dropped_writes = 0
        self._read_size = MIN_READ
        ssl = sys.modules.get("ssl")
        self._tls = ssl is not None and isinstance(sock, ssl.SSLSocket)
        # read(target, n) and send(target, data): on the descriptor for a plain socket (see
        # _FD_IO), the socket's own methods (called unbound) for TLS or elsewhere.
        self._read: Callable[[Any, int], bytes]
        self._send: Callable[[Any, Any], int]
        self._io_target: int | socket.socket
        if _FD_IO and not self._tls:
            self._read, self._send, self._io_target = os.read, os.write, self._fd
        else:
            self._read, self._send, self._io_target = type(sock).recv, type(sock).send, sock
        if self._tls:
            assert ssl is not None
            # An EOF without close_notify raises SSLEOFError instead of reading as b"": how
            # it was raised tells a peer's FIN from its reset (see _read_ready).
            sock.suppress_ragged_eofs = False  # type: ignore[attr-defined]
            self._would_block: tuple[type[BaseException], ...] = (
                BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        else:
            self._would_block = (BlockingIOError, InterruptedError)

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return f"<Transport fd={self._fd} {state} client={self._client_address!r}>"

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Call ``connection_made`` and start reading (unless the protocol paused or closed).
        Called once, by the owner that made the transport."""
        self._started = True
        try:
            self._protocol.connection_made(self)
        except Exception as exc:
            self._callback_failed("connection_made", exc)
            return
        if self._reading and not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)

    def is_closing(self) -> bool:
        """True once ``close()`` or ``abort()`` was called, or the connection was lost."""
        return self._closing

    def close(self) -> None:
        """Stop reading; close once everything buffered is written, then ``connection_lost(None)``."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        """Close at once, discarding what is buffered; ``connection_lost(None)`` follows."""
        self._force_close(None)

    # -- reading ---------------------------------------------------------------

    def is_reading(self) -> bool:
        """True unless reading is paused or the transport is closing."""
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        """Stop calling ``data_received`` until ``resume_reading()`` (honoured in ``connection_made`` too)."""
        if not self._reading or self._closing:
            return
        self._reading = False
        if self._started:
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        """Call ``data_received`` again as bytes arrive."""
        if self._reading or self._closing:
            return
        self._reading = True
        if self._started:
            self._loop.add_reader(self._fd, self._read_ready)
            if self._tls and self._sock.pending():  # type: ignore[attr-defined]
                self._loop.call_soon(self._read_pending)  # decrypted bytes the selector cannot see

    def _read_pending(self) -> None:
        if self._reading and not self._closing:  # still wanted a tick after resume_reading()
            self._read_ready()

    def _read_ready(self) -> None:
        read, target = self._read, self._io_target
        protocol = self._protocol
        reads = READS_PER_EVENT
        while True:
            size = self._read_size
            try:
                data = read(target, size)
            except self._would_block:
                return
            except OSError as exc:
                if not (self._tls and type(exc).__name__ == "SSLEOFError"):
                    self._fatal(exc)
                    return
                if self._was_reset(exc):
                    self._fatal(ConnectionResetError(errno.ECONNRESET, "connection reset by peer"))
                    return
                data = b""  # the peer closed without close_notify: an EOF all the same
            if not data:
                self._eof_received()
                return
            try:
                protocol.data_received(data)
            except Exception as exc:
                self._callback_failed("data_received", exc)
                return
            # The common case first, in the fewest reads: a short read on a plain socket means
            # the kernel had no more (don't pay for an EAGAIN).
            got = len(data)
            if got < size:
                if size != MIN_READ and got <= MIN_READ:
                    self._read_size = MIN_READ  # small reads again: small allocations again
                if not self._tls:
                    return
            elif size < MAX_READ:
                self._read_size = min(size * READ_GROWTH, MAX_READ)
            if not self._reading or self._closing:
                return
            if got < size and not self._sock.pending():  # type: ignore[attr-defined]
                return  # nor had OpenSSL
            reads -= 1
            if not reads:
                return

    def _was_reset(self, exc: OSError) -> bool:
        """True when a TLS read that failed with SSLEOFError met a reset, not a FIN.

        OpenSSL 3 names a FIN without close_notify (``UNEXPECTED_EOF_WHILE_READING``,
        and answers it with an alert); the ssl module before Python 3.13 loses
        the errno of a reset (3.13 raises ConnectionResetError), and OpenSSL 1.1
        names neither. A reset leaves the TCP connection CLOSED where a
        FIN leaves it in CLOSE_WAIT (Linux; on a Unix socket a reset reads as EOF).
        """
        if getattr(exc, "reason", None) is not None or TCP_INFO is None \
                or self._sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        try:
            state = self._sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 1)
        except OSError:
            return False
        return state[0] == TCP_STATE_CLOSE

    def _eof_received(self) -> None:
        self._loop.remove_reader(self._fd)
        self._reading = False
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            self._callback_failed("eof_received", exc)
            return
        if not keep_open or self._tls:
            self.close()

    # -- writing ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``: at once as far as the kernel takes it, the rest from the loop.

        Raises:
            TypeError: ``data`` is not bytes-like.
            RuntimeError: after ``write_eof()``.
        """
        # The writer is registered exactly while something is buffered (a flag: no touching the
        # buffer). Not bytes-like: the system call (os.write, or the socket's send) raises TypeError.
        if not (data and not (self._writer_registered or self._closing or self._eof_pending)) \
                and not self._write_needs_send(data):
            return
        send = self._send  # an attribute, then a call: a method lookup on a slot is not specialised
        try:
            sent = send(self._io_target, data)
        except self._would_block:
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent != len(data):
            self._buffer_rest(data, sent)

    def _write_needs_send(self, data: bytes | bytearray | memoryview) -> bool:
        """The rest of ``write()`` apart from its common case (non-empty bytes, nothing buffered):
        check ``data``, drop it after a close, or queue it behind what is buffered; True when it
        is to be sent now."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if self._eof_pending:
            raise RuntimeError("write() after write_eof()")
        if self._closing:
            self._dropped_writes += 1
            if self._dropped_writes == 1:
                logger.warning("%r: write() after close() or abort(): dropped", self)
            return False
        if not data:
            return False
        if not self._buffer:
            return True
        self._buffer += data
        self._maybe_pause_protocol()
        return False

    def _buffer_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        """Keep what the kernel did not take of ``data`` and wait until the socket is writable."""
        self._loop.add_writer(self._fd, self._write_ready)
        self._writer_registered = True
        self._buffer += memoryview(data)[sent:] if sent else data
        self._maybe_pause_protocol()

    def writelines(self, chunks: Any) -> None:
        """Write every chunk of an iterable of bytes-like objects, as one write."""
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        """True for plain streams; False under TLS (its close ends both directions)."""
        return not self._tls

    def write_eof(self) -> None:
        """Close the sending side once everything buffered is written (the peer reads EOF).

        Raises:
            NotImplementedError: under TLS.
        """
        if self._tls:
            raise NotImplementedError("write_eof() is not supported under TLS")
        if self._closing or self._eof_pending:
            return
        self._eof_pending = True
        if not self._buffer:
            self._send_eof()

    def _send_eof(self) -> None:
        self._eof_sent = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    def _write_ready(self) -> None:
        buffer = self._buffer
        send = self._send
        try:
            sent = send(self._io_target, buffer)
        except self._would_block:
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del buffer[:sent]
        self._maybe_resume_protocol()
        if buffer:
            return
        self._loop.remove_writer(self._fd)
        self._writer_registered = False
        if self._closing:
            self._finish(None)
        elif self._eof_pending and not self._eof_sent:
            self._send_eof()

    def get_write_buffer_size(self) -> int:
        """Bytes buffered, not yet taken by the kernel."""
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The (low, high) water marks."""
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks (default high 64 KiB, low ``high // 4``), as asyncio's.

        Raises:
            ValueError: unless ``0 <= low <= high``.
        """
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if not self._protocol_paused and len(self._buffer) > self._high:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception as exc:
                self._callback_failed("pause_writing", exc)

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and len(self._buffer) <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception as exc:
                self._callback_failed("resume_writing", exc)

    # -- facts -------------------------------------------------------------------

    def get_protocol(self) -> Protocol:
        """The protocol this transport drives."""
        return self._protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """What is known about the connection.

        ``peername``, ``sockname``, ``socket``: as asyncio's (``peername`` is
        the socket's peer, a load balancer behind PROXY protocol);
        ``client_address``: the client (the proxied one behind a PROXY
        header); ``proxy_address``: the balancer's address, or None;
        ``request_info``: admission's :class:`~reactor.admission.RequestInfo`;
        under TLS ``ssl_object`` (the ``ssl.SSLSocket``), ``peercert``,
        ``cipher``, ``compression``, ``sslcontext``.
        """
        sock = self._sock
        try:
            if name == "peername":
                return sock.getpeername()
            if name == "sockname":
                return sock.getsockname()
        except OSError:
            return default
        if name == "socket":
            return sock
        if name == "client_address":
            return self._client_address
        if name in ("request_info", "proxy_address"):
            info = request_info(sock)
            if name == "request_info":
                return info if info is not None else default
            return info.proxy_address if info is not None else default
        if self._tls:
            tls: Any = sock
            if name == "ssl_object":
                return tls
            if name == "peercert":
                return tls.getpeercert()
            if name == "cipher":
                return tls.cipher()
            if name == "compression":
                return tls.compression()
            if name == "sslcontext":
                return tls.context
        return default

    # -- endings -------------------------------------------------------------------

    def _callback_failed(self, callback: str, exc: Exception) -> None:
        logger.error("%s: %s.%s() raised; aborting %r", self._server.name, type(self._protocol).__name__,
                     callback, self, exc_info=exc)
        self._force_close(exc)

    def _fatal(self, exc: OSError) -> None:
        if exc.errno in _PEER_GONE or type(exc).__name__ == "SSLEOFError":
            logger.debug("%r: %s", self, exc)
        else:
            self._server.warn(type(exc).__name__, "%s: connection %r failed: %s", self._server.name, self, exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._buffer.clear()
        if self._writer_registered:
            self._loop.remove_writer(self._fd)
            self._writer_registered = False
        if not self._closing:
            self._closing = True
            self._loop.remove_reader(self._fd)
            self._loop.call_soon(self._finish, exc)
        elif not self._lost:
            self._loop.call_soon(self._finish, exc)

    def _abort_now(self) -> None:
        """Abort and call ``connection_lost(None)`` before returning (the server is leaving:
        no later tick may run)."""
        if self._lost:
            return
        self._buffer.clear()
        self._closing = True
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._writer_registered:
            self._loop.remove_writer(self._fd)
            self._writer_registered = False
        self._loop.remove_reader(self._fd)
        try:
            if self._started:
                self._protocol.connection_lost(exc)
        except Exception:
            logger.exception("%s: %s.connection_lost() raised", self._server.name, type(self._protocol).__name__)
        finally:
            self._server.transport_ended(self)


class _BoundSocket:
    """What both protocol servers are: a socket bound (and, for streams, listening) by this process.

    Attributes:
        socket: the socket.
        server_address: the address it is bound to.
        name: the server's name for logs, e.g. ``StreamServer(tcp4 127.0.0.1:8000)``.
    """

    def __init__(self, sock_type: int, address: Any, *, family: int, reuse_port: bool, mode: int | None,
                 backlog: int = socket.SOMAXCONN) -> None:
        self._unix_path: UnixSocketPath | None
        self.socket, self._unix_path = create_server_socket(
            family, sock_type, address, backlog=backlog, reuse_port=reuse_port, mode=mode)
        self.server_address = self.socket.getsockname()
        self.name = f"{type(self).__name__}({describe_address(self.socket.family, sock_type, self.server_address)})"
        self._warnings = RateLimitedLog(logger)

    def warn(self, cause: object, message: str, *args: Any) -> None:
        """Log a warning a client can cause, at most once per 10 s per cause."""
        self._warnings.warning(cause, message, *args)

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.socket.fileno()

    def server_close(self) -> None:
        """Close the socket (and remove a Unix socket file this process bound)."""
        self.socket.close()
        unix_path, self._unix_path = self._unix_path, None
        if unix_path is not None:
            unix_path.unlink()


class StreamServer(_BoundSocket):
    """A listening stream socket whose connections are served by :class:`Protocol` instances.

    Made by ``Reactor.create_server``; it is a hosted server (the stdlib duck
    type), so ``remove_server`` and every ``add_server`` option apply to it.

    Attributes:
        socket: the listening socket.
        server_address: the address it is bound to.
        protocol_factory: makes one protocol per connection.
        drain_timeout: seconds connections get to flush and close when the server leaves.
    """

    def __init__(self, protocol_factory: Callable[[], Protocol], address: Any, *, family: int = socket.AF_INET,
                 backlog: int = socket.SOMAXCONN, reuse_port: bool = False, drain_timeout: float = 30.0,
                 mode: int | None = None) -> None:
        super().__init__(socket.SOCK_STREAM, address, family=family, reuse_port=reuse_port, mode=mode,
                         backlog=backlog)
        self.protocol_factory = protocol_factory
        self.drain_timeout = drain_timeout
        self._loop: EventLoop | None = None
        self._transports: set[Transport] = set()
        self._on_drained: Callable[[], None] | None = None
        self._draining = False

    def __repr__(self) -> str:
        return f"<{self.name} {len(self._transports)} connections>"

    @property
    def transports(self) -> frozenset[Transport]:
        """The open connections."""
        return frozenset(self._transports)

    # -- the hosted-server duck type -----------------------------------------------

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept one connection."""
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Every admitted connection is served (admission already applied the rules)."""
        return True

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        """Make the connection's transport and protocol (in the loop's thread)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.name} is not hosted by a reactor")
        if loop.in_loop():
            self._connect(request, client_address)
        else:  # a strategy ran us on a worker thread (Prefork's threads): protocols live in the loop
            loop.call_soon_threadsafe(self._connect, request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        """Close a connection that will not be served."""
        self.close_request(request)

    def close_request(self, request: socket.socket) -> None:
        """Close a connection's socket."""
        request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log the exception being handled, with the client."""
        logger.exception("%s: error serving %r", self.name, client_address)

    # -- hosting -----------------------------------------------------------------------

    def hosting_started(self, hosted: HostedServer) -> None:
        """Remember the loop that serves the connections."""
        self._loop = hosted.reactor
        self._draining = False

    def hosting_stopped(self, hosted: HostedServer) -> None:
        """Abort whatever a drain left open."""
        self.abort_connections()

    def drain_connections(self, on_drained: Callable[[], None]) -> float:
        """Close every connection once its buffer is flushed; ``on_drained()`` when none is left.

        Returns:
            ``drain_timeout``.
        """
        self._draining = True
        if not self._transports:
            on_drained()
            return self.drain_timeout
        self._on_drained = on_drained
        for transport in list(self._transports):
            transport.close()
        return self.drain_timeout

    def abort_connections(self) -> None:
        """Abort every connection at once (the drain deadline passed): each one's
        ``connection_lost(None)`` runs before this returns."""
        for transport in list(self._transports):
            transport._abort_now()

    # -- connections ------------------------------------------------------------------

    def _connect(self, sock: socket.socket, client_address: Any) -> None:
        loop = self._loop
        if loop is None or self._draining:  # handed over from a worker thread as the server began leaving
            self.shutdown_request(sock)
            return
        try:
            sock.setblocking(False)
            protocol = self.protocol_factory()
        except Exception:
            self.handle_error(sock, client_address)
            self.shutdown_request(sock)
            return
        transport = Transport(loop, sock, protocol, self, client_address)
        self._transports.add(transport)
        transport.start()

    def transport_ended(self, transport: Transport) -> None:
        """Release a closed connection's socket (called by its transport)."""
        self._transports.discard(transport)
        self.shutdown_request(transport._sock)
        if self._on_drained is not None and not self._transports:
            on_drained, self._on_drained = self._on_drained, None
            on_drained()


class DatagramTransport:
    """The sending side of a datagram endpoint; what a :class:`DatagramProtocol` writes to.

    ``sendto`` sends at once; when the socket buffer is full the datagram is
    queued and sent from the loop (the protocol's ``pause_writing()`` is
    called above the high-water mark); beyond ``MAX_QUEUED_DATAGRAMS`` it is
    dropped and the protocol told through ``error_received``.
    """

    def __init__(self, server: DatagramServer) -> None:
        self._server = server
        self._sock = server.socket
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._queued_bytes = 0
        self._closing = False
        self._protocol_paused = False
        self.dropped = 0

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to ``addr`` (required: the endpoint is not connected)."""
        # The common case (bytes, nothing queued) goes straight to the socket.
        if not (type(data) is bytes and not (self._queue or self._closing)):
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
            if self._closing:
                return
            if self._queue:
                self._enqueue(data, addr)
                return
        try:
            self._sock.sendto(data, addr)
            return
        except (BlockingIOError, InterruptedError):
            self._server._watch_writable(True)
        except OSError as exc:
            self._server._error_received(exc)
            return
        self._enqueue(data, addr)

    def _enqueue(self, data: bytes | bytearray | memoryview, addr: Any) -> None:
        """Queue a datagram the socket did not take, or drop it when the queue is full."""
        server = self._server
        if len(self._queue) >= MAX_QUEUED_DATAGRAMS:
            self.dropped += 1
            server._error_received(BlockingIOError(errno.ENOBUFS, f"send queue full: dropped a datagram to {addr!r}"))
            return
        self._queue.append((bytes(data), addr))
        self._queued_bytes += len(data)
        if not self._protocol_paused and self._queued_bytes > DEFAULT_HIGH_WATER:
            self._protocol_paused = True
            server._call("pause_writing")

    def _flush(self) -> None:
        server = self._server
        while self._queue:
            data, addr = self._queue[0]
            try:
                server.socket.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                server._error_received(exc)
            self._queue.popleft()
            self._queued_bytes -= len(data)
        server._watch_writable(False)
        if self._protocol_paused:
            self._protocol_paused = False
            server._call("resume_writing")

    def get_write_buffer_size(self) -> int:
        """Bytes queued, not yet sent."""
        return self._queued_bytes

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``sockname`` and ``socket``, as asyncio's."""
        if name == "socket":
            return self._server.socket
        if name == "sockname":
            return self._server.server_address
        return default

    def is_closing(self) -> bool:
        """True once the endpoint is leaving."""
        return self._closing

    def close(self) -> None:
        """Stop sending; queued datagrams are dropped."""
        self._closing = True
        self._queue.clear()
        self._queued_bytes = 0

    abort = close


class DatagramServer(_BoundSocket):
    """A datagram socket (UDP over IPv4/IPv6, Unix datagram) served by one :class:`DatagramProtocol`.

    Made by ``Reactor.create_server``; a hosted server like any other. The
    protocol is made when hosting starts (``connection_made`` with its
    :class:`DatagramTransport`) and told ``connection_lost(None)`` when it ends.
    Each time the socket is readable, the datagrams waiting are read until
    none is left, at most ``DATAGRAMS_PER_WAKEUP`` of them, each handed to
    ``datagram_received`` as it is read; each counts as a request (and as
    dispatched) in the reactor's ``server_stats``.
    """

    def __init__(self, protocol_factory: Callable[[], DatagramProtocol], address: Any, *,
                 family: int = socket.AF_INET, reuse_port: bool = False, max_packet_size: int = 65535,
                 mode: int | None = None) -> None:
        super().__init__(socket.SOCK_DGRAM, address, family=family, reuse_port=reuse_port, mode=mode)
        self.protocol_factory = protocol_factory
        self.max_packet_size = max_packet_size
        self.protocol: DatagramProtocol | None = None
        self.transport: DatagramTransport | None = None
        self.truncated_datagrams = 0
        self._hosted: HostedServer | None = None
        self._into: memoryview | None = None
        #: Reads left in this wake-up (a dropped datagram ends a get_request() call, not the wake-up).
        self._reads_left = DATAGRAMS_PER_WAKEUP

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def get_request(self) -> tuple[bytes, Any]:
        """Serve the datagrams waiting, then raise ``BlockingIOError`` (the host's "none left").

        While hosted, every datagram read goes straight to the protocol's
        ``datagram_received`` (one that raises is logged by ``handle_error``
        and serving goes on): the host's per-request path would cost more
        than the echo itself. The host learns the count through its counters
        and still sees a too-large datagram, as ``RequestDropped``.
        Unhosted, one datagram is received and returned.

        Raises:
            BlockingIOError: no datagram is left, or ``DATAGRAMS_PER_WAKEUP``
                were served (the loop comes back for the rest), or serving
                must pause (the reactor stops or a signal is pending).
            RequestDropped: a datagram larger than ``max_packet_size`` (dropped, counted).
        """
        hosted = self._hosted
        protocol = self.protocol
        if hosted is None or protocol is None:
            return self._receive()
        loop = hosted.reactor
        # recvfrom of one byte more than the limit: a longer datagram reads as exactly that
        # many bytes and is dropped, never cut. 1.5 us a datagram here against 2.2 for
        # recvmsg_into (MSG_TRUNC) and the copy out of its buffer; but recvfrom allocates its
        # size each time, so a limit above MAX_READ (glibc would mmap) takes the buffer's way.
        size = self.max_packet_size + 1
        receive = self.socket.recvfrom if size <= MAX_READ + 1 else self._receive_into
        datagram_received = protocol.datagram_received
        served = 0
        try:
            while self._reads_left > 0:
                self._reads_left -= 1
                data, addr = receive(size)
                if len(data) >= size:
                    self._truncated(addr)
                served += 1
                try:
                    datagram_received(data, addr)
                except Exception:
                    self.handle_error(data, addr)
                # The protocol may have stopped the reactor, removed or paused this server.
                if loop.stopping or loop.signal_pending or self.protocol is not protocol or hosted.paused:
                    break
        except BlockingIOError:
            self._reads_left = DATAGRAMS_PER_WAKEUP
            raise
        finally:
            if served:
                hosted.requests_taken += served
                hosted.count("dispatched", served)
        self._reads_left = DATAGRAMS_PER_WAKEUP
        raise BlockingIOError(errno.EAGAIN, "served the datagrams waiting")

    def _receive(self) -> tuple[bytes, Any]:
        size = self.max_packet_size + 1
        data, addr = self.socket.recvfrom(size) if size <= MAX_READ + 1 else self._receive_into(size)
        if len(data) >= size:
            self._truncated(addr)
        return data, addr

    def _receive_into(self, size: int) -> tuple[bytes, Any]:
        """One datagram through a buffer kept for the server (a ``max_packet_size`` too large to
        allocate per read); one longer than ``size - 1`` bytes is dropped."""
        if not HAS_RECVMSG_TRUNC:
            data, addr = self.socket.recvfrom(size - 1)  # no way to tell a cut datagram here
            return data, addr
        buffer = self._into
        if buffer is None:
            buffer = self._into = memoryview(bytearray(size - 1))
        nbytes, _, flags, addr = self.socket.recvmsg_into([buffer])
        if flags & _MSG_TRUNC:
            self._truncated(addr)
        return bytes(buffer[:nbytes]), addr

    def _truncated(self, addr: Any) -> None:
        self.truncated_datagrams += 1
        self._warnings.warning("truncated", "%s: dropped a datagram from %r larger than max_packet_size=%d "
                               "(%d so far)", self.name, addr, self.max_packet_size, self.truncated_datagrams)
        raise RequestDropped(f"datagram from {addr!r} larger than max_packet_size={self.max_packet_size}")

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Every datagram is served."""
        return True

    def process_request(self, request: bytes, client_address: Any) -> None:
        """Hand the datagram to the protocol (in the loop's thread)."""
        protocol = self.protocol
        if protocol is not None:
            protocol.datagram_received(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Nothing to close for a datagram."""

    def close_request(self, request: Any) -> None:
        """Nothing to close for a datagram."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log the exception being handled (a datagram_received that raised); serving goes on."""
        logger.exception("%s: %s.datagram_received() raised for a datagram from %r", self.name,
                         type(self.protocol).__name__, client_address)

    def hosting_started(self, hosted: HostedServer) -> None:
        """Make the protocol and its transport: ``connection_made``."""
        self._hosted = hosted
        self.transport = DatagramTransport(self)
        self.protocol = self.protocol_factory()
        self._call("connection_made", self.transport)

    def hosting_stopped(self, hosted: HostedServer) -> None:
        """``connection_lost(None)``; the socket stays open until ``server_close()``."""
        if self.transport is not None:
            self.transport.close()
        self._watch_writable(False)
        self._call("connection_lost", None)
        self._hosted = None
        self.protocol = None

    def _watch_writable(self, on: bool) -> None:
        hosted = self._hosted
        if hosted is None:
            return
        if on:
            assert self.transport is not None
            hosted.watch_writable(self.transport._flush)
        else:
            hosted.unwatch_writable()

    def _error_received(self, exc: OSError) -> None:
        self._call("error_received", exc)

    def _call(self, callback: str, *args: Any) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        try:
            getattr(protocol, callback)(*args)
        except Exception:
            logger.exception("%s: %s.%s() raised", self.name, type(protocol).__name__, callback)

