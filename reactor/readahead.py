"""Read-ahead: the loop reads a whole request before a worker sees it, and writes the reply behind it.

A bounded pool survives slow clients only if no worker ever waits on one
(slowloris trickling a head, a slow body, a reader with a tiny window). For a
stream server whose handler exposes its *request boundary*, the loop:

1. reads the client's bytes into the connection's buffer
   (``reactor.buffered``) until a whole request is there: the head, then the
   body by ``Content-Length`` or chunked, under deadlines (the head within
   ``request_head_timeout`` of its first byte; the body at least
   ``request_body_min_rate * request_body_timeout`` bytes, or the rest of
   it, in every ``request_body_timeout`` seconds) and limits
   (head size, header count, body size; bodies above
   ``request_body_in_memory`` are spooled to a temporary file);
2. hands the connection to the dispatch strategy: the handler's ``rfile``
   already holds the request, so its reads never wait on the client;
3. flushes the handler's reply from a loop-owned buffer (write-behind); the
   handler's write blocks only above ``write_buffer_limit``, and a reader that
   stalls is disconnected (``send_timeout``, ``send_min_rate``);
4. with keep-alive, reads the next request ahead the same way while the
   connection is parked (``reactor.keepalive``), holding no thread.

A request that breaks a limit or a rule is refused in the protocol's own words
(HTTP ``400``, ``408``, ``413``, ``414``, ``431``, ``501``) and the connection is
closed; refusals are counted (``read_ahead_refused``) and logged rate-limited.
An HTTP/1.1 request with ``Expect: 100-continue`` gets its ``100 Continue`` from
the loop (the handler's own is not sent twice).

Which handlers expose a boundary
--------------------------------
* unmodified ``http.server.BaseHTTPRequestHandler`` subclasses (``handle()``
  untouched: ``SimpleHTTPRequestHandler``, ``xmlrpc.server`` handlers) and
  ``wsgiref.simple_server.WSGIRequestHandler``: HTTP/1.x;
* any handler with a ``request_boundary`` attribute: a callable returning a
  fresh object that answers ``feed(data) -> int`` (how many of ``data``'s
  bytes belong to the current request), ``complete``, ``head_complete``,
  ``received`` and ``reset()`` (see :class:`RequestBoundary`).

A handler class with ``read_ahead = False`` keeps its socket to itself, and so
does ``CGIHTTPRequestHandler`` (its child process reads the socket). A handler
that reads more than its request (it upgrades the connection, say) reads the
rest from the socket itself, under its timeout; one that calls ``fileno()``
gets writes that wait until they are sent.
"""

from __future__ import annotations

import functools
import logging
import sys
import typing
from collections.abc import Callable
from typing import Any

from ._ratelimit import RateLimitedLog
from ._timers import TimerHandle
from .admission import AdmissionOptions
from .buffered import BufferedConnection, BufferLimits, ConnectionSocket
from .http_boundary import HTTPLimits, HTTPRequestBoundary, RequestRefused
from .keepalive import KeptConnection
from .loop import EventLoop

__all__ = ["READ_AHEAD_COUNTERS", "ReadAhead", "RequestBoundary", "request_boundary_factory"]

logger = logging.getLogger(__name__)

#: Counters a read-ahead server adds to ``stats()``.
READ_AHEAD_COUNTERS = ("read_ahead_refused", "send_timeouts")

_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 501: "Not Implemented", 503: "Service Unavailable"}

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RequestBoundary(typing.Protocol):
    """Where one request ends in a connection's byte stream, fed as the bytes arrive."""

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """How many bytes at the start of ``data`` belong to the current request (all of them
        until it completes); raise ``reactor.http_boundary.RequestRefused`` to refuse it."""

    @property
    def complete(self) -> bool:
        """The whole request has been fed."""

    @property
    def head_complete(self) -> bool:
        """The request's head has been fed (its body deadline starts)."""

    @property
    def received(self) -> int:
        """Bytes of the current request fed so far."""

    def reset(self) -> None:
        """Start on the next request."""


