"""Hosting one socketserver-style server on a Reactor: the accept path.

A hosted server is known only by the stdlib's own duck type: ``fileno()``,
``get_request()``, ``verify_request()``, ``process_request()``,
``handle_error()``, ``shutdown_request()``, ``service_actions()``, and the
optional ``timeout`` / ``handle_timeout()``. That is what lets an unmodified
``socketserver.TCPServer``, ``http.server.HTTPServer`` or
``xmlrpc.server.SimpleXMLRPCServer`` run beside reactor's own classes.

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
   own limit) is a named pause reason, so they compose.
6. A server may define ``hosting_started(hosted)`` and ``hosting_stopped(hosted)``
   to learn of its hosting, e.g. to pause accepting at its own limit or to
   watch descriptors of its own on the reactor.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver as _stdlib_socketserver
from typing import TYPE_CHECKING, Any, Callable, Protocol

from ._errors import AcceptOutcome, classify_accept_error
from ._timers import TimerHandle

if TYPE_CHECKING:
    from .loop import Reactor

__all__ = [
    "Attachment", "Dispatch", "HostedServer", "Inline", "describe_server", "make_nonblocking",
    "process_request_safely",
]

logger = logging.getLogger(__name__)

#: Most requests taken from one listener in one tick.
DEFAULT_ACCEPT_BATCH = 64
#: First and largest delay before retrying a listener paused by resource exhaustion.
EXHAUSTION_BACKOFF_MIN = 0.05
EXHAUSTION_BACKOFF_MAX = 1.0

PAUSED_EXHAUSTED = "exhausted"


def describe_server(server: Any) -> str:
    """A short human name for a server, for logs: class and address."""
    address = getattr(server, "server_address", None)
    if isinstance(address, bytes):
        address = address.decode("utf-8", "backslashreplace")
    return f"{type(server).__name__}({address!r})"


def process_request_safely(server: Any, request: Any, client_address: Any) -> None:
    """Run the hooks for one taken request, as ``BaseServer._handle_request_noblock`` does.

    Unlike the stdlib, an exception from ``verify_request`` is handled like one
    from ``process_request`` (``handle_error``, then ``shutdown_request``) instead
    of escaping into the loop, and ``shutdown_request`` runs even if
    ``handle_error`` raises. ``BaseException`` (KeyboardInterrupt, SystemExit)
    still propagates after the request is shut down.
    """
    try:
        if server.verify_request(request, client_address):
            server.process_request(request, client_address)
        else:
            server.shutdown_request(request)
    except Exception:
        try:
            server.handle_error(request, client_address)
        finally:
            server.shutdown_request(request)
    except BaseException:
        server.shutdown_request(request)
        raise


class Attachment(Protocol):
    """What a Reactor keeps for each hosted server; made by ``Dispatch.attach``."""

    @property
    def server(self) -> Any:
        """The hosted server."""

    @property
    def dispatch(self) -> Dispatch:
        """The strategy that made this attachment."""

    def start(self) -> None:
        """Begin serving."""

    def detach(self) -> None:
        """Stop serving and release everything taken from the server and the reactor."""


class Dispatch:
    """Base of dispatch strategies: where a hosted server's requests run.

    Subclasses override ``submit`` to run the request elsewhere (a worker
    thread), ``bind``/``unbind`` to set up and tear down their resources, or
    ``attach`` to host the server in a different topology (pre-forked worker
    processes). The base class runs every request inline.
    """

    def attach(self, reactor: Reactor, server: Any, *, service_interval: float | None,
               handle_timeouts: bool) -> Attachment:
        """Make the attachment that serves ``server`` on ``reactor``."""
        return HostedServer(reactor, server, self, service_interval=service_interval,
                            handle_timeouts=handle_timeouts)

    def bind(self, hosted: HostedServer) -> None:
        """Called once when ``hosted`` starts; acquire resources here."""

    def unbind(self, hosted: HostedServer) -> None:
        """Called once when ``hosted`` is detached; release resources here."""

    def submit(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        """Run the hooks for one request (see ``process_request_safely``)."""
        process_request_safely(hosted.server, request, client_address)

    def owns_current_thread(self) -> bool:
        """True when the calling thread is one this strategy runs requests on (not the reactor's)."""
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
    """The accept path of one server on one Reactor (see the module rules)."""

    def __init__(
        self,
        reactor: Reactor,
        server: Any,
        dispatch: Dispatch,
        *,
        service_interval: float | None = 0.5,
        handle_timeouts: bool = True,
        accept_batch: int = DEFAULT_ACCEPT_BATCH,
    ) -> None:
        self.reactor = reactor
        self._server = server
        self._dispatch = dispatch
        self.name = describe_server(server)
        self.accept_batch = accept_batch
        self.requests_taken = 0
        self._fd = server.fileno()
        self._service_interval = service_interval
        self._handle_timeouts = handle_timeouts
        self._pause_reasons: set[str] = set()
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

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Make the listener non-blocking, start reading it and arm the timers."""
        self._restore_mode = make_nonblocking(self._server, self._fd)
        self._started = True
        self._dispatch.bind(self)
        self._bound = True  # detach undoes only what start did: a refused bind leaves the pool alone
        hosting_started = getattr(self._server, "hosting_started", None)
        if hosting_started is not None:
            hosting_started(self)
            self._announced = True
        self._sync_registration()
        if self._calls_service_actions and self._service_interval is not None:
            self._service_timer = self.reactor.call_later(self._service_interval, self._periodic_service)
        if self._handle_timeouts and getattr(self._server, "timeout", None) is not None:
            self._arm_idle_timer()

    def detach(self) -> None:
        """Stop reading, cancel timers, release the dispatch, restore the socket's mode."""
        if not self._started:
            return
        self._started = False
        for timer in (self._retry, self._service_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._retry = self._service_timer = self._idle_timer = None
        self._sync_registration()
        self.reactor._release_owned_fd(self._fd)
        try:
            if self._announced:
                self._announced = False
                self._server.hosting_stopped(self)
            if self._bound:
                self._bound = False
                self._dispatch.unbind(self)
        finally:
            if self._restore_mode is not None:
                self._restore_mode()
                self._restore_mode = None

    def pause(self, reason: str) -> None:
        """Stop reading the listener for ``reason`` until ``resume(reason)``."""
        self._pause_reasons.add(reason)
        self._sync_registration()

    def resume(self, reason: str) -> None:
        """Withdraw ``reason``; reading restarts once no reason is left."""
        self._pause_reasons.discard(reason)
        self._sync_registration()

    def _sync_registration(self) -> None:
        want = self._started and not self._pause_reasons
        if want and not self._registered:
            self.reactor._add_owned_reader(self._fd, self._on_readable)
            self._registered = True
        elif not want and self._registered:
            # Paused, the listener stays claimed: nobody else may watch its fd.
            self.reactor._remove_owned_reader(self._fd, release=not self._started)
            self._registered = False

    # -- the accept path ---------------------------------------------------

    def _on_readable(self) -> None:
        server = self._server
        reactor = self.reactor
        dispatch = self._dispatch
        taken = 0
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
                    continue
                if outcome is AcceptOutcome.EXHAUSTED:
                    self._on_exhausted(exc)
                    break
                logger.error("%s: listener failed, removing it from the reactor", self.name)
                if self._started:
                    reactor.remove_server(server)
                raise
            taken += 1
            if self._exhaustion_retries:
                self._on_recovered()
            if isinstance(request, socket.socket):
                # BSD and macOS hand out accepted sockets with the listener's
                # O_NONBLOCK; re-applying the socket's own timeout makes the
                # descriptor agree with what the handler expects.
                request.settimeout(request.gettimeout())
            dispatch.submit(self, request, client_address)
        if taken:
            self.requests_taken += taken
            self._last_activity = reactor.time()
            if self._calls_service_actions and self._started:
                server.service_actions()

    def _on_exhausted(self, exc: OSError) -> None:
        if self._exhaustion_retries == 0:
            logger.warning(
                "%s: cannot take requests: %s; pausing this listener and retrying "
                "(connections wait in the kernel backlog)", self.name, exc.strerror or exc)
        self._exhaustion_retries += 1
        self.pause(PAUSED_EXHAUSTED)
        self._retry = self.reactor.call_later(self._backoff, self._retry_after_exhaustion)
        self._backoff = min(self._backoff * 2, EXHAUSTION_BACKOFF_MAX)

    def _retry_after_exhaustion(self) -> None:
        self._retry = None
        self.resume(PAUSED_EXHAUSTED)

    def _on_recovered(self) -> None:
        logger.warning("%s: taking requests again after %d retries", self.name, self._exhaustion_retries)
        self._exhaustion_retries = 0
        self._backoff = EXHAUSTION_BACKOFF_MIN

    # -- periodic duties ---------------------------------------------------

    def _periodic_service(self) -> None:
        assert self._service_interval is not None
        # Re-arm first: a service_actions() that raises must not end the schedule.
        self._service_timer = self.reactor.call_later(self._service_interval, self._periodic_service)
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
            if self._started:
                self._arm_idle_timer()


def _overrides(server: Any, name: str) -> bool:
    """True unless ``server.name`` is BaseServer's no-op."""
    method = getattr(type(server), name, None)
    return method is not None and method is not getattr(_stdlib_socketserver.BaseServer, name)


def make_nonblocking(server: Any, fd: int) -> Callable[[], None]:
    """Put the listener in non-blocking mode; return a function that restores its old mode.

    Goes through the server's socket object when it has one, so the object's
    idea of its timeout stays consistent with the descriptor.
    """
    sock = getattr(server, "socket", None)
    if isinstance(sock, socket.socket) and sock.fileno() == fd:
        previous_timeout = sock.gettimeout()
        sock.setblocking(False)

        def restore_socket() -> None:
            if sock.fileno() >= 0:
                sock.settimeout(previous_timeout)

        return restore_socket
    previous_blocking = os.get_blocking(fd)
    os.set_blocking(fd, False)

    def restore_fd() -> None:
        try:
            os.set_blocking(fd, previous_blocking)
        except OSError:
            pass  # already closed by its owner

    return restore_fd
