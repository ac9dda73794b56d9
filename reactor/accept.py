"""The accept path of one hosted server, and the per-request dispatch strategies.

A hosted server is known only by the stdlib's own duck type: ``fileno()``,
``get_request()``, ``verify_request()``, ``process_request()``,
``handle_error()``, ``shutdown_request()``, ``service_actions()``, and the
optional ``timeout`` / ``handle_timeout()``. That is what lets an unmodified
``socketserver.TCPServer``, ``http.server.HTTPServer`` or
``xmlrpc.server.SimpleXMLRPCServer`` run beside reactor's own classes.

Two kinds of strategy decide where a hosted server's requests run (the
``dispatch=`` of ``Reactor.add_server``). A :class:`Dispatch` is per-request:
the loop takes each request here and hands it to ``submit()`` (``Inline`` runs
it in the loop's thread, ``ThreadPool`` on a worker thread). A *topology*
(``reactor.hosting.Topology``, e.g. ``Prefork``) hosts the server in a
process layout of its own and never uses this accept path in the master.

Rules
-----
1. While hosted, the listening socket is non-blocking, so taking a request can
   never block the loop; its previous mode is restored on detach.
2. When readable, requests are taken in a batch until the kernel says EAGAIN,
   at most ``accept_batch`` per tick so one busy server cannot starve others.
3. For each request the hooks run exactly as in ``BaseServer._handle_request_noblock``:
   ``verify_request`` then ``process_request`` (which runs the handler and
   ``shutdown_request``); on an exception ``handle_error`` then
   ``shutdown_request``. The dispatch strategy decides which thread runs that.
4. Errors from ``get_request()`` follow ``_errors``: EAGAIN ends the batch,
   a dead connection is skipped, exhaustion pauses the listener and retries
   on a timer with backoff (logged once per burst), anything else detaches
   the server and is raised.
5. The listener is in the selector exactly when nothing has paused it. Every
   reason to stop reading (exhaustion, a saturated dispatch, a server at its
   own limit, draining) is a :class:`PauseReason`, so they compose.
6. A server may define ``hosting_started(hosted)`` and ``hosting_stopped(hosted)``
   to learn of its hosting, e.g. to pause accepting at its own limit or to
   watch descriptors of its own on the loop.
7. Normal operation logs nothing (the stdlib's socketserver never does, and a
   logging handler may itself talk to a server on this loop). Warnings and
   errors log, rate-limited per cause where a client can cause them.
8. Leaving is two-phase: ``begin_drain()`` stops taking requests at once and
   reports, through a callback in the loop's thread, when nothing is in
   flight; ``abort()`` ends what is still in flight; ``detach()`` releases.
   Parked connections are idle, not in flight: leaving closes them at once.
9. A stream server whose handler exposes a request boundary parks its
   keep-alive connections between requests (``reactor.keepalive``): the
   dispatch runs each connection's next request as a :class:`Job` through
   ``submit_job()``, as it runs a new one through ``submit()``. Parking needs
   the server to build its handler as ``BaseServer`` does
   (``process_request``/``finish_request`` not overridden) and a strategy
   that implements ``submit_job()`` when it implements ``submit()``.
10. A server that keeps connections after ``process_request`` returns
   (``reactor.protocol``'s servers) may define ``drain_connections(on_drained)
   -> seconds`` and ``abort_connections()``: leaving then waits for both the
   dispatch and the server, under the longer of their deadlines.
11. A stream server that could park, and whose handler class offers
   ``message_connections(hosted, idle_timeout)`` (``reactor.framing``'s
   framed handlers), runs in *message mode*: after ``verify_request`` each
   connection is handed to that object (a :class:`MessageMode`), which owns
   it in the loop and runs each framed message as a :class:`Job` through
   ``submit_job()``. Leaving waits for it as for rule 10's servers (under
   the dispatch's deadline, ``DEFAULT_CONNECTION_DRAIN_TIMEOUT`` when the
   dispatch names none).
12. A stream server that could park, and whose handler exposes a request
   boundary the loop can read (``reactor.readahead``: unmodified
   ``http.server`` handlers, or a ``request_boundary`` hook), has each
   request read whole by the loop before it is dispatched, and its replies
   written behind, unless ``read_ahead=False``: the handler gets a
   ``reactor.buffered.ConnectionSocket`` as its request. This works with or
   without parking (``keepalive_timeout=0``). Leaving closes connections
   whose request is still arriving at once, and waits for replies being
   written, as for rule 10's servers.
"""

from __future__ import annotations

import enum
import functools
import typing
import errno
import logging
import os
import socket
import socketserver as _stdlib_socketserver
from dataclasses import dataclass, replace
from typing import Any, Callable

from ._errors import AcceptOutcome, RequestDropped, classify_accept_error
from ._ratelimit import RateLimitedLog
from ._timers import TimerHandle
from .admission import ADMISSION_COUNTERS, Admission, AdmissionOptions
from .buffered import ConnectionSocket
from .keepalive import DEFAULT_KEEPALIVE_TIMEOUT, KeptConnection, Parking, parking_factory
from .loop import EventLoop
from .readahead import READ_AHEAD_COUNTERS, ReadAhead, request_boundary_factory

