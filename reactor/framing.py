"""Framed message handlers: a handler says how bytes split into messages, the loop does the rest.

A socketserver handler owns its connection and blocks on it. Most protocols
are a stream of *messages* (lines, length-prefixed records), and most of a
connection's life is spent waiting for the next one. A
:class:`MessageRequestHandler` declares only how the stream splits
(``frame(buffer)``) and what to do with one message (``handle_message``);
then the same class serves two ways:

* **Message mode**, on a reactor: the loop owns the connection (a
  non-blocking socket, a read buffer, a write buffer with backpressure: a
  :class:`~reactor.protocol.Transport`), frames the bytes as they arrive and
  runs each complete message as a :class:`~reactor.accept.Job` on the
  server's dispatch strategy: in the loop (``Inline``), on a worker thread
  (``ThreadPool``), or in a pre-forked worker's own loop (``Prefork``).
  Between messages the connection costs a descriptor and a few hundred
  bytes, no thread.
* **Blocking**, under any socketserver (the stdlib's ``TCPServer``, or a
  standalone compat server without ``dispatch``): ``handle()`` reads,
  frames, calls ``handle_message`` and writes the replies, until EOF.

Theory of operation (message mode)
----------------------------------
1. A stream server runs in message mode when its handler class is a
   :class:`MessageRequestHandler` and everything parking needs holds
   (``reactor.keepalive``): ``keepalive_timeout`` not 0, and
   ``process_request``/``finish_request`` are ``BaseServer``'s. Admission
   (access, limits, PROXY, TLS, ``wait_for_data``) runs first, unchanged;
   message mode starts where a handler would have run.
2. Per connection, the handler is made once: ``verify_request`` then the
   handler's ``setup()`` run where the strategy runs requests (as for any
   handler, ``__init__`` and ``handle()`` are not called in message mode),
   and ``finish()`` runs once, in the loop's thread, when the connection ends.
3. At most one message of a connection is in flight. The next is framed and
   submitted when the previous one finished, so replies keep request order
   while a pool runs different connections' messages at once. While a
   message is in flight, the connection is read only until ``max_buffer``
   bytes wait (under TLS not at all: an EOF there ends the connection, and
   the reply would be lost); while the write buffer is above its high-water
   mark, not at all: a client cannot make the server buffer more than
   ``max_buffer`` bytes of input (and one read) and one high-water mark of
   output.
4. ``frame()`` runs in the loop's thread, on the bytes received and not yet
   consumed; it must be cheap (search from where the last call stopped).
   ``handle_message()`` runs on the strategy; its replies (the value it
   returns, and every ``write()``) reach the transport when it returns.
5. A :class:`FrameError` (malformed input, a message over its limit, input
   beyond ``max_buffer`` without a message) sends ``frame_error(exc)``'s bytes,
   then closes the connection once they are flushed, and counts
   ``frame_errors``. The close lingers (both modes): after the answer the
   server sends EOF and drops what the client still sends until it closes
   (``LINGER_TIMEOUT``, ``max_buffer`` bytes at most), so a client in the
   middle of sending a huge message gets the answer instead of a reset. A ``frame()`` or ``handle_message()`` that raises
   anything else goes to the server's ``handle_error()``, and the
   connection closes after flushing earlier replies; other connections go on.
6. A connection with no message in flight and no bytes received for
   ``keepalive_timeout`` seconds is closed (counted in ``keepalive_expired``).
   EOF from the client closes the connection once its replies are flushed
   (an incomplete last message is dropped).
7. Leaving: the server drains (no new message starts; a message in flight
   finishes, its replies flush, then the connection closes) under the
   dispatch's deadline (``reactor.accept.DEFAULT_CONNECTION_DRAIN_TIMEOUT``
   for ``Inline``); abort closes every connection at once (the socket is
   shut down at once; a handler still running a message is ``finish()``-ed
   when it returns).

Counters (``Reactor.server_stats``): ``messages`` (dispatched, also counted
in ``dispatched``), ``frame_errors``, ``keepalive_expired``, and the gauge
``message_connections`` (open now).
"""

from __future__ import annotations

import logging
import socket
import socketserver as _stdlib_socketserver
from collections.abc import Callable
from typing import Any

from ._timers import TimerHandle
from .accept import Dispatch, HostedServer
from .protocol import Protocol, Transport

