"""A connection whose bytes the loop moves for a blocking handler: read-ahead and write-behind.

A socketserver handler reads its request from ``self.rfile`` and writes its
reply to ``self.wfile``, both on a blocking socket: a client that trickles its
request, or reads its reply a byte at a time, holds the handler's worker for
as long as it likes. A :class:`BufferedConnection` takes the waiting away from
the worker:

* **Read-ahead.** The loop reads the client's bytes into the connection's
  *inbound* buffer (``reactor.readahead`` decides when a whole request is
  there); the handler's ``rfile`` reads from that buffer and only reaches the
  socket itself, blocking under the handler's timeout, if it asks for more
  than the client sent (a handler that upgrades its connection, say).
* **Write-behind.** The handler's writes are sent at once if the socket takes
  them; the rest waits in the *outbound* buffer, which the loop flushes. The
  buffer keeps ``write_buffer_in_memory`` bytes in memory and spools the rest
  to an unnamed temporary file; only above ``write_buffer_limit`` does the
  handler's write block (backpressure). A reader that takes less than
  ``send_min_rate * send_timeout`` bytes of its reply (or less than was
  waiting) in any ``send_timeout`` seconds is disconnected.
* **Closing** waits for the outbound buffer: the handler's ``close()`` returns
  at once and the loop closes the socket once the reply is out.

The handler sees a :class:`ConnectionSocket` as ``self.request``: it answers
what a socket answers (``getpeername()``, ``settimeout()``, ``setsockopt()``,
and for TLS ``getpeercert()``, ``cipher()``, ``selected_alpn_protocol()``),
while its reads and writes go through the buffers. ``fileno()`` hands the
socket over: from then on every write waits until the socket took it, so a
handler that ``select()``s on its connection sees what it expects.

Threads: the loop's thread owns the socket while a request is being read and
while a reply is flushed; the handler's thread reads and writes through the
buffers. Every socket call happens under the connection's lock, so a TLS
socket (not safe for concurrent use) is never used by two threads at once.
"""

from __future__ import annotations

import collections
import errno
import io
import logging
import select
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._ratelimit import RateLimitedLog
from ._timers import TimerHandle
from .loop import EventLoop

__all__ = ["BufferLimits", "BufferedConnection", "ConnectionSocket", "SendTimeout"]

logger = logging.getLogger(__name__)
_log = RateLimitedLog(logger)

#: Most bytes one recv() asks for (a larger buffer makes glibc mmap every allocation).
_RECV_SIZE = 65536
#: recv() calls per wake-up at most, so one fast client cannot monopolise the loop.
_RECVS_PER_WAKEUP = 4
#: Most plaintext bytes per TLS send (one record).
_TLS_RECORD = 16384
#: Bytes read back from a spool file per send.
_SPOOL_CHUNK = 65536


@dataclass(frozen=True)
class BufferLimits:
    """How much a connection's buffers hold and how slowly its reader may take a reply.

    Attributes:
        write_buffer_in_memory: outbound bytes kept in memory; the rest is spooled to a temporary file.
        write_buffer_limit: outbound bytes (memory and spool) above which the handler's write blocks.
        send_timeout, send_min_rate: in every ``send_timeout`` seconds a reply waits in the
            buffer, the reader must take ``send_min_rate * send_timeout`` bytes of it (or all
            that was waiting); else it is disconnected.
        body_in_memory: bytes of a request body read ahead into memory; the rest is spooled.
    """

    write_buffer_in_memory: int = 65536
    write_buffer_limit: int = 16 << 20
    send_timeout: float = 10.0
    send_min_rate: int = 1024
    body_in_memory: int = 65536


class SendTimeout(TimeoutError):
    """The client took its reply slower than the connection's ``send_min_rate``."""


class _Spool:
    """Bytes in an unnamed temporary file, written at the end and read from the front."""

    __slots__ = ("file", "read_at", "size")

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()
        self.read_at = 0
        self.size = 0  # bytes not read yet

    def write(self, data: bytes | memoryview) -> None:
        self.file.seek(self.read_at + self.size)
        self.file.write(data)
        self.size += len(data)

    def read(self, n: int) -> bytes:
        self.file.seek(self.read_at)
        data = self.file.read(min(n, self.size))
        self.read_at += len(data)
        self.size -= len(data)
        return data

    def readline(self, limit: int) -> bytes:
        self.file.seek(self.read_at)
        data = self.file.readline(min(limit, self.size) if limit >= 0 else self.size)
        self.read_at += len(data)
        self.size -= len(data)
        return data

    def close(self) -> None:
        self.file.close()