__all__ = [
    "Dispatch", "HostedServer", "HostingOptions", "Inline", "Job", "MessageMode", "PauseReason", "STATS_GAUGES",
    "close_parked", "describe_server", "keep_listener_nonblocking", "make_nonblocking", "process_request_safely",
    "serve_parked",
]

logger = logging.getLogger(__name__)

#: Most requests taken from one listener in one tick.
DEFAULT_ACCEPT_BATCH = 64
#: First and largest delay before retrying a listener paused by resource exhaustion.
EXHAUSTION_BACKOFF_MIN = 0.05
EXHAUSTION_BACKOFF_MAX = 1.0
#: ``io_timeout`` of a stream handler that runs in the loop's own thread, unless told otherwise:
#: one silent client then stops every server on the loop for at most this long.
DEFAULT_INLINE_IO_TIMEOUT = 30.0
#: Keys of ``HostedServer.stats()`` that are gauges (how many now), not counters (how many so
#: far). A topology that sums its processes' stats (``Prefork``) sums these over the live
#: processes only, and carries every other key over from processes that exited.
STATS_GAUGES = frozenset({"open", "admitting", "parked", "message_connections", "reading"})
#: Seconds connections kept by the loop (message mode) get to finish when their server leaves,
#: if the dispatch allows no time of its own (``Inline``).
DEFAULT_CONNECTION_DRAIN_TIMEOUT = 30.0


class PauseReason(str, enum.Enum):
    """Why a listener is out of the selector; every reason in the package is named here."""

    #: Out of descriptors or memory: retried on a timer.
    EXHAUSTED = "exhausted"
    #: Every worker busy and the queue full (``ThreadPool``).
    SATURATED = "saturated"
    #: ``ForkingMixIn`` at ``max_children``.
    MAX_CHILDREN = "max_children"
    #: A pre-fork worker reached ``max_requests`` and is recycling.
    RECYCLING = "max_requests"
    #: Leaving the loop: no request is taken any more.
    DRAINING = "draining"
    #: ``max_connections`` open connections: the kernel backlog holds the rest.
    AT_CAPACITY = "max_connections"


@dataclass(frozen=True)
class HostingOptions:
    """Per-server hosting options, passed as one record through every layer.

    Attributes:
        service_interval: seconds between ``service_actions()`` calls when the
            server overrides it (it is also called after each batch of
            requests); None calls it only after requests.
        handle_timeouts: call ``handle_timeout()`` whenever the server has a
            ``timeout`` and that many seconds pass without a request.
        admission: what happens to a stream server's new connections before
            any hook sees them (access, limits, PROXY, TLS, deadlines).
    """

    service_interval: float | None = 0.5
    handle_timeouts: bool = True
    admission: AdmissionOptions = AdmissionOptions()

    def keywords(self) -> dict[str, Any]:
        """These options as ``Reactor.add_server`` keywords (to host the same server elsewhere)."""
        return dict(self.admission.keywords(), service_interval=self.service_interval,
                    handle_timeouts=self.handle_timeouts)


def describe_server(server: Any) -> str:
    """A short human name for a server, for logs: class and address."""
    address = getattr(server, "server_address", None)
    if isinstance(address, bytes):
        address = address.decode("utf-8", "backslashreplace")
    return f"{type(server).__name__}({address!r})"


#: Errors of a datagram reply the peer could not take: its queue is full
#: (a Unix datagram peer that never reads), it is gone, or unreachable.
_LOST_REPLY_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EAGAIN", "EWOULDBLOCK", "ENOBUFS", "ECONNREFUSED", "ENOENT", "EHOSTUNREACH", "ENETUNREACH",
    ) if hasattr(errno, name))


def _lost_datagram_reply(request: Any, exc: Exception) -> OSError | None:
    """``exc`` if it says a datagram server's reply could not reach its peer, else None."""
    if (isinstance(exc, OSError) and exc.errno in _LOST_REPLY_ERRNOS
            and isinstance(request, tuple) and len(request) == 2
            and isinstance(request[1], socket.socket) and request[1].type == socket.SOCK_DGRAM):
        return exc
    return None


def process_request_safely(server: Any, request: Any, client_address: Any,
                           hosted: HostedServer | None = None) -> None:
    """Run the hooks for one taken request, as ``BaseServer._handle_request_noblock`` does.

    Unlike the stdlib, an exception from ``verify_request`` is handled like one
    from ``process_request`` (``handle_error``, then ``shutdown_request``) instead
    of escaping into the loop, and ``shutdown_request`` runs even if
    ``handle_error`` raises. When the request came through ``hosted``, a
    datagram reply the peer cannot take (its queue full, or gone) is counted
    and logged rate-limited instead of going to ``handle_error``; and when
    ``hosted`` parks connections and the handler keeps this one after its
    first request, the connection is parked instead of shut down (see
    ``reactor.keepalive``).
    ``BaseException`` (KeyboardInterrupt, SystemExit) still propagates after the
    request is shut down; a ``SystemExit`` is logged first, naming the server
    and handler, since it ends every server on the loop.
    """
    try:
        if server.verify_request(request, client_address):
            messages = hosted.messages if hosted is not None else None
            if messages is not None:
                messages.take(request, client_address)  # served a message at a time from now on
                return
            factory = hosted.parking_factory() if hosted is not None else None
            if factory is None:
                server.process_request(request, client_address)
                return
            # BaseServer.process_request, with the handler kept when it asks.
            handler = factory(request, client_address, server)
            if KeptConnection.kept(handler):
                assert hosted is not None
                hosted.hold(KeptConnection(handler, request, client_address))
                return
        server.shutdown_request(request)
    except Exception as exc:
        _request_failed(server, request, client_address, hosted, exc)
    except BaseException as exc:
        _request_interrupted(server, request, exc)
        raise