def request_boundary_factory(handler: Any, options: AdmissionOptions) -> Callable[[], Any] | None:
    """What makes a fresh :class:`RequestBoundary` for connections of ``handler`` (a handler
    class, or a ``functools.partial`` of one), or None if it does not expose one (see the
    module docstring)."""
    if isinstance(handler, functools.partial):
        handler = handler.func
    if not isinstance(handler, type) or getattr(handler, "read_ahead", True) is False:
        return None
    hook = getattr(handler, "request_boundary", None)
    if callable(hook):
        return typing.cast(Callable[[], Any], hook)
    if _is_http_handler(handler):
        limits = HTTPLimits(max_head=options.max_request_head, max_headers=options.max_request_headers,
                            max_line=min(65536, options.max_request_head), max_body=options.max_request_body)
        return functools.partial(HTTPRequestBoundary, limits)
    return None


def _is_http_handler(handler: type) -> bool:
    http_server = sys.modules.get("http.server")
    if http_server is None:
        return False
    base = http_server.BaseHTTPRequestHandler
    if not issubclass(handler, base) or hasattr(handler, "cgi_directories"):
        return False  # not HTTP, or a CGI handler, whose child process reads the socket itself
    handle = getattr(handler, "handle", None)
    if handle is base.handle:
        return True
    wsgi = sys.modules.get("wsgiref.simple_server")
    return wsgi is not None and handle is wsgi.WSGIRequestHandler.handle


class _Reading:
    """A connection whose next request the loop is reading."""

    __slots__ = ("conn", "boundary", "kept", "timer", "timer_phase", "phase", "since", "stored", "idle_timeout",
                 "mark")

    def __init__(self, conn: BufferedConnection, boundary: Any, kept: KeptConnection | None) -> None:
        self.conn = conn
        self.boundary = boundary
        self.kept = kept
        self.timer: TimerHandle | None = None
        self.timer_phase = ""
        self.phase = "idle"  # idle (no byte yet), head, body
        self.since = 0.0  # when the phase began, on the loop's clock
        self.idle_timeout = 0.0
        self.mark = 0  # bytes of the request received when the body's current window began
        self.stored = 0  # bytes of this request already in the connection's buffer