__all__ = [
    "FrameError", "LengthPrefixedRequestHandler", "LineRequestHandler",
    "MessageConnections", "MessageRequestHandler", "next_message",
]

logger = logging.getLogger(__name__)

#: Seconds a connection closed for a FrameError waits for the client to close its side.
LINGER_TIMEOUT = 2.0
#: Most bytes asked of one ``recv`` in blocking mode.
_BLOCKING_READ = 65536


class FrameError(ValueError):
    """The input cannot be framed: malformed, or a message (or unframed input) over its limit."""


class MessageRequestHandler(_stdlib_socketserver.BaseRequestHandler):
    """Base of framed message handlers: override ``frame()`` and ``handle_message()``.

    Methods that may be overridden:

    * ``frame(buffer)``: given the bytes received and not yet consumed,
      return ``(message, consumed)`` for the first complete message, or None
      when more bytes are needed; raise :class:`FrameError` for malformed
      input. When it returns None, the next call gets the same bytes and
      more, so it may remember how far it searched (on ``self``); after a
      message the next call's buffer starts at the first byte not consumed.
      ``buffer`` is a ``bytearray`` that changes after the call: return a
      copy (``bytes(...)``), never a view of it. A message is any object
      but None (skip bytes with an empty message).
    * ``handle_message(message)``: answer one message; return the reply
      (bytes, passed through ``frame_reply``) or None, and/or call ``write()``.
    * ``frame_reply(data)``: how a reply is framed on the wire (default: as is).
    * ``frame_error(exc)``: the bytes to send before closing the connection
      on a :class:`FrameError` (the protocol's own "line too long"; default
      None: close without a word).
    * ``setup()`` and ``finish()``: once per connection, as for any handler.

    Methods for the handler: ``write(data)`` sends one reply (through
    ``frame_reply``), in order with the returned ones; call it from the
    handler's own ``setup()`` or ``handle_message()`` (in message mode what
    it writes is sent when that call returns).

    Class variables: ``max_buffer``, the most bytes kept while no complete
    message is there (beyond it: a :class:`FrameError`).

    What differs from a socketserver handler: in message mode (see the
    module docstring) the reactor builds the handler without ``__init__``
    and never calls ``handle()``; ``setup()``, one ``handle_message()`` per
    message, then ``finish()`` run, not necessarily on the same thread (never
    two at once). ``self.request`` is then the loop's socket: read and write
    only through the framing, never on it directly.
    """

    #: Most bytes buffered without a complete message.
    max_buffer: int = 1024 * 1024

    #: Where write() sends (set per connection); None: the socket, blocking.
    _send: Callable[[bytes], Any] | None = None

    def frame(self, buffer: bytearray) -> tuple[Any, int] | None:
        """The first complete message in ``buffer`` and the bytes it used, or None for more bytes.

        Raises:
            FrameError: the input is malformed or over a limit.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement frame()")

    def handle_message(self, message: Any) -> bytes | None:
        """Answer one message: return the reply, or None (replies may also go through ``write()``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement handle_message()")

    def frame_reply(self, data: bytes) -> bytes:
        """The bytes that carry the reply ``data`` on the wire (default: ``data`` itself)."""
        return data

    def frame_error(self, exc: FrameError) -> bytes | None:
        """What to send before closing on a :class:`FrameError` (default: nothing)."""
        return None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send one reply, framed by ``frame_reply``, after the replies before it."""
        framed = self.frame_reply(data if type(data) is bytes else bytes(data))
        send = self._send
        if send is None:
            self.request.sendall(framed)
        else:
            send(framed)

    def handle(self) -> None:
        """Blocking mode: read, frame and answer messages until EOF (or a :class:`FrameError`)."""
        sock: socket.socket = self.request
        buffer = bytearray()
        while True:
            try:
                while (framed := next_message(self, buffer)) is not None:
                    reply = self.handle_message(framed)
                    if reply is not None:
                        self.write(reply)
            except FrameError as exc:
                answer = self.frame_error(exc)
                if answer:
                    sock.sendall(answer)
                _linger(sock, self.max_buffer)
                return
            try:
                data = sock.recv(_BLOCKING_READ)
            except ConnectionResetError:
                return
            if not data:
                return
            buffer += data

    @classmethod
    def message_connections(cls, hosted: HostedServer, idle_timeout: float) -> MessageConnections:
        """The message mode of a server whose handler class this is (called by the reactor)."""
        return MessageConnections(hosted, idle_timeout)


def _linger(sock: socket.socket, most: int) -> None:
    """Blocking mode's lingering close (see ``_MessageConnection.linger``)."""
    try:
        if hasattr(sock, "pending"):  # TLS: no half-close
            return
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_TIMEOUT)
        while most > 0 and (data := sock.recv(_BLOCKING_READ)):
            most -= len(data)
    except OSError:
        pass  # gone, or silent too long: the close follows either way