def serve_parked(hosted: HostedServer, conn: KeptConnection) -> None:
    """Run the next request of a parked connection whose client sent it (in the strategy's thread).

    The hooks behave as if the handler's ``handle()`` had gone on looping:
    an exception runs the handler's ``finish()``, then ``handle_error`` and
    ``shutdown_request``; a request that ends the connection runs ``finish()``
    and ``shutdown_request``.
    """
    server = hosted.server
    request = conn.request
    try:
        try:
            conn.resume()
            keep = conn.serve_next()
        except BaseException:
            conn.finish()  # as the handler's __init__ would, around handle()
            raise
        if keep:
            hosted.hold(conn)
            return
        conn.finish()
        server.shutdown_request(request)
    except Exception as exc:
        _request_failed(server, request, conn.client_address, hosted, exc)
    except BaseException as exc:
        _request_interrupted(server, request, exc)
        raise


def close_parked(hosted: HostedServer, conn: KeptConnection) -> None:
    """End a parked connection unserved (idle too long, or its server is leaving): the
    handler's ``finish()``, then ``shutdown_request``, in the loop's thread, never blocking."""
    server = hosted.server
    try:
        conn.finish()
    except Exception:
        server.handle_error(conn.request, conn.client_address)
    finally:
        server.shutdown_request(conn.request)


def _request_failed(server: Any, request: Any, client_address: Any, hosted: HostedServer | None,
                    exc: Exception) -> None:
    """``handle_error`` (or the count of a lost reply or an I/O timeout), then ``shutdown_request``."""
    try:
        lost = _lost_datagram_reply(request, exc) if hosted is not None else None
        if lost is not None and hosted is not None:
            hosted.reply_lost(client_address, lost)
        elif hosted is not None and isinstance(exc, TimeoutError) and hosted.has_io_timeout:
            hosted.io_timed_out(client_address, exc)
        else:
            server.handle_error(request, client_address)
    finally:
        server.shutdown_request(request)


def _request_interrupted(server: Any, request: Any, exc: BaseException) -> None:
    """Shut the request down before ``exc`` (KeyboardInterrupt, SystemExit) propagates."""
    server.shutdown_request(request)
    if isinstance(exc, SystemExit):
        handler = getattr(server, "RequestHandlerClass", None)
        logger.error("%s: handler %s raised SystemExit(%r); it propagates out of the loop and "
                     "stops every server on it", describe_server(server),
                     getattr(handler, "__qualname__", handler), exc.code)


class Job(typing.Protocol):
    """Work a strategy runs beside requests (``Dispatch.submit_job``)."""

    def run(self) -> None:
        """Do the work, in one of the strategy's threads; never raises ``Exception``."""

    def cancel(self) -> None:
        """The strategy will not run it (the server left before it could): release what it holds."""


class MessageMode(typing.Protocol):
    """The connections of a server served a framed message at a time (rule 11; ``reactor.framing``)."""

    @property
    def open(self) -> int:
        """Connections served now."""

    @property
    def messages(self) -> int:
        """Messages dispatched so far (counted in ``stats()`` as ``messages`` and ``dispatched``)."""

    def take(self, request: Any, client_address: Any) -> None:
        """Serve a verified connection from now on (from the strategy's thread)."""

    def drain(self, on_drained: Callable[[], None]) -> None:
        """Finish what is in flight, flush, close; ``on_drained()`` in the loop once none is left."""

    def abort(self) -> None:
        """Close every connection at once."""

    def detach(self) -> None:
        """Release every connection still held (the server is detached; the loop may not run again)."""


class _NextRequest:
    """The job of serving a parked connection's next request."""

    __slots__ = ("hosted", "conn")

    def __init__(self, hosted: HostedServer, conn: KeptConnection) -> None:
        self.hosted = hosted
        self.conn = conn

    def run(self) -> None:
        serve_parked(self.hosted, self.conn)

    def cancel(self) -> None:
        close_parked(self.hosted, self.conn)