class ReadAhead:
    """The read-ahead connections of one server, on its loop (see the module docstring).

    Args:
        loop: the loop the server is hosted on.
        name: the server's name, for logs.
        options: the limits and deadlines (``AdmissionOptions``' read-ahead fields).
        boundary: makes a fresh :class:`RequestBoundary` per request.
        counts: the server's counters (``READ_AHEAD_COUNTERS``, ``resumed``, ``keepalive_expired``).
        keepalive_timeout: seconds a kept connection may wait for its next request's first byte.
        io_timeout: the handler's timeout for reads beyond what was read ahead.
        submit: called in the loop with a new connection's socket and address once its
            first request is read (to hand it to the dispatch strategy).
        resume: called in the loop with a kept connection whose next request is read.
        close_request: ends a connection that never reached its handler (``shutdown_request``).
        close_kept: ends a kept connection unserved (its handler's ``finish()``, then ``shutdown_request``).

    Thread-safety: ``hold()`` may be called from any thread; everything else in the loop's.
    """

    def __init__(self, loop: EventLoop, name: str, options: AdmissionOptions, boundary: Callable[[], Any],
                 counts: dict[str, int], *, keepalive_timeout: float, io_timeout: float | None,
                 submit: Callable[[ConnectionSocket, Any], None], resume: Callable[[KeptConnection], None],
                 close_request: Callable[[ConnectionSocket], None],
                 close_kept: Callable[[KeptConnection], None]) -> None:
        self._loop = loop
        self._name = name
        self._options = options
        self._limits = BufferLimits(
            write_buffer_in_memory=options.write_buffer_in_memory, write_buffer_limit=options.write_buffer_limit,
            send_timeout=options.send_timeout, send_min_rate=options.send_min_rate,
            body_in_memory=options.request_body_in_memory)
        self._boundary = boundary
        self._counts = counts
        for key in READ_AHEAD_COUNTERS + ("resumed", "keepalive_expired"):
            counts.setdefault(key, 0)
        self._keepalive_timeout = keepalive_timeout
        self._io_timeout = io_timeout
        self._submit = submit
        self._resume = resume
        self._close_request = close_request
        self._close_kept = close_kept
        self._log = RateLimitedLog(logger)
        self._reading: dict[int, _Reading] = {}
        self._open: dict[int, BufferedConnection] = {}
        self._closing = False
        self._on_drained: Callable[[], None] | None = None

    @property
    def reading(self) -> int:
        """Connections whose request is arriving now."""
        return sum(1 for r in self._reading.values() if r.phase != "idle" or r.kept is None)

    @property
    def parked(self) -> int:
        """Kept connections waiting for their next request's first byte."""
        return sum(1 for r in self._reading.values() if r.phase == "idle" and r.kept is not None)

    @property
    def open(self) -> int:
        """Connections open now (read, served or flushing a reply)."""
        return len(self._open)

    # -- entry points ----------------------------------------------------------

    def take(self, sock: Any, client_address: Any) -> None:
        """Read the first request of a new connection (loop thread)."""
        if self._closing:
            sock.close()
            return
        try:
            conn = BufferedConnection(self._loop, sock, client_address, self._limits,
                                      self._on_send_timeout, timeout=self._io_timeout)
        except OSError:  # reset before we got to it
            sock.close()
            return
        self._open[id(conn)] = conn
        conn.when_closed(functools.partial(self._closed, conn))
        self._start(_Reading(conn, self._boundary(), None), idle_timeout=None)

    def hold(self, kept: KeptConnection) -> None:
        """Read the next request of a connection whose handler keeps it (any thread)."""
        kept.remember_timeout()
        if self._loop.in_loop():
            self._park(kept)
            return
        try:
            self._loop.call_soon_threadsafe(self._park, kept)
        except RuntimeError:  # the loop closed meanwhile
            self._close_kept(kept)

    def drain(self, on_drained: Callable[[], None]) -> None:
        """Close connections between requests at once; ``on_drained()`` once every connection
        (served, or flushing its reply) is closed."""
        self._closing = True
        for reading in list(self._reading.values()):
            self._end(reading)
        if not self._open:
            on_drained()
        else:
            self._on_drained = on_drained

    def abort(self) -> None:
        """Close every connection now, dropping what is buffered (a handler writing gets an error)."""
        self._closing = True
        for reading in list(self._reading.values()):
            self._end(reading)
        for conn in list(self._open.values()):
            conn.abort()

    detach = abort

    # -- reading a request ---------------------------------------------------------

    def _park(self, kept: KeptConnection) -> None:
        request = kept.request
        assert isinstance(request, ConnectionSocket)
        conn = request.connection
        if self._closing or conn.closed or conn.inbound.spooled():
            # A body the handler left unread in a spool would be read as the next request.
            self._close_kept(kept)
            return
        self._start(_Reading(conn, self._boundary(), kept), idle_timeout=self._keepalive_timeout)

    def _start(self, reading: _Reading, idle_timeout: float | None) -> None:
        conn = reading.conn
        conn.continue_sent = False
        self._reading[conn.fd] = reading
        leftover = conn.inbound.memory()  # bytes after the last request: the next one's start
        if leftover:
            reading.stored = len(leftover)
            self._begin_head(reading)
            if self._feed(reading, leftover, stored=True):
                return
            if reading.boundary.complete:
                self._loop.call_soon(self._ready, reading)  # a pipelining client takes turns
                return
        elif idle_timeout is not None:
            # A busy client's next request is often there already: one recv instead of a
            # trip through the selector (and a timer) per request.
            if self._take(reading, idle_timeout):
                return
        else:
            self._begin_head(reading)
        self._arm_timer(reading)
        conn.watch_reads(functools.partial(self._on_readable, reading))

    def _take(self, reading: _Reading, idle_timeout: float) -> bool:
        """Read what a kept connection's client sent already; True if it needs no watching."""
        try:
            data = reading.conn.receive()
        except OSError:
            data = None
        if data is None:
            self._end(reading)
            return True
        reading.since = self._loop.time()
        reading.idle_timeout = idle_timeout
        if not data:
            return False
        self._begin_head(reading)
        if self._feed(reading, data, stored=False):
            return True
        if reading.boundary.complete:
            self._loop.call_soon(self._ready, reading)  # takes turns, as pipelined requests do
            return True
        return False

    def _on_readable(self, reading: _Reading) -> None:
        try:
            data = reading.conn.receive()
        except OSError:
            self._end(reading)  # reset: nothing to answer
            return
        if data is None:
            self._end(reading)  # the client left
            return
        if not data:
            return
        if reading.phase == "idle":
            self._begin_head(reading)
        if self._feed(reading, data, stored=False):
            return
        if reading.boundary.complete:
            self._ready(reading)
        else:
            self._arm_timer(reading)

    def _feed(self, reading: _Reading, data: bytes, *, stored: bool) -> bool:
        """Feed ``data`` to the boundary; True if the connection was refused (and is ending)."""
        boundary = reading.boundary
        head_before = boundary.head_complete
        try:
            n = boundary.feed(data)
        except RequestRefused as exc:
            self._refuse(reading, exc.status, exc.reason)
            return True
        if boundary.complete:
            if not stored:
                # What one receive brought is in memory already: keeping it there (after
                # any spooled part of the body) costs nothing more.
                reading.conn.inbound.append(data)
                reading.stored += n
            return False
        if not stored and not self._store(reading, data, n):
            return True
        if boundary.head_complete and not head_before and not boundary.complete:
            reading.phase = "body"
            reading.since = self._loop.time()
            reading.mark = boundary.head_length if hasattr(boundary, "head_length") else boundary.received
            if getattr(boundary, "expects_continue", False):
                try:
                    reading.conn.write(_CONTINUE)
                except OSError:
                    self._end(reading)
                    return True
                reading.conn.continue_sent = True  # the handler's own is not sent again
        return False

    def _store(self, reading: _Reading, data: bytes, n: int) -> bool:
        """Keep ``data`` in the connection's buffer: the current request's head and the first
        ``request_body_in_memory`` body bytes in memory, the rest of it spooled; False if the
        spool could not be made (the connection was refused)."""
        inbound = reading.conn.inbound
        boundary = reading.boundary
        if n == len(data) and not boundary.head_complete:
            inbound.append(data)  # the usual case: (part of) a head
            reading.stored += n
            return True
        current = memoryview(data)[:n]
        room = len(current)
        if boundary.head_complete:
            head = getattr(boundary, "head_length", 0)
            room = max(0, head + self._limits.body_in_memory - reading.stored)
        try:
            inbound.append(current[:room])
            inbound.append(current[room:], spool=True)
        except OSError as exc:
            self._refuse(reading, 503, f"could not spool the request body: {exc}")
            return False
        inbound.append(memoryview(data)[n:])
        reading.stored += n
        return True

    def _begin_head(self, reading: _Reading) -> None:
        reading.phase = "head"
        reading.since = self._loop.time()

    def _arm_timer(self, reading: _Reading) -> None:
        """Make sure the deadline of the phase the request is in is on the timer heap (timers
        are armed only for requests that do not arrive whole in one read)."""
        phase = reading.phase
        if reading.timer is not None:
            if reading.timer_phase == phase:
                return
            reading.timer.cancel()
        options = self._options
        if phase == "idle":
            delay, callback = reading.idle_timeout, self._idle_expired
        elif phase == "head":
            delay, callback = options.request_head_timeout, self._head_expired
        else:
            delay, callback = options.request_body_timeout, self._body_check
        reading.timer_phase = phase
        reading.timer = self._loop.call_at(reading.since + delay, callback, reading)

    def _idle_expired(self, reading: _Reading) -> None:
        reading.timer = None
        self._counts["keepalive_expired"] += 1
        self._end(reading)

    def _head_expired(self, reading: _Reading) -> None:
        reading.timer = None
        self._refuse(reading, 408, f"no whole request head within {self._options.request_head_timeout}s")

    def _body_check(self, reading: _Reading) -> None:
        """The end of a body window: at least ``request_body_min_rate * request_body_timeout``
        bytes (or what was left) must have come in it."""
        reading.timer = None
        options = self._options
        boundary = reading.boundary
        needed = int(options.request_body_min_rate * options.request_body_timeout)
        length = getattr(boundary, "body_length", None)
        if length is not None:
            needed = min(needed, getattr(boundary, "head_length", 0) + length - reading.mark)
        if boundary.received - reading.mark < needed:
            self._refuse(reading, 408, f"request body slower than {options.request_body_min_rate} bytes/s")
            return
        reading.mark = boundary.received
        reading.timer = self._loop.call_later(options.request_body_timeout, self._body_check, reading)

    def _ready(self, reading: _Reading) -> None:
        conn = reading.conn
        self._leave(reading)
        if self._closing or conn.closed:
            self._finish(reading)
            return
        if reading.kept is not None:
            self._counts["resumed"] += 1
            self._resume(reading.kept)
        else:
            self._submit(conn.socket, conn.client_address)

    # -- ending ------------------------------------------------------------------

    def _refuse(self, reading: _Reading, status: int, reason: str) -> None:
        """Answer ``status`` in HTTP and close (for a boundary that is not HTTP: just close)."""
        conn = reading.conn
        self._counts["read_ahead_refused"] += 1
        self._log.warning(status, "%s: refused a request from %r: %d %s (%d refused so far)", self._name,
                          conn.client_address, status, reason, self._counts["read_ahead_refused"])
        if isinstance(reading.boundary, HTTPRequestBoundary) and (status != 408 or reading.stored):
            body = f"{reason}\n".encode("utf-8", "replace")
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain; "
                    f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            try:
                conn.write(head.encode("ascii") + body)
            except OSError:
                pass
        self._end(reading)

    def _end(self, reading: _Reading) -> None:
        """Close a connection whose request will not be served (refused, idle, gone, leaving)."""
        self._leave(reading)
        self._finish(reading)

    def _leave(self, reading: _Reading) -> None:
        conn = reading.conn
        if self._reading.get(conn.fd) is reading:
            del self._reading[conn.fd]
        conn.unwatch_reads()
        if reading.timer is not None:
            reading.timer.cancel()
            reading.timer = None

    def _finish(self, reading: _Reading) -> None:
        if reading.kept is not None:
            self._close_kept(reading.kept)
        else:
            self._close_request(reading.conn.socket)

    def _closed(self, conn: BufferedConnection) -> None:
        self._open.pop(id(conn), None)
        if not self._open and self._on_drained is not None:
            on_drained, self._on_drained = self._on_drained, None
            if self._loop.in_loop():
                on_drained()
            else:
                self._loop.call_soon_threadsafe(on_drained)

    def _on_send_timeout(self, conn: BufferedConnection) -> None:
        self._counts["send_timeouts"] += 1
        self._log.warning("send_timeout", "%s: closed the connection of %r: it took its reply slower than "
                          "%d bytes/s (%d so far)", self._name, conn.client_address,
                          self._options.send_min_rate, self._counts["send_timeouts"])