def next_message(handler: MessageRequestHandler, buffer: bytearray) -> Any:
    """Frame the first message of ``buffer`` and remove its bytes; None when more are needed.

    Raises:
        FrameError: from ``frame()``, or ``buffer`` holds more than ``max_buffer``
            bytes without a message.
    """
    framed = handler.frame(buffer)
    if framed is None:
        _check_unframed(handler, buffer)
        return None
    message, consumed = framed
    if not 0 < consumed <= len(buffer) or message is None:
        _bad_frame(handler, framed, buffer)
    del buffer[:consumed]
    return message


def _check_unframed(handler: MessageRequestHandler, buffer: bytearray) -> None:
    """Raise FrameError when ``buffer`` holds more than ``max_buffer`` bytes without a message."""
    if len(buffer) > handler.max_buffer:
        raise FrameError(f"no complete message in {len(buffer)} bytes (max_buffer={handler.max_buffer})")


def _bad_frame(handler: MessageRequestHandler, framed: tuple[Any, int], buffer: bytearray) -> None:
    """Raise ValueError for what ``frame()`` must not return."""
    message, consumed = framed
    raise ValueError(f"{type(handler).__name__}.frame() returned ({message!r}, {consumed!r}) for "
                     f"{len(buffer)} bytes: a message is not None, and consumes some of them")


class LineRequestHandler(MessageRequestHandler):
    """Messages are lines ending in ``\\n``; each reply is sent as a line.

    A message is the line without its ``\\n``, and without a ``\\r`` before
    it when ``strip_cr`` is true (the default, so ``\\r\\n`` clients such as
    telnet work); ``frame_reply`` appends ``newline`` (``b"\\n"``) to each
    reply, so ``handle_message`` returns a line without its terminator.
    A line longer than ``max_line`` bytes (terminator included) is a
    :class:`FrameError`, found as soon as that many bytes hold no newline.
    An unterminated last line before EOF is dropped.

    The search for the newline starts where the previous one stopped: bytes
    arriving one at a time cost linear time, not quadratic.
    """

    #: Longest line, its terminator included.
    max_line: int = 64 * 1024
    #: Drop a ``\\r`` before the ``\\n`` from each message.
    strip_cr: bool = True
    #: What ``frame_reply`` appends to each reply.
    newline: bytes = b"\n"

    _searched: int = 0

    def frame(self, buffer: bytearray) -> tuple[bytes, int] | None:
        """The first line of ``buffer``, or None (see the class docstring)."""
        # Ordered for the common case, a whole line at the start of a search: each step
        # here is paid once per message.
        searched = self._searched
        end = buffer.find(b"\n", searched) if searched else buffer.find(b"\n")
        limit = self.max_line
        if end < 0 or end >= limit:  # a newline at or past the limit ends a line too long
            self._searched = min(len(buffer), limit)
            if len(buffer) >= limit:
                raise FrameError(f"line longer than max_line={limit} bytes")
            return None
        if searched:
            self._searched = 0
        stop = end - 1 if end and buffer[end - 1] == 13 and self.strip_cr else end
        return bytes(buffer[:stop]), end + 1

    def frame_reply(self, data: bytes) -> bytes:
        """``data`` and ``newline``."""
        return data + self.newline