class Dispatch:
    """Base of per-request strategies: where each request a hosted server takes runs.

    The loop takes a request off the listener and calls ``submit()``. A
    subclass runs it elsewhere (a worker thread), sets up and tears down its
    resources in ``bind()``/``unbind()``, and takes part in leaving through
    ``begin_drain()`` and ``abort()``. The base class runs every request
    inline, in the loop's thread.
    """

    #: True when requests run in the loop's own thread (so a blocked handler blocks the loop).
    runs_in_loop_thread: bool = True
    #: The ``io_timeout`` of a stream handler this strategy runs in the loop's thread when
    #: ``add_server`` is not given one (None: blocking).
    default_io_timeout: float | None = DEFAULT_INLINE_IO_TIMEOUT

    def bind(self, hosted: HostedServer) -> None:
        """Called once when ``hosted`` starts; acquire resources here."""

    def submit(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        """Run the hooks for one request (see ``process_request_safely``)."""
        process_request_safely(hosted.server, request, client_address, hosted)

    def submit_job(self, hosted: HostedServer, job: Job) -> None:
        """Run ``job.run()`` where requests run: the next request of a parked connection,
        a framed message. The base class runs it at once, in the loop's thread."""
        job.run()

    def begin_drain(self, hosted: HostedServer, on_drained: Callable[[], None]) -> float:
        """Let requests in flight finish; call ``on_drained()`` in the loop's thread once none is left
        (at once, before returning, if none is in flight).

        Returns:
            The seconds the strategy allows before it should be aborted.
        """
        on_drained()  # inline: a request never outlives the callback that runs it
        return 0.0

    def abort(self, hosted: HostedServer) -> None:
        """Give up on requests still in flight after the drain deadline."""

    def unbind(self, hosted: HostedServer) -> None:
        """Called once when ``hosted`` is detached, after draining or aborting; release resources here."""

    def owns_current_thread(self) -> bool:
        """True when the calling thread is one this strategy runs requests on (not the loop's)."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Inline(Dispatch):
    """Run each request in the reactor's thread, to completion, as socketserver does.

    The right choice for fast handlers and for servers that bring their own
    concurrency (``ThreadingMixIn``, ``ForkingMixIn``). A slow handler delays
    every server on the same reactor.
    """


class HostedServer:
    """The accept path of one server on one loop (see the module rules).

    Made by ``Reactor.add_server`` for a per-request :class:`Dispatch`; it is
    the attachment the reactor keeps for that server.
    """

    def __init__(
        self,
        reactor: EventLoop,
        server: Any,
        dispatch: Dispatch,
        options: HostingOptions = HostingOptions(),
        *,
        on_listener_failed: Callable[[], None] | None = None,
        accept_batch: int = DEFAULT_ACCEPT_BATCH,
    ) -> None:
        self.reactor = reactor
        self._on_listener_failed = on_listener_failed
        self._server = server
        self._dispatch = dispatch
        self._options = options
        self.name = describe_server(server)
        self.accept_batch = accept_batch
        self.requests_taken = 0
        self._fd = server.fileno()
        self._pause_reasons: set[str] = set()
        self._claimed = False
        self._registered = False
        self._started = False
        self._bound = False
        self._announced = False
        self._restore_mode: Callable[[], None] | None = None
        self._retry: TimerHandle | None = None
        self._backoff = EXHAUSTION_BACKOFF_MIN
        self._exhaustion_retries = 0
        self._service_timer: TimerHandle | None = None
        self._idle_timer: TimerHandle | None = None
        self._last_activity = reactor.time()
        self._calls_service_actions = _overrides(server, "service_actions")
        # Every key from the start (stats() has one shape), and no key added later by another thread.
        self._counts = {"requests": 0, "dropped": 0, "replies_lost": 0, "exhausted": 0, "io_timeouts": 0,
                        "dispatched": 0, "resumed": 0, "keepalive_expired": 0, "messages": 0, "frame_errors": 0}
        self._counts.update(dict.fromkeys(READ_AHEAD_COUNTERS, 0))
        if options.admission.active:
            self._counts.update(dict.fromkeys(ADMISSION_COUNTERS, 0))
        #: Requests lost while taking them (``dropped``) and exhaustion pauses, by errno name
        #: (``ECONNABORTED``, ``EMFILE``) or, without an errno, by exception class.
        self._accept_errors: dict[str, int] = {}
        #: One rate limit per cause (an errno, an exception class, "io_timeout") for everything
        #: a client can make this server warn about.
        self._warnings = RateLimitedLog(logger)
        self._admission: Admission | None = None
        self._patched_close_request: Callable[[Any], None] | None = None
        self._parking: Parking | None = None
        self._messages: MessageMode | None = None
        self._read_ahead: ReadAhead | None = None
        self._io_timeout = self._resolve_io_timeout()
        #: The server's RequestHandlerClass last seen, and its parking variant (one tuple: read from many threads).
        self._parking_variant: tuple[Any, Callable[..., Any] | None] = (None, None)

    @property
    def server(self) -> Any:
        """The hosted server."""
        return self._server

    @property
    def dispatch(self) -> Dispatch:
        """The strategy running this server's requests."""
        return self._dispatch

    @property
    def paused(self) -> bool:
        """True while the listener is out of the selector."""
        return bool(self._pause_reasons)

    def stats(self) -> dict[str, int]:
        """Counters: requests taken, requests lost before they were taken,
        datagram replies the peer could not take, exhaustion pauses, handlers
        that hit ``io_timeout``, handler runs handed to the dispatch
        (``dispatched``, of which ``resumed`` were parked connections' next
        requests and ``messages`` framed messages), parked or message-mode
        connections closed idle (``keepalive_expired``), input that could not
        be framed (``frame_errors``), requests the loop refused while reading
        them ahead (``read_ahead_refused``) and readers too slow for their
        reply (``send_timeouts``); the gauges ``parked``, ``reading`` (requests
        arriving) and ``message_connections`` (now); with admission, connections admitted and
        refused by cause, and the gauges open and admitting now
        (:data:`STATS_GAUGES` names the gauges).

        Every key is present from construction on, zero until it happens: the
        shape depends only on the hosting options, so an unstarted
        HostedServer's stats() is the zero shape a topology reports before
        its processes do.
        """
        read_ahead = self._read_ahead
        parked = self._parking.parked if self._parking is not None else 0
        counts = dict(self._counts, requests=self.requests_taken,
                      parked=parked + (read_ahead.parked if read_ahead is not None else 0),
                      reading=read_ahead.reading if read_ahead is not None else 0,
                      message_connections=self._messages.open if self._messages is not None else 0)
        if self._messages is not None:
            # Counted by the message mode itself: one increment per message, not two calls.
            messages = self._messages.messages
            counts["messages"] += messages
            counts["dispatched"] += messages
        if self._options.admission.active:
            admission = self._admission
            counts.update(open=admission.open if admission is not None else 0,
                          admitting=admission.pending if admission is not None else 0)
        return counts

    @property
    def accept_errors(self) -> dict[str, int]:
        """Errors met while taking requests, counted by errno name (``ECONNABORTED``, ``EMFILE``),
        or by exception class when they have no errno (a failed TLS handshake: ``SSLError``)."""
        return dict(self._accept_errors)

    @property
    def pause_reasons(self) -> frozenset[str]:
        """Why the listener is out of the selector now (:class:`PauseReason` values); empty while reading."""
        return frozenset(self._pause_reasons)

    def _count_accept_error(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno, type(exc).__name__) if exc.errno is not None else type(exc).__name__
        self._accept_errors[name] = self._accept_errors.get(name, 0) + 1

    @property
    def keepalive_timeout(self) -> float | None:
        """Seconds a parked connection may stay idle; None when this server does not park."""
        return self._parking.timeout if self._parking is not None else None

    def parking_factory(self) -> Callable[..., Any] | None:
        """The handler factory that lets this server's connections park, or None to run
        ``process_request`` as it is (parking off, or a handler without a request boundary).

        Thread-safety: safe from the strategy's threads.
        """
        if self._parking is None:
            return None
        factory = self._server.RequestHandlerClass
        seen, variant = self._parking_variant
        if factory is not seen:
            variant = parking_factory(factory)
            self._parking_variant = (factory, variant)
        return variant

    @property
    def messages(self) -> MessageMode | None:
        """This server's message mode (rule 11), or None when its connections are not served that way."""
        return self._messages

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key`` of ``stats()`` (one of its keys). Loop thread only."""
        self._counts[key] += n

    def warn(self, cause: object, message: str, *args: Any) -> None:
        """Log a warning a client can cause, at most once per 10 s per cause."""
        self._warnings.warning(cause, message, *args)

    def hold(self, conn: KeptConnection) -> None:
        """Park a connection whose handler keeps it after a request (from any thread)."""
        if self._read_ahead is not None and isinstance(conn.request, ConnectionSocket):
            self._read_ahead.hold(conn)  # its next request is read ahead too
            return
        assert self._parking is not None
        self._parking.hold(conn)

    @property
    def io_timeout(self) -> float | None:
        """The timeout given to each connection's socket before its handler runs (None: blocking)."""
        return self._io_timeout

    @property
    def has_io_timeout(self) -> bool:
        """True when handed-over connections carry an ``io_timeout``."""
        return self._io_timeout is not None

    def io_timed_out(self, client_address: Any, exc: TimeoutError) -> None:
        """Count a handler that gave up on a silent client after ``io_timeout``; logged rate-limited."""
        self._counts["io_timeouts"] += 1
        self._warnings.warning(
            "io_timeout", "%s: closed the connection of %r: no I/O within io_timeout=%ss (%d so far)",
            self.name, client_address, self._io_timeout, self._counts["io_timeouts"])

    def reply_lost(self, client_address: Any, exc: OSError) -> None:
        """Count a datagram reply the peer could not take; logged rate-limited."""
        self._counts["replies_lost"] += 1
        self._warnings.warning(
            exc.errno, "%s: a reply to %r was lost: %s (%d lost so far)",
            self.name, client_address, exc.strerror or exc, self._counts["replies_lost"])

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Claim the listener, make it non-blocking, start reading it and arm the timers."""
        self.reactor.claim(self._fd, self)
        self._claimed = True
        self._restore_mode = make_nonblocking(self._server, self._fd)
        self._started = True
        if self._options.admission.active:
            self._start_admission()
        self._start_parking()
        self._dispatch.bind(self)
        self._bound = True  # detach undoes only what start did: a refused bind leaves the pool alone
        hosting_started = getattr(self._server, "hosting_started", None)
        if hosting_started is not None:
            hosting_started(self)
            self._announced = True
        self._sync_registration()
        interval = self._options.service_interval
        if self._calls_service_actions and interval is not None:
            self._service_timer = self.reactor.call_later(interval, self._periodic_service)
        if self._options.handle_timeouts and getattr(self._server, "timeout", None) is not None:
            self._arm_idle_timer()

    def begin_drain(self, on_drained: Callable[[], None]) -> float:
        """Stop taking requests at once; ``on_drained()`` runs in the loop once none is in flight
        (before this returns, if none is).

        Returns:
            The seconds the dispatch allows for that (its drain timeout).
        """
        self._cancel_timers()
        self.pause(PauseReason.DRAINING)
        if self._admission is not None:
            self._admission.close_all()
        if self._parking is not None:
            self._parking.close_all()  # idle between requests: nothing in flight to wait for
        if not self._bound:
            on_drained()
            return 0.0
        drain_connections = getattr(self._server, "drain_connections", None)
        messages = self._messages
        read_ahead = self._read_ahead
        if drain_connections is None and messages is None and read_ahead is None:
            return self._dispatch.begin_drain(self, on_drained)
        # Connections kept by the server (rule 10) or the loop (rules 11 and 12): drained once all are.
        waiting = [1 + (drain_connections is not None) + (messages is not None) + (read_ahead is not None)]

        def one_drained() -> None:
            waiting[0] -= 1
            if waiting[0] == 0:
                on_drained()

        timeout = self._dispatch.begin_drain(self, one_drained)
        if messages is not None:
            timeout = timeout or DEFAULT_CONNECTION_DRAIN_TIMEOUT
            messages.drain(one_drained)
        if read_ahead is not None:
            timeout = timeout or DEFAULT_CONNECTION_DRAIN_TIMEOUT
            read_ahead.drain(one_drained)
        if drain_connections is not None:
            server_timeout: float = drain_connections(one_drained)
            timeout = max(timeout, server_timeout)
        return timeout

    def abort(self) -> None:
        """Give up on requests still in flight (queued ones are closed unserved)."""
        if self._bound:
            self._dispatch.abort(self)
            if self._messages is not None:
                self._messages.abort()
            if self._read_ahead is not None:
                self._read_ahead.abort()
            abort_connections = getattr(self._server, "abort_connections", None)
            if abort_connections is not None:
                abort_connections()

    def detach(self) -> None:
        """Stop reading, cancel timers, release the dispatch and the claim, restore the socket's mode."""
        if not self._started:
            return
        self._started = False
        self._cancel_timers()
        self._sync_registration()
        if self._parking is not None:
            self._parking.close_all()
        if self._messages is not None:
            self._messages.detach()
        if self._read_ahead is not None:
            self._read_ahead.detach()
        if self._claimed and not self.reactor.closed:
            self.reactor.remove_writer(self._fd, owner=self)  # a server's watch_writable()
            self.reactor.release(self._fd, self)
        self._claimed = False
        try:
            if self._announced:
                self._announced = False
                self._server.hosting_stopped(self)
            if self._bound:
                self._bound = False
                self._dispatch.unbind(self)
        finally:
            if self._patched_close_request is not None:
                if vars(self._server).get("close_request") is self._patched_close_request:
                    del self._server.close_request
                self._patched_close_request = None
            if self._restore_mode is not None:
                self._restore_mode()
                self._restore_mode = None

    def watch_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` in the loop while the listening socket is writable (for a
        server's own writes on it, e.g. a datagram server's queued replies)."""
        self.reactor.add_writer(self._fd, callback, owner=self)

    def unwatch_writable(self) -> None:
        """Stop ``watch_writable()``."""
        if self._claimed and not self.reactor.closed:
            self.reactor.remove_writer(self._fd, owner=self)

    def _cancel_timers(self) -> None:
        for timer in (self._retry, self._service_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._retry = self._service_timer = self._idle_timer = None

    def pause(self, reason: str) -> None:
        """Stop reading the listener for ``reason`` (a :class:`PauseReason`) until ``resume(reason)``."""
        self._pause_reasons.add(reason)
        self._sync_registration()

    def resume(self, reason: str) -> None:
        """Withdraw ``reason``; reading restarts once no reason is left."""
        self._pause_reasons.discard(reason)
        self._sync_registration()

    def _sync_registration(self) -> None:
        want = self._started and not self._pause_reasons
        if want and not self._registered:
            self.reactor.add_reader(self._fd, self._on_readable, owner=self)
            self._registered = True
        elif not want and self._registered:
            # Paused, the listener stays claimed: nobody else may watch its fd.
            self.reactor.remove_reader(self._fd, owner=self)
            self._registered = False

    # -- the accept path ---------------------------------------------------

    def _on_readable(self) -> None:
        server = self._server
        reactor = self.reactor
        dispatch = self._dispatch
        io_timeout = self._io_timeout
        taken = submitted = 0
        for _ in range(self.accept_batch):
            # A handler may have stopped the reactor, paused or even removed
            # this server (detach restored the socket's blocking mode); a
            # signal (SIGTERM) gets to run before another request is taken.
            if reactor.stopping or reactor.signal_pending or self._pause_reasons or not self._started:
                break
            try:
                request, client_address = server.get_request()
            except OSError as exc:
                outcome = classify_accept_error(exc)
                if outcome is AcceptOutcome.EMPTY:
                    break
                if outcome is AcceptOutcome.DROPPED:
                    self._on_dropped(exc)
                    continue
                if outcome is AcceptOutcome.EXHAUSTED:
                    self._on_exhausted(exc)
                    break
                logger.error("%s: listener failed, removing it from the reactor", self.name)
                if self._started:
                    if self._on_listener_failed is not None:
                        self._on_listener_failed()
                    else:
                        self.detach()
                raise
            taken += 1
            if self._exhaustion_retries:
                self._on_recovered()
            if isinstance(request, socket.socket):
                if self._admission is not None:
                    self._admission.take(request, client_address)
                    continue
                if self._read_ahead is not None:
                    self._read_ahead.take(request, client_address)  # dispatched once its request is in
                    continue
                # BSD and macOS hand out accepted sockets with the listener's
                # O_NONBLOCK; setting the timeout (the socket's own, without
                # io_timeout) makes the descriptor agree with what the handler expects.
                request.settimeout(request.gettimeout() if io_timeout is None else io_timeout)
            submitted += 1
            dispatch.submit(self, request, client_address)
        if taken:
            self.requests_taken += taken
            self._counts["dispatched"] += submitted
            self._last_activity = reactor.time()
            if self._calls_service_actions and self._started:
                server.service_actions()

    # -- admission -----------------------------------------------------------

    def _start_admission(self) -> None:
        sock = getattr(self._server, "socket", None)
        if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
            raise ValueError(f"{self.name}: connection options (TLS, PROXY, limits, timeouts) "
                             "apply to stream servers only")
        options = replace(self._options.admission, io_timeout=self._io_timeout)
        admission = Admission(self.reactor, self.name, options, sock.family,
                              self._submit_admitted, self._counts, self._pause_at_capacity)
        original = self._server.close_request

        def close_request(request: Any) -> None:
            try:
                original(request)
            finally:
                if isinstance(request, ConnectionSocket):  # counts until its reply is out
                    request.connection.when_closed(functools.partial(admission.closed, request.raw_socket))
                else:
                    admission.closed(request)

        # Every connection ends in close_request (shutdown_request calls it;
        # a ForkingMixIn parent calls it alone), in whichever thread: that is
        # where it stops counting against the limits.
        self._server.close_request = close_request
        self._patched_close_request = close_request
        self._admission = admission

    def _submit_admitted(self, request: socket.socket, client_address: Any) -> None:
        if not self._started or PauseReason.DRAINING in self._pause_reasons:
            self._server.shutdown_request(request)  # admitted as the server began leaving
            return
        if self._read_ahead is not None:
            self._read_ahead.take(request, client_address)
            return
        self._counts["dispatched"] += 1
        self._dispatch.submit(self, request, client_address)

    def _submit_read_ahead(self, request: ConnectionSocket, client_address: Any) -> None:
        if not self._started or PauseReason.DRAINING in self._pause_reasons:
            self._server.shutdown_request(request)
            return
        self._counts["dispatched"] += 1
        self._dispatch.submit(self, request, client_address)

    def _resolve_io_timeout(self) -> float | None:
        timeout = self._options.admission.io_timeout
        if timeout is None:
            sock = getattr(self._server, "socket", None)
            in_loop_thread = self._dispatch.runs_in_loop_thread and not _overrides(self._server, "process_request")
            if in_loop_thread and isinstance(sock, socket.socket) and sock.type == socket.SOCK_STREAM:
                return self._dispatch.default_io_timeout
            return None
        return timeout or None  # 0: blocking

    # -- parking ---------------------------------------------------------------

    def _start_parking(self) -> None:
        """Park connections between requests, or serve them in message mode (rules 9 and 11), if the
        server, its handler and the strategy allow it."""
        options = self._options.admission
        timeout = options.keepalive_timeout
        if timeout is None:
            timeout = DEFAULT_KEEPALIVE_TIMEOUT
        sock = getattr(self._server, "socket", None)
        if (not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM
                or _overrides(self._server, "process_request") or _overrides(self._server, "finish_request")):
            return  # only a handler built the way BaseServer builds it can be driven a request at a time
        strategy = type(self._dispatch)
        if strategy.submit is not Dispatch.submit and strategy.submit_job is Dispatch.submit_job:
            return  # a strategy of its own that knows nothing of parking: next requests would run inline
        handler = getattr(self._server, "RequestHandlerClass", None)
        message_connections = getattr(handler, "message_connections", None)
        if message_connections is not None:
            if timeout:
                self._messages = message_connections(self, timeout)
            return
        if timeout:
            self._parking = Parking(self.reactor, timeout, self._resume_parked, self._close_parked, self._counts)
        boundary = request_boundary_factory(handler, options) if options.read_ahead is not False else None
        if boundary is not None:
            self._read_ahead = ReadAhead(
                self.reactor, self.name, options, boundary, self._counts,
                keepalive_timeout=timeout or DEFAULT_KEEPALIVE_TIMEOUT, io_timeout=self._io_timeout,
                submit=self._submit_read_ahead, resume=self._resume_parked,
                close_request=self._server.shutdown_request, close_kept=self._close_parked)

    def _resume_parked(self, conn: KeptConnection) -> None:
        self._counts["dispatched"] += 1
        self._dispatch.submit_job(self, _NextRequest(self, conn))

    def _close_parked(self, conn: KeptConnection) -> None:
        close_parked(self, conn)

    def _pause_at_capacity(self, paused: bool) -> None:
        if paused:
            self.pause(PauseReason.AT_CAPACITY)
        else:
            self.resume(PauseReason.AT_CAPACITY)

    def _on_dropped(self, exc: OSError) -> None:
        # A peer that resets before we take its connection is routine; a TLS
        # handshake that fails is worth a (rate-limited) word: a context with
        # no usable certificate would otherwise drop every client silently.
        self._counts["dropped"] += 1
        self._count_accept_error(exc)
        if not isinstance(exc, RequestDropped) and (exc.errno is None or type(exc).__module__ == "ssl"):
            self._warnings.warning(type(exc).__name__, "%s: dropped a connection while taking it: %s (%d dropped so far)",
                                self.name, exc, self._counts["dropped"])

    def _on_exhausted(self, exc: OSError) -> None:
        if self._exhaustion_retries == 0:
            logger.warning(
                "%s: cannot take requests: %s; pausing this listener and retrying "
                "(connections wait in the kernel backlog)", self.name, exc.strerror or exc)
        self._exhaustion_retries += 1
        self._counts["exhausted"] += 1
        self._count_accept_error(exc)
        self.pause(PauseReason.EXHAUSTED)
        self._retry = self.reactor.call_later(self._backoff, self._retry_after_exhaustion)
        self._backoff = min(self._backoff * 2, EXHAUSTION_BACKOFF_MAX)

    def _retry_after_exhaustion(self) -> None:
        self._retry = None
        self.resume(PauseReason.EXHAUSTED)

    def _on_recovered(self) -> None:
        logger.warning("%s: taking requests again after %d retries", self.name, self._exhaustion_retries)
        self._exhaustion_retries = 0
        self._backoff = EXHAUSTION_BACKOFF_MIN

    # -- periodic duties ---------------------------------------------------

    def _periodic_service(self) -> None:
        interval = self._options.service_interval
        assert interval is not None
        # Re-arm first: a service_actions() that raises must not end the schedule.
        self._service_timer = self.reactor.call_later(interval, self._periodic_service)
        self._server.service_actions()

    def _arm_idle_timer(self) -> None:
        timeout = getattr(self._server, "timeout", None)
        if timeout is None:
            self._idle_timer = None
            return
        self._idle_timer = self.reactor.call_at(self._last_activity + timeout, self._check_idle)

    def _check_idle(self) -> None:
        timeout = getattr(self._server, "timeout", None)
        now = self.reactor.time()
        try:
            if timeout is not None and now - self._last_activity >= timeout:
                self._last_activity = now
                self._server.handle_timeout()
        finally:
            if self._started and PauseReason.DRAINING not in self._pause_reasons:
                self._arm_idle_timer()


def _overrides(server: Any, name: str) -> bool:
    """True unless ``server.name`` is BaseServer's no-op."""
    method = getattr(type(server), name, None)
    return method is not None and method is not getattr(_stdlib_socketserver.BaseServer, name)


#: The attribute ``keep_listener_nonblocking()`` sets on a server.
_KEEP_NONBLOCKING = "_reactor_keep_listener_nonblocking"


def keep_listener_nonblocking(server: Any) -> None:
    """Let ``server``'s listener stay non-blocking when it leaves its hosting (no mode restored).

    For a listener handed over to another process that serves it too (a
    whole-process upgrade): ``O_NONBLOCK`` lives in the open file description
    that every process holding the socket shares, so restoring the blocking
    mode here would make the other process's ``accept()`` block. What
    ``Reactor.close(restore_listeners=False)`` uses; it applies to every
    strategy's restore (the accept path's and ``Prefork``'s).

    Raises:
        AttributeError: the server takes no attributes (``__slots__``).
    """
    setattr(server, _KEEP_NONBLOCKING, True)


def make_nonblocking(server: Any, fd: int) -> Callable[[], None]:
    """Put the listener in non-blocking mode; return a function that restores its old mode.

    Goes through the server's socket object when it has one, so the object's
    idea of its timeout stays consistent with the descriptor. The restore
    does nothing once :func:`keep_listener_nonblocking` marked the server.
    """
    sock = getattr(server, "socket", None)
    if isinstance(sock, socket.socket) and sock.fileno() == fd:
        previous_timeout = sock.gettimeout()
        sock.setblocking(False)

        def restore_socket() -> None:
            if sock.fileno() >= 0 and not getattr(server, _KEEP_NONBLOCKING, False):
                sock.settimeout(previous_timeout)

        return restore_socket
    previous_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)

    def restore_fd() -> None:
        if getattr(server, _KEEP_NONBLOCKING, False):
            return
        try:
            os.set_blocking(fd, previous_blocking)
        except OSError:
            pass  # already closed by its owner

    return restore_fd