class _Inbound:
    """Bytes the client sent that the handler has not read: memory parts and spools, in order.

    Memory parts are immutable ``bytes`` read from an offset, so a line costs one copy.
    """

    __slots__ = ("parts", "offset", "size", "spools")

    def __init__(self) -> None:
        self.parts: collections.deque[bytes | _Spool] = collections.deque()
        self.offset = 0  # into parts[0], when it is bytes
        self.size = 0
        self.spools = 0

    def append(self, data: bytes | memoryview, *, spool: bool = False) -> None:
        if not data:
            return
        if spool:
            last = self.parts[-1] if self.parts else None
            if not isinstance(last, _Spool):
                last = _Spool()
                self.parts.append(last)
                self.spools += 1
            last.write(data)
        else:
            self.parts.append(data if type(data) is bytes else bytes(data))
        self.size += len(data)

    def spooled(self) -> bool:
        return self.spools > 0

    def memory(self) -> bytes:
        """Every byte held, when all of them are in memory."""
        if not self.parts:
            return b""
        parts = [part for part in self.parts if isinstance(part, bytes)]
        if parts:
            parts[0] = parts[0][self.offset:]
        return b"".join(parts)

    def _advance(self, part: bytes | _Spool, taken: int) -> None:
        """``taken`` bytes of the first part were read."""
        self.size -= taken
        if isinstance(part, bytes):
            self.offset += taken
            if self.offset >= len(part):
                self.parts.popleft()
                self.offset = 0
        elif not part.size:
            self.parts.popleft()
            self.spools -= 1
            part.close()

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes from the front (``n < 0``: everything)."""
        if n < 0:
            n = self.size
        chunks = []
        while n > 0 and self.parts:
            part = self.parts[0]
            if isinstance(part, bytes):
                start = self.offset
                chunk = part[start:start + n] if start or n < len(part) else part
            else:
                chunk = part.read(n)
            self._advance(part, len(chunk))
            chunks.append(chunk)
            n -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def readline(self, limit: int) -> tuple[bytes, bool]:
        """Bytes up to and including the first newline (at most ``limit`` if ``limit >= 0``),
        and True if the line is whole (ended in newline or reached the limit)."""
        parts = self.parts
        if parts:
            part = parts[0]
            if type(part) is bytes:  # the usual case: the whole line in the first part
                start = self.offset
                end = part.find(b"\n", start) if limit < 0 else part.find(b"\n", start, start + limit)
                if end >= 0:
                    stop = end + 1
                    self.size -= stop - start
                    if stop >= len(part):
                        parts.popleft()
                        self.offset = 0
                    else:
                        self.offset = stop
                    return part[start:stop], True
        chunks = []
        taken = 0
        while self.parts and (limit < 0 or taken < limit):
            part = self.parts[0]
            room = -1 if limit < 0 else limit - taken
            if isinstance(part, bytes):
                start = self.offset
                stop = len(part) if room < 0 else min(len(part), start + room)
                end = part.find(b"\n", start, stop)
                chunk = part[start:end + 1 if end >= 0 else stop]
            else:
                chunk = part.readline(room)
            self._advance(part, len(chunk))
            chunks.append(chunk)
            taken += len(chunk)
            if chunk.endswith(b"\n"):
                break
        else:
            return b"".join(chunks), limit >= 0 and taken >= limit
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), True

    def peek(self) -> bytes:
        part = self.parts[0] if self.parts else None
        if isinstance(part, bytes):
            return part[self.offset:]
        if isinstance(part, _Spool):
            part.file.seek(part.read_at)
            return part.file.read(min(part.size, _SPOOL_CHUNK))
        return b""

    def clear(self) -> None:
        for part in self.parts:
            if isinstance(part, _Spool):
                part.close()
        self.parts.clear()
        self.offset = 0
        self.size = 0
        self.spools = 0


class _Outbound:
    """Reply bytes not sent yet: memory chunks, then (past the in-memory limit) a spool."""

    __slots__ = ("chunks", "memory", "spool", "in_memory", "spool_failed")

    def __init__(self, in_memory: int) -> None:
        self.chunks: collections.deque[bytes | memoryview] = collections.deque()
        self.memory = 0
        self.spool: _Spool | None = None
        self.in_memory = in_memory
        self.spool_failed = False  # then the in-memory size is the limit too

    @property
    def size(self) -> int:
        return self.memory + (self.spool.size if self.spool is not None else 0)

    def append(self, data: bytes | memoryview) -> None:
        if self.spool is None and not self.spool_failed and self.memory + len(data) > self.in_memory:
            try:
                self.spool = _Spool()
            except OSError as exc:  # no descriptor or no disk: the writer waits at the in-memory size
                self.spool_failed = True
                _log.warning(exc.errno, "could not spool a reply to a temporary file (%s): its writer waits "
                             "for the client above write_buffer_in_memory", exc)
        if self.spool is not None:
            self.spool.write(data)
        else:
            self.chunks.append(data)
            self.memory += len(data)

    def head(self) -> bytes | memoryview | None:
        if not self.chunks and self.spool is not None:
            chunk = self.spool.read(_SPOOL_CHUNK)
            if not self.spool.size:
                self.spool.close()
                self.spool = None
            if chunk:
                self.chunks.append(chunk)
                self.memory += len(chunk)
        return self.chunks[0] if self.chunks else None

    def consumed(self, n: int) -> None:
        head = self.chunks[0]
        self.memory -= n
        if n == len(head):
            self.chunks.popleft()
        else:
            self.chunks[0] = memoryview(head)[n:]

    def clear(self) -> None:
        self.chunks.clear()
        self.memory = 0
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def _is_continue(data: bytes | memoryview) -> bool:
    """True for an interim ``100 Continue`` response, as a handler writes it."""
    if len(data) > 64:
        return False
    head = bytes(data)
    return head.startswith(b"HTTP/1.") and head[8:13] == b" 100 " and head.endswith(b"\r\n\r\n")


def _want_io_errors() -> tuple[type[BaseException], ...]:
    ssl = sys.modules.get("ssl")
    if ssl is None:
        return (BlockingIOError, InterruptedError)
    return (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class BufferedConnection:
    """One stream connection read ahead and written behind by the loop (see the module docstring).

    Args:
        loop: the loop that flushes replies (and reads requests, through ``reactor.readahead``).
        sock: the connected socket (plain or ``ssl.SSLSocket``, handshake done); made non-blocking.
        client_address: the client's address, for logs.
        limits: the buffers' limits and the reader's deadline.
        on_send_timeout: called in the loop's thread when a reader was too slow (for counting).
        timeout: the handler's timeout for reads beyond what was read ahead (None: none).

    Thread-safety: ``write``, ``close``, ``abort`` and the reading methods are
    safe from any thread; ``receive`` and ``watch_reads`` belong to the loop's thread.
    """

    def __init__(self, loop: EventLoop, sock: socket.socket, client_address: Any, limits: BufferLimits,
                 on_send_timeout: Callable[[BufferedConnection], None] | None = None,
                 timeout: float | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.client_address = client_address
        self.limits = limits
        self.fd = sock.fileno()
        self.tls = hasattr(sock, "pending")
        self.inbound = _Inbound()
        #: Sent "100 Continue" for the request being read; the handler's own is then not repeated.
        self.continue_sent = False
        self._on_send_timeout = on_send_timeout
        self._want_io = _want_io_errors()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._outbound = _Outbound(limits.write_buffer_in_memory)
        self._flushing = False  # the loop owns flushing: writes append, in order
        self._writer_registered = False
        self._reader_registered = False
        self._send_timer: TimerHandle | None = None
        # The send deadline is checked once per window of send_timeout seconds.
        self._window_start = 0.0
        self._window_sent = 0  # bytes that left the buffer in this window
        self._window_due = 0  # bytes buffered when it began
        self._timeout = timeout  # the handler's settimeout()
        self._handed_over = False
        self._eof_pending = False
        self._close_pending = False
        self._closed = False
        self._eof_seen = False
        self._error: BaseException | None = None
        self._on_closed: list[Callable[[], None]] = []
        sock.setblocking(False)
        self.socket = ConnectionSocket(self)

    def __repr__(self) -> str:
        return f"<BufferedConnection fd={self.fd} {self.client_address!r}>"

    @property
    def closed(self) -> bool:
        """True once the socket is closed, or is closing after its last reply."""
        return self._closed or self._close_pending

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the socket is really closed (at once if it is)."""
        with self._lock:
            if not self._closed:
                self._on_closed.append(callback)
                return
        callback()

    # -- the loop's side: reading a request ------------------------------------

    def watch_reads(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` in the loop whenever the socket (or TLS) has bytes to ``receive()``."""
        self._reader_registered = True
        self.loop.add_reader(self.fd, callback)

    def unwatch_reads(self) -> None:
        """Stop ``watch_reads()``."""
        if self._reader_registered:
            self._reader_registered = False
            if not self.loop.closed:
                self.loop.remove_reader(self.fd)

    def receive(self) -> bytes | None:
        """What the client sent by now (b"" if nothing yet), or None at end of stream.

        Raises:
            OSError: the connection failed (reset).
        """
        chunks = []
        with self._lock:
            if self._closed:
                return None
            for _ in range(_RECVS_PER_WAKEUP):
                try:
                    data = self.sock.recv(_RECV_SIZE)
                except self._want_io:
                    break
                if not data:
                    self._eof_seen = True
                    break
                chunks.append(data)
                if len(data) < _RECV_SIZE and not (self.tls and self.sock.pending()):  # type: ignore[attr-defined]
                    break
        if not chunks:
            return None if self._eof_seen else b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- the handler's side: reading ---------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """The timeout of the handler's reads beyond what was read ahead (and of a handed-over write)."""
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        """What ``settimeout()`` set."""
        return self._timeout

    def read_more(self) -> bool:
        """Wait for more bytes from the client, under the handler's timeout, into ``inbound``;
        False at end of stream. The loop is not reading this connection meanwhile.

        Raises:
            TimeoutError: nothing came within the timeout.
            OSError: the connection failed.
        """
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                if self._closed:
                    raise self._error_to_raise()
                if self._eof_seen:
                    return False
                try:
                    data = self.sock.recv(_RECV_SIZE)
                except self._want_io as exc:
                    want_write = type(exc).__name__ == "SSLWantWriteError"
                else:
                    if not data:
                        self._eof_seen = True
                        return False
                    self.inbound.append(data)
                    return True
            self._poll(select.POLLOUT if want_write else select.POLLIN, deadline, "timed out")

    def _poll(self, events: int, deadline: float | None, what: str) -> None:
        if self.loop.in_loop() and events & select.POLLOUT:
            self._flush_now()  # nobody else flushes while the loop's own thread waits here
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(what)
        poller = select.poll()
        poller.register(self.fd, events)
        if not poller.poll(None if remaining is None else max(1, int(remaining * 1000 + 0.999))):
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(what)

    # -- writing (any thread) --------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` or buffer what the socket does not take now; block while the buffer
        is above ``write_buffer_limit``. Returns ``len(data)``.

        Raises:
            SendTimeout: the reader was disconnected for taking its reply too slowly.
            OSError: the connection failed or is closed (``BrokenPipeError``).
        """
        immutable = type(data) is bytes
        view: bytes | memoryview = data if immutable else memoryview(data).cast("B")  # type: ignore[assignment]
        size = len(view)
        if not size:
            return 0
        if self.continue_sent and _is_continue(view):
            self.continue_sent = False  # the loop sent it when the request's head arrived
            return size
        schedule = False
        with self._lock:
            if self._closed or self._close_pending or self._eof_pending:
                raise self._error_to_raise()
            if not self._flushing:
                sent = 0
                try:
                    if not self.tls:
                        sent = self.sock.send(view)  # all of it, or what the kernel's buffer takes
                    while sent < size and self.tls:
                        sent += self._send(memoryview(view)[sent:] if sent else view)
                except self._want_io:
                    pass
                except OSError as exc:
                    self._error = exc
                    raise
                if sent == size:
                    return size
                view = memoryview(view)[sent:]  # the rest, without copying it
                self._flushing = schedule = True
            # A buffer the handler may reuse must be copied before it waits; bytes need not be.
            self._outbound.append(view if immutable else bytes(view))
            over = self._outbound.size > self._limit()
        if schedule:
            if self.loop.in_loop():
                self._start_flushing()
            else:
                try:
                    self.loop.call_soon_threadsafe(self._start_flushing)
                except RuntimeError:  # the loop closed: nobody will flush it
                    self.abort(BrokenPipeError(errno.EPIPE, "the server stopped"))
                    raise self._error_to_raise() from None
        if over or self._handed_over:
            self._wait_for_room(0 if self._handed_over else self._limit() // 2)
        return size

    def _limit(self) -> int:
        """Buffered bytes above which a write waits."""
        limits = self.limits
        return limits.write_buffer_in_memory if self._outbound.spool_failed else limits.write_buffer_limit

    def _wait_for_room(self, below: int) -> None:
        if self.loop.in_loop():
            while True:
                with self._lock:
                    if self._closed:
                        raise self._error_to_raise()
                    if self._outbound.size <= below:
                        return
                    deadline = self._window_start + self.limits.send_timeout
                try:
                    self._poll(select.POLLOUT, deadline, "send timed out")
                except TimeoutError:
                    with self._lock:
                        late = self._window_late()
                    if late:
                        self._send_timed_out()
                        raise self._error_to_raise() from None
        with self._lock:
            while not self._closed and self._outbound.size > below:
                self._room.wait()
            if self._closed and self._outbound.size > below:
                raise self._error_to_raise()

    def _send(self, data: bytes | memoryview) -> int:
        """One non-blocking send, under the lock."""
        if self.tls:
            # A TLS write that would block must be retried with at least the bytes it
            # was given: sending one record's worth at a time keeps every retry so.
            return self.sock.send(data[:_TLS_RECORD])
        return self.sock.send(data)

    def _new_window(self) -> None:
        self._window_start = time.monotonic()
        self._window_sent = 0
        self._window_due = self._outbound.size

    def _window_late(self) -> bool:
        """At the end of a window: True if the reader took less than ``send_min_rate`` asks
        (or than what was buffered), else start the next window. Under the lock."""
        limits = self.limits
        needed = min(int(limits.send_min_rate * limits.send_timeout), self._window_due)
        if self._window_sent < needed:
            return True
        self._new_window()
        return False

    # -- flushing (the loop's thread) --------------------------------------------

    def _start_flushing(self) -> None:
        with self._lock:
            if self._closed or not self._flushing or self._writer_registered:
                return
            self._writer_registered = True
            self._new_window()
        self.loop.add_writer(self.fd, self._on_writable)
        self._send_timer = self.loop.call_later(self.limits.send_timeout, self._check_send_deadline)

    def _on_writable(self) -> None:
        self._flush_now()

    def _flush_now(self) -> None:
        finish = False
        with self._lock:
            if self._closed:
                return
            outbound = self._outbound
            try:
                while True:
                    head = outbound.head()
                    if head is None:
                        break
                    sent = self._send(head)
                    outbound.consumed(sent)
                    self._window_sent += sent
                    if sent < len(head) and not self.tls:
                        break
            except self._want_io:
                pass
            except OSError as exc:
                self._error = exc
                finish = True
            if outbound.size <= self._limit() // 2 or finish:
                self._room.notify_all()
            if outbound.head() is None or finish:
                self._flushing = False
                finish = finish or self._close_pending or self._eof_pending
                self._stop_flushing_locked()
        if finish:
            self._finish()

    def _stop_flushing_locked(self) -> None:
        if self._writer_registered:
            self._writer_registered = False
            if not self.loop.closed:
                self.loop.remove_writer(self.fd)
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _check_send_deadline(self) -> None:
        self._send_timer = None
        with self._lock:
            if self._closed or not self._flushing:
                return
            if not self._window_late():
                self._send_timer = self.loop.call_later(self.limits.send_timeout, self._check_send_deadline)
                return
        self._send_timed_out()

    def _send_timed_out(self) -> None:
        if self._on_send_timeout is not None:
            self._on_send_timeout(self)
        self.abort(SendTimeout(errno.ETIMEDOUT, "the client took its reply too slowly"))

    # -- ending --------------------------------------------------------------------

    def shutdown_write(self) -> None:
        """End the client's stream once the buffered reply is out (``shutdown(SHUT_WR)``)."""
        with self._lock:
            if self._closed or self._close_pending:
                return
            if self._flushing:
                self._eof_pending = True
                return
        self._shutdown_socket(socket.SHUT_WR)

    def close(self) -> None:
        """Close the socket once the buffered reply is out; returns at once."""
        with self._lock:
            if self._closed or self._close_pending:
                return
            if self._flushing:
                self._close_pending = True
                return
            self._closed = True
        self._release()

    def abort(self, error: BaseException | None = None) -> None:
        """Close now, dropping what is buffered; a handler writing or reading gets ``error``."""
        with self._lock:
            if self._closed:
                return
            self._error = error or ConnectionAbortedError(errno.ECONNABORTED, "the server closed the connection")
            self._closed = True
            self._outbound.clear()
            self._room.notify_all()
        self._release()

    def _finish(self) -> None:
        """After the last flush: shut down or close as asked, or give up after an error."""
        with self._lock:
            if self._closed:
                return
            failed = self._error is not None
            if not (failed or self._close_pending):
                eof, self._eof_pending = self._eof_pending, False
            else:
                eof = False
                self._closed = True
                self._room.notify_all()
        if eof:
            self._shutdown_socket(socket.SHUT_WR)
        elif self._closed:
            self._release()

    def _shutdown_socket(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass

    def _release(self) -> None:
        if ((self._writer_registered or self._reader_registered) and self.loop.running
                and not self.loop.in_loop()):
            try:  # only the running loop's thread may unregister the descriptor; it closes it after
                self.loop.call_soon_threadsafe(self._release)
                return
            except RuntimeError:
                pass  # the loop closed: its selector is gone too
        with self._lock:
            self._stop_flushing_locked()
        self.unwatch_reads()
        self.inbound.clear()
        self._outbound.clear()
        try:
            self.sock.close()
        except OSError:
            pass
        callbacks, self._on_closed = self._on_closed, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("%r: a close callback failed", self)

    def _error_to_raise(self) -> BaseException:
        error = self._error
        if isinstance(error, SendTimeout):
            return SendTimeout(*error.args)
        if isinstance(error, OSError):
            return type(error)(*error.args)
        return BrokenPipeError(errno.EPIPE, "the connection is closed")

    def hand_over(self) -> None:
        """The handler uses the socket itself: from now on each write waits until it is sent."""
        self._handed_over = True
        if not self.loop.in_loop():
            self._wait_for_room(0)


class _RequestReader(io.BufferedIOBase):
    """The handler's ``rfile``: the request read ahead, then (if asked for more) the socket."""

    def __init__(self, conn: BufferedConnection) -> None:
        super().__init__()
        self._conn = conn

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Make sure something is buffered; False at end of stream."""
        return bool(self._conn.inbound.size) or self._conn.read_more()

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        inbound = self._conn.inbound
        if size is None or size < 0:
            chunks = []
            while self._fill():
                chunks.append(inbound.read(-1))
            return b"".join(chunks)
        chunks = []
        while size > 0 and self._fill():
            chunk = inbound.read(size)
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def read1(self, size: int = -1) -> bytes:
        self._check()
        if not self._fill():
            return b""
        return self._conn.inbound.read(size)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def readinto1(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read1(len(view))
        view[:len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        limit = -1 if size is None else size
        inbound = self._conn.inbound
        if inbound.size:  # the usual case: the line was read ahead
            line, whole = inbound.readline(limit)
            if whole:
                return line
            chunks = [line]
            if limit >= 0:
                limit -= len(line)
        else:
            chunks = []
        while self._fill():
            line, whole = inbound.readline(limit)
            chunks.append(line)
            if whole:
                break
            if limit >= 0:
                limit -= len(line)
        return b"".join(chunks)

    def peek(self, size: int = 0) -> bytes:
        self._check()
        if not self._conn.inbound.size:
            return b""  # peek never waits for the client
        return self._conn.inbound.peek()

    def fileno(self) -> int:
        return self._conn.socket.fileno()

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def detach(self) -> Any:
        raise io.UnsupportedOperation("the request reader has no raw stream")


class _ReplyWriter(io.RawIOBase):
    """The raw stream under the handler's ``wfile`` (``makefile('wb')``): writes go behind."""

    def __init__(self, conn: BufferedConnection) -> None:
        super().__init__()
        self._conn = conn

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._conn.socket.send(data)

    def fileno(self) -> int:
        return self._conn.socket.fileno()


class ConnectionSocket:
    """What a read-ahead handler gets as ``self.request``: a socket whose I/O goes through the
    connection's buffers (see the module docstring).

    Reads return the request the loop read ahead first; writes are sent or
    buffered and return at once below ``write_buffer_limit``; ``close()`` and
    ``shutdown(SHUT_WR)`` take effect once the reply is out. ``settimeout()``
    applies to reads beyond what was read ahead. Anything else a socket (or an
    ``ssl.SSLSocket``) answers is answered by the real socket, except
    ``fileno()``, which hands the socket over (each write then waits until it is
    sent). Unlike a socket it is not an instance of ``socket.socket``.
    """

    def __init__(self, conn: BufferedConnection) -> None:
        self._conn = conn

    @property
    def connection(self) -> BufferedConnection:
        """The buffered connection behind it."""
        return self._conn

    @property
    def raw_socket(self) -> socket.socket:
        """The real socket (do not read or write it while the connection is buffered)."""
        return self._conn.sock

    def __repr__(self) -> str:
        return f"<ConnectionSocket {self._conn.sock!r}>"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn.sock, name)

    def __enter__(self) -> ConnectionSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- timeouts: the handler's view; the socket itself stays non-blocking -------

    def settimeout(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._conn.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self._conn.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self._conn.settimeout(None if flag else 0.0)

    def getblocking(self) -> bool:
        return self._conn.gettimeout() != 0.0

    # -- I/O -----------------------------------------------------------------------

    def makefile(self, mode: str = "r", buffering: int | None = None, *, encoding: str | None = None,
                 errors: str | None = None, newline: str | None = None) -> Any:
        """A file over the buffered connection, as ``socket.makefile`` makes one."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        reading, writing = "r" in mode, "w" in mode
        if reading and writing:
            raise ValueError("a read-ahead connection's files read or write, not both")
        stream: Any
        if reading:
            stream = _RequestReader(self._conn)
        else:
            raw = _ReplyWriter(self._conn)
            if buffering is None or buffering < 0:
                buffering = io.DEFAULT_BUFFER_SIZE
            stream = raw if buffering == 0 else io.BufferedWriter(raw, buffering)
        if "b" in mode:
            return stream
        text = io.TextIOWrapper(stream, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        inbound = self._conn.inbound
        if not inbound.size and not self._conn.read_more():
            return b""
        if flags & socket.MSG_PEEK:
            return inbound.peek()[:bufsize]
        if flags:
            raise ValueError("a read-ahead connection's recv() takes no flags but MSG_PEEK")
        return inbound.read(bufsize)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), flags)
        view[:len(data)] = data
        return len(data)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # ssl.SSLSocket's spelling
        if buffer is not None:
            return self.recv_into(buffer, len)
        return self.recv(len)

    def send(self, data: Any, flags: int = 0) -> int:
        if flags:
            raise ValueError("a read-ahead connection's send() takes no flags")
        return self._conn.write(data)

    def sendall(self, data: Any, flags: int = 0) -> None:
        if flags:
            raise ValueError("a read-ahead connection's sendall() takes no flags")
        self._conn.write(data)

    def write(self, data: Any) -> int:  # ssl.SSLSocket's spelling
        return self._conn.write(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        if offset:
            file.seek(offset)
        total = 0
        while count is None or total < count:
            chunk = file.read(_SPOOL_CHUNK if count is None else min(_SPOOL_CHUNK, count - total))
            if not chunk:
                break
            self._conn.write(chunk)
            total += len(chunk)
        return total

    def fileno(self) -> int:
        """The socket's descriptor; the handler now uses the socket itself (writes wait until sent)."""
        self._conn.hand_over()
        return self._conn.fd

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_RD:
            self._conn.sock.shutdown(how)
            return
        self._conn.shutdown_write()
        if how == socket.SHUT_RDWR:
            self._conn.close()

    def close(self) -> None:
        self._conn.close()

    def detach(self) -> int:
        raise OSError(errno.EOPNOTSUPP, "a read-ahead connection's socket cannot be detached")

    @property
    def _closed(self) -> bool:  # socket.socket's, which some code reads
        return self._conn.closed