class LengthPrefixedRequestHandler(MessageRequestHandler):
    """Messages carry their length first: a 2- or 4-byte big-endian prefix, or a netstring.

    ``prefix`` is 2, 4 (the default) or ``"netstring"`` (``b"5:hello,"``:
    decimal length, colon, payload, comma). A message is the payload; a
    declared length above ``max_length`` is a :class:`FrameError` as soon as
    the header arrives (nothing of it is buffered), as are a malformed
    netstring header and a missing trailing comma. Replies are framed the
    same way by ``frame_reply`` (a reply too long for a 2-byte prefix raises
    ``ValueError``, as a handler error).
    """

    #: 2, 4 or "netstring".
    prefix: int | str = 4
    #: Longest payload accepted.
    max_length: int = 1024 * 1024

    def frame(self, buffer: bytearray) -> tuple[bytes, int] | None:
        """The first message of ``buffer``, or None (see the class docstring)."""
        prefix = self.prefix
        if prefix == "netstring":
            return self._frame_netstring(buffer)
        if prefix not in (2, 4):
            raise ValueError(f"prefix must be 2, 4 or 'netstring', not {prefix!r}")
        assert isinstance(prefix, int)
        if len(buffer) < prefix:
            return None
        length = int.from_bytes(buffer[:prefix], "big")
        if length > self.max_length:
            raise FrameError(f"message of {length} bytes is longer than max_length={self.max_length}")
        end = prefix + length
        if len(buffer) < end:
            return None
        return bytes(buffer[prefix:end]), end

    def _frame_netstring(self, buffer: bytearray) -> tuple[bytes, int] | None:
        digits = len(str(self.max_length))
        colon = buffer.find(b":", 0, digits + 1)
        if colon < 0:
            head = bytes(buffer[:digits + 1])
            if len(buffer) > digits or not head.isdigit() and head:
                raise FrameError(f"malformed netstring header {head[:20]!r}")
            return None
        head = bytes(buffer[:colon])
        if not head.isdigit() or (len(head) > 1 and head[:1] == b"0"):
            raise FrameError(f"malformed netstring length {head[:20]!r}")
        length = int(head)
        if length > self.max_length:
            raise FrameError(f"message of {length} bytes is longer than max_length={self.max_length}")
        end = colon + 1 + length
        if len(buffer) <= end:
            return None
        if buffer[end] != 44:  # ","
            raise FrameError("netstring without its trailing comma")
        return bytes(buffer[colon + 1:end]), end + 1

    def frame_reply(self, data: bytes) -> bytes:
        """``data`` with the length in front, as ``prefix`` says."""
        prefix = self.prefix
        if prefix == "netstring":
            return b"%d:%s," % (len(data), data)
        assert isinstance(prefix, int)
        try:
            return len(data).to_bytes(prefix, "big") + data
        except OverflowError:
            raise ValueError(f"a reply of {len(data)} bytes does not fit a {prefix}-byte prefix") from None


# ------------------------------------------------------------------ message mode


class MessageConnections:
    """The message-mode connections of one hosted server (see the module docstring).

    Made by the reactor when it hosts a server whose handler is a
    :class:`MessageRequestHandler`; ``HostedServer`` drives it.

    Thread-safety: ``take()`` may be called from any thread; everything else
    runs in the loop's thread.
    """

    def __init__(self, hosted: HostedServer, idle_timeout: float) -> None:
        self.hosted = hosted
        self.name = hosted.name
        self.idle_timeout = idle_timeout
        self.loop = hosted.reactor
        self._connections: set[_MessageConnection] = set()
        self._closing = False
        self._on_drained: Callable[[], None] | None = None
        #: Messages dispatched so far (loop thread; a plain attribute: one increment per message).
        self.messages = 0

    @property
    def open(self) -> int:
        """Connections served in message mode now."""
        return len(self._connections)

    def take(self, request: socket.socket, client_address: Any) -> None:
        """Serve a verified connection in message mode: ``setup()`` here, the rest in the loop.

        Raises:
            Exception: what the handler's ``setup()`` raised (nothing was taken).
        """
        server = self.hosted.server
        cls = server.RequestHandlerClass
        handler = cls.__new__(cls)
        outbox: list[bytes] = []
        handler._send = outbox.append
        handler.request = request
        handler.client_address = client_address
        handler.server = server
        handler.setup()
        conn = _MessageConnection(self, handler, request, client_address, outbox)
        if self.loop.in_loop():
            self._start(conn)
            return
        try:
            self.loop.call_soon_threadsafe(self._start, conn)
        except RuntimeError:  # the loop closed meanwhile
            conn.release()

    def drain(self, on_drained: Callable[[], None]) -> None:
        """Start no new message; close each connection once its message in flight is answered and
        its replies flushed; ``on_drained()`` once none is left (at once if none is open)."""
        self._closing = True
        if not self._connections:
            on_drained()
            return
        self._on_drained = on_drained
        for conn in list(self._connections):
            conn.drain()

    def abort(self) -> None:
        """Close every connection at once, discarding what is buffered."""
        self._closing = True
        self._on_drained = None
        for conn in list(self._connections):
            conn.draining = True  # a handler running now (it aborted us) sees it on return
            conn.transport.abort()

    def detach(self) -> None:
        """Release what an abort left for the loop to finish, even if the loop never runs again."""
        self.abort()
        running = self.loop.running and not self.loop.closed
        for conn in list(self._connections):
            self._connections.discard(conn)
            conn.ended = True
            if running:
                # After the transport's own last callback (queued by abort), which unwatches
                # its descriptor: closing the socket first would let that unwatch a reused one.
                self.loop.call_soon(conn.release)
            else:
                conn.release()

    # -- the TransportOwner duck type ----------------------------------------------

    def warn(self, cause: object, message: str, *args: Any) -> None:
        """Log a warning a client can cause, rate-limited."""
        self.hosted.warn(cause, message, *args)

    def transport_ended(self, transport: Transport) -> None:
        """A connection closed: finish its handler (once its message is done), close its socket."""
        conn = transport.get_protocol()
        assert isinstance(conn, _MessageConnection)
        if conn in self._connections:
            self._connections.discard(conn)
            conn.release()
        if self._on_drained is not None and not self._connections:
            on_drained, self._on_drained = self._on_drained, None
            on_drained()

    # -- in the loop's thread --------------------------------------------------------

    def _start(self, conn: _MessageConnection) -> None:
        if self._closing or self.loop.closed:
            conn.release()
            return
        try:
            conn.sock.setblocking(False)
        except OSError:
            conn.release()
            return
        self._connections.add(conn)
        conn.transport.start()


class _MessageConnection(Protocol):
    """One message-mode connection: the protocol its transport drives (loop thread), and the
    state its jobs hand back."""

    def __init__(self, owner: MessageConnections, handler: MessageRequestHandler, sock: socket.socket,
                 client_address: Any, outbox: list[bytes]) -> None:
        self.owner = owner
        self.handler = handler
        self.sock = sock
        self.client_address = client_address
        self.outbox = outbox
        self.loop = owner.loop
        self.buffer = bytearray()
        self.transport = Transport(owner.loop, sock, self, owner, client_address)
        self.in_flight = False
        self.write_paused = False
        self.draining = False
        self.ended = False
        self.released = False
        self.sock_closed = False
        self.advancing = False
        self.lingering = False
        self.discarded = 0
        self.last_activity = self.loop.time()
        self.timer: TimerHandle | None = None
        #: The loop's clock itself: loop.time() without a call around it (twice per message).
        self.clock = owner.loop.clock
        #: The strategy runs a job at once, in the loop's thread (Inline): run messages directly,
        #: without a job object and the hand-back's thread check.
        self.inline = type(owner.hosted.dispatch).submit_job is Dispatch.submit_job
        #: Inline, and lines framed by LineRequestHandler's own frame(): a chunk that is exactly
        #: one line, arriving with nothing buffered, is answered without the buffer (data_received).
        #: Turned off for good when the connection lingers.
        self.whole_lines = self.inline and type(handler).frame is LineRequestHandler.frame
        #: The transport cannot stay open after the client's EOF (TLS): it is not read while a
        #: message is in flight (see advance()).
        self.pause_while_in_flight = not self.transport.can_write_eof()
        #: Replies framed by LineRequestHandler's own frame_reply(): the fast path appends the
        #: newline itself.
        self.line_replies = type(handler).frame_reply is LineRequestHandler.frame_reply
        #: The fast path's copies of the handler's line settings (class attributes, each a slow
        #: lookup through the instance), taken after its setup().
        self.max_line: int = getattr(handler, "max_line", 0)
        self.strip_cr: bool = getattr(handler, "strip_cr", False)
        self.newline: bytes = getattr(handler, "newline", b"")

    def __repr__(self) -> str:
        return f"<message connection {self.client_address!r}>"

    # -- Protocol callbacks --------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.flush_outbox()
        self.timer = self.loop.call_later(self.owner.idle_timeout, self.check_idle)
        self.advance()

    def data_received(self, data: bytes) -> None:
        # Request/reply's common case, under Inline: the chunk is one whole line, nothing is
        # buffered and the reply is bytes. What advance(), LineRequestHandler.frame(),
        # run_inline() and done() would do, in one call. The transport reads only while no
        # message is in flight, writing is not paused and the connection neither drains nor
        # closes: none of those needs checking on the way in. (Ints for the byte tests:
        # bytes.__contains__ given bytes raises and clears a TypeError inside.)
        if not self.whole_lines or data[-1] != 10 or 10 in (message := data[:-1]) or self.buffer \
                or len(data) > self.max_line:
            self.receive(data)
            return
        if 13 in message and message[-1] == 13 and self.strip_cr:
            message = message[:-1]
        self.owner.messages += 1
        self.in_flight = True
        try:
            reply = self.handler.handle_message(message)
            if type(reply) is not bytes or not self.line_replies:
                self.replied(reply)
                return
            framed = reply + self.newline
        except Exception:
            self.message_failed()
            return
        self.in_flight = False
        if self.outbox or self.draining:
            self.done(True, framed)  # replies written before it, or the server leaves (or aborted)
            return
        clock = self.clock  # an attribute, then a call: a method lookup would not be specialised
        self.last_activity = clock()
        self.transport.write(framed)

    def receive(self, data: bytes) -> None:
        """Bytes arrived that the fast path of ``data_received`` does not take."""
        if self.lingering:
            self.discarded += len(data)
            if self.discarded > self.handler.max_buffer:
                self.transport.abort()
            return
        self.last_activity = self.clock()
        self.buffer += data
        self.advance()

    def replied(self, reply: Any) -> None:
        """An inline message returned ``reply``: frame it, send it, go on (``done()``'s work)."""
        framed = None
        try:
            if reply is not None:
                framed = self.handler.frame_reply(reply if type(reply) is bytes else bytes(reply))
        except Exception:
            self.message_failed()
            return
        transport = self.transport
        if framed is not None and not (self.outbox or self.ended or self.draining or transport.is_closing()):
            # done() in its common case, without the call: one reply and nothing else to do.
            self.in_flight = False
            self.last_activity = self.clock()
            transport.write(framed)
            return
        self.done(True, framed)

    def message_failed(self) -> None:
        """The message in flight raised (inline): report it, flush earlier replies, close."""
        self.owner.hosted.server.handle_error(self.sock, self.client_address)
        self.done(False)

    def eof_received(self) -> bool | None:
        return True if self.in_flight else None  # a message in flight still answers, then closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self.ended = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.advancing:
            self.advance()

    # -- the message cycle -----------------------------------------------------------

    def advance(self) -> None:
        """Start the next message if one is complete and none is in flight; else read for more."""
        transport = self.transport
        hosted = self.owner.hosted
        if self.lingering:
            transport.resume_reading()  # what the client still sends is read and dropped
            return
        self.advancing = True
        buffer = self.buffer
        try:
            while not (self.in_flight or self.write_paused or self.draining or transport.is_closing()):
                message = None  # an empty buffer: a message consumes bytes, frame() has nothing to find
                if buffer:
                    handler = self.handler
                    try:  # next_message(), without the call
                        framed = handler.frame(buffer)
                        if framed is None:
                            _check_unframed(handler, buffer)
                        else:
                            message, consumed = framed
                            if not 0 < consumed <= len(buffer) or message is None:
                                _bad_frame(handler, framed, buffer)
                            del buffer[:consumed]
                    except FrameError as exc:
                        self.frame_failed(exc)
                        return
                    except Exception:
                        self.failed()
                        return
                if message is None:
                    if not transport.is_reading():
                        transport.resume_reading()
                    return
                self.in_flight = True
                self.owner.messages += 1
                if self.inline:
                    self.run_inline(message)  # what the strategy's submit_job would do with a job
                else:
                    hosted.dispatch.submit_job(hosted, _MessageJob(self, message))
            # While a message is in flight the connection goes on reading into the buffer (a
            # request/reply client sends nothing meanwhile: no event, and no epoll_ctl pair per
            # message), up to max_buffer bytes. Not under TLS: there an EOF closes the transport,
            # and one read while a message runs would lose its reply.
            if self.write_paused or (self.in_flight and (self.pause_while_in_flight
                                                         or len(buffer) >= self.handler.max_buffer)):
                transport.pause_reading()
        finally:
            self.advancing = False

    def run(self, message: Any) -> None:
        """Answer one message (in the strategy's thread)."""
        handler = self.handler
        ok = True
        try:
            reply = handler.handle_message(message)
            if reply is not None:
                handler.write(reply)
        except Exception:
            ok = False
            self.owner.hosted.server.handle_error(self.sock, self.client_address)
        self.hand_back(ok)

    def run_inline(self, message: Any) -> None:
        """``run()`` for a strategy that runs messages at once in the loop's thread (Inline): the
        returned reply goes through ``frame_reply`` to the transport directly (``replied()``), not
        through ``write()`` and the outbox, and there is no hand-back."""
        try:
            reply = self.handler.handle_message(message)
        except Exception:
            self.message_failed()
            return
        self.replied(reply)

    def hand_back(self, ok: bool) -> None:
        """Report the message in flight done (from any thread)."""
        if self.loop.in_loop():
            self.done(ok)
            return
        try:
            self.loop.call_soon_threadsafe(self.done, ok)
        except RuntimeError:  # the loop closed: nobody else will finish the handler
            self.in_flight = False
            self.release()

    def done(self, ok: bool, framed: bytes | None = None) -> None:
        """The message in flight is answered: send its replies (``framed``, from ``run_inline``,
        after the outbox's), then the next message (loop thread)."""
        self.in_flight = False
        self.last_activity = self.clock()
        if self.ended:
            self.release()
            return
        transport = self.transport
        if transport.is_closing():
            return  # failed or aborted meanwhile: its connection_lost is on the way
        outbox = self.outbox
        if outbox:  # flush_outbox(), without the call
            if framed is not None:
                outbox.append(framed)
            data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
            outbox.clear()
            transport.write(data)
        elif framed is not None:
            transport.write(framed)
        if not ok or self.draining:
            self.transport.close()
        elif not self.advancing:
            self.advance()

    def flush_outbox(self) -> None:
        """Hand the replies written so far to the transport, as one write."""
        outbox = self.outbox
        if outbox:
            data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
            outbox.clear()
            self.transport.write(data)

    def frame_failed(self, exc: FrameError) -> None:
        self.owner.hosted.count("frame_errors")
        try:
            answer = self.handler.frame_error(exc)
        except Exception:
            self.failed()
            return
        if answer:
            self.transport.write(answer)
        self.linger()

    def linger(self) -> None:
        """Close after an error without losing the answer: send it and EOF, then read and drop
        what the client still sends until it closes too (at most ``LINGER_TIMEOUT`` seconds and
        ``max_buffer`` bytes). Closing with unread input would reset the connection, and a reset
        may destroy the answer before the client reads it."""
        transport = self.transport
        if not transport.can_write_eof():  # TLS: its close_notify ends both directions
            transport.close()
            return
        self.lingering = True
        self.whole_lines = False
        transport.write_eof()
        transport.resume_reading()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(LINGER_TIMEOUT, transport.abort)

    def failed(self) -> None:
        self.owner.hosted.server.handle_error(self.sock, self.client_address)
        self.transport.close()

    def drain(self) -> None:
        self.draining = True
        if not self.in_flight:
            self.transport.close()
        else:
            self.transport.pause_reading()  # nothing more starts: what arrives would wait for nothing

    def check_idle(self) -> None:
        self.timer = None
        if self.ended:
            return
        timeout = self.owner.idle_timeout
        now = self.loop.time()
        if self.in_flight or now - self.last_activity < timeout:
            start = now if self.in_flight else self.last_activity
            self.timer = self.loop.call_at(start + timeout, self.check_idle)
            return
        self.owner.hosted.count("keepalive_expired")
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that neither sends nor reads
        else:
            self.transport.close()

    def release(self) -> None:
        """The connection is over: the handler's ``finish()`` then ``shutdown_request``, once each.
        While a message is still in flight (an abort), the socket is shut down at once and
        ``finish()`` waits for the message to return."""
        if self.released:
            return
        server = self.owner.hosted.server
        if self.in_flight:
            if not self.sock_closed:
                self.sock_closed = True
                server.shutdown_request(self.sock)
            return
        self.released = True
        try:
            self.handler.finish()
        except Exception:
            server.handle_error(self.sock, self.client_address)
        finally:
            if not self.sock_closed:
                self.sock_closed = True
                server.shutdown_request(self.sock)


class _MessageJob:
    """One framed message, run by the server's dispatch strategy."""

    __slots__ = ("conn", "message")

    def __init__(self, conn: _MessageConnection, message: Any) -> None:
        self.conn = conn
        self.message = message

    def run(self) -> None:
        self.conn.run(self.message)

    def cancel(self) -> None:
        self.conn.hand_back(False)

