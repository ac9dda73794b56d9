"""The Reactor: an event loop that hosts socketserver-style servers, and how they leave it.

A :class:`Reactor` is an :class:`~reactor.loop.EventLoop` plus a registry of
hosted servers. Each server is hosted through an *attachment* that its
strategy makes: a per-request :class:`~reactor.accept.Dispatch` (``Inline``,
``ThreadPool``) gets the accept path of ``reactor.accept``; a
:class:`Topology` (``Prefork``) builds a process layout of its own. The
reactor knows attachments only through the :class:`Attachment` protocol and
the loop only through its public API.

Leaving
-------
A server leaves in two phases. ``begin_drain()`` stops taking requests at
once and reports, in the loop's thread, when nothing is in flight;
``abort()`` ends what is still in flight; ``detach()`` releases. So:

1. ``close()`` drains every hosted server *at once*, running the loop
   meanwhile, under one deadline: the longest that any strategy allows (its
   ``drain_timeout`` or ``graceful_timeout``). Calling ``stop()`` during that
   drain, e.g. from a second SIGTERM or SIGINT handler, or a second Ctrl-C
   (KeyboardInterrupt), aborts what is left at once.
2. ``remove_server()`` called outside the loop drains that one server the
   same way before it returns. Called from inside the loop (a callback, an
   inline handler), it stops taking that server's requests at once and
   finishes leaving in the background, so no other server stalls meanwhile.
3. ``shutdown_server()`` (and the ``shutdown()`` of a hosted server) is that
   from any thread: it returns once the server takes no more requests.
"""

from __future__ import annotations

import functools
import logging
import selectors
import socket
import socketserver as _stdlib_socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ._platform import HAS_UNIX_SOCKETS
from ._procinfo import process_info
from ._timers import TimerHandle
from .accept import (
    STATS_GAUGES, Dispatch, HostedServer, HostingOptions, Inline, describe_server, keep_listener_nonblocking,
)
from .admission import AdmissionOptions
from .binding import describe_address
from .loop import EventLoop
from .protocol import BaseProtocol, DatagramProtocol, DatagramServer, StreamServer

if TYPE_CHECKING:
    import ssl

__all__ = ["Attachment", "Reactor", "Topology"]

logger = logging.getLogger(__name__)


class Attachment(Protocol):
    """What a Reactor keeps for each hosted server; made by its strategy."""

    @property
    def server(self) -> Any:
        """The hosted server."""

    @property
    def dispatch(self) -> Dispatch | Topology:
        """The strategy that made this attachment."""

    def start(self) -> None:
        """Begin serving."""

    def begin_drain(self, on_drained: Callable[[], None]) -> float:
        """Stop taking requests now; call ``on_drained()`` in the loop's thread once none is in flight.

        If none is in flight, ``on_drained()`` may run before this returns.

        Returns:
            The seconds the strategy allows before it should be aborted.
        """

    def abort(self) -> None:
        """End whatever is still in flight, without waiting."""

    def detach(self) -> None:
        """Release everything taken from the server and the loop (after draining or aborting)."""

    def stats(self) -> dict[str, Any]:
        """Counters and state of this server's hosting."""


class Topology:
    """Base of strategies that host a server in a process layout of their own (``Prefork``).

    Unlike a per-request :class:`~reactor.accept.Dispatch`, a topology does not
    receive requests from the reactor's accept path: ``attach()`` makes the
    whole attachment.
    """

    def attach(self, reactor: Reactor, server: Any, options: HostingOptions) -> Attachment:
        """Make the attachment that serves ``server`` on ``reactor``."""
        raise NotImplementedError

    def pool_stats(self) -> dict[str, Any] | None:
        """The layout's own part of its server's stats (e.g. worker pids), for ``Reactor.stats()``;
        None if it has none. Keys named here are left out of the server's counters."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _socket_type_for(protocol_factory: Callable[[], BaseProtocol]) -> int:
    """SOCK_DGRAM for a DatagramProtocol class, else SOCK_STREAM."""
    if isinstance(protocol_factory, type) and issubclass(protocol_factory, DatagramProtocol):
        return socket.SOCK_DGRAM
    return socket.SOCK_STREAM


class Reactor(EventLoop):
    """A single-threaded event loop that hosts socketserver-style servers.

    Args:
        selector: the selector to wait on (default: the loop polls epoll itself on Linux,
            ``selectors.DefaultSelector()`` elsewhere; see ``reactor.loop``).
            The reactor owns it and closes it in ``close()``.
        clock: a monotonic clock in seconds (default: ``time.monotonic``). Timers
            are scheduled on it; tests may inject a fake one.

    Thread-safety: ``stop()``, ``call_soon_threadsafe()`` and
    ``shutdown_server()`` may be called from any thread. Everything else
    belongs to the thread that runs the reactor.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(selector, clock)
        self._attachments: dict[int, Attachment] = {}
        #: Removed from inside the loop and still draining: finished in the background.
        self._leaving: dict[int, _Departure] = {}
        self._draining = False
        self._abort_requested = False
        #: The shutdown() given to hosted stdlib servers, to take back on leaving.
        self._shutdown_overrides: dict[int, Callable[[], None]] = {}
        #: Servers close() or an outside remove_server() is draining now (for stats()).
        self._departing: list[_Departure] = []

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._attachments)} servers"
        return f"<Reactor {state}>"

    # -- hosting -------------------------------------------------------------

    def add_server(
        self,
        server: Any,
        dispatch: Dispatch | Topology | None = None,
        *,
        service_interval: float | None = 0.5,
        handle_timeouts: bool = True,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float = 10.0,
        proxy_protocol: str | None = None,
        proxy_trusted: Iterable[str] = (),
        header_timeout: float = 5.0,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        wait_for_data: float | None = None,
        io_timeout: float | None = None,
        keepalive_timeout: float | None = None,
        read_ahead: bool | None = None,
        request_head_timeout: float = 10.0,
        request_body_timeout: float = 10.0,
        request_body_min_rate: int = 1024,
        max_request_head: int = 65536,
        max_request_headers: int = 100,
        max_request_body: int | None = 1 << 30,
        request_body_in_memory: int = 65536,
        write_buffer_in_memory: int = 65536,
        write_buffer_limit: int = 16 << 20,
        send_timeout: float = 10.0,
        send_min_rate: int = 1024,
    ) -> None:
        """Host a socketserver-style server: take and handle its requests when its socket is readable.

        Works with reactor's own servers and with unmodified stdlib ones
        (``socketserver``, ``http.server``, ``xmlrpc.server``). While hosted,
        the server's socket is non-blocking; ``remove_server`` restores it.
        A hosted stdlib server's ``shutdown()`` detaches it (see
        ``shutdown_server``) instead of waiting for a ``serve_forever()`` that
        never runs.

        Args:
            server: a bound, activated server (anything with socketserver's
                ``fileno``/``get_request``/``verify_request``/``process_request``/
                ``handle_error``/``shutdown_request`` hooks).
            dispatch: where requests run: a per-request ``Dispatch`` (default
                ``Inline()``, this thread) or a ``Topology`` (``Prefork``).
            service_interval: seconds between ``service_actions()`` calls when
                the server overrides it (it is also called after each batch
                of requests); None calls it only after requests, like
                ``serve_forever(poll_interval=None)``.
            handle_timeouts: call ``handle_timeout()`` whenever the server has
                a ``timeout`` and that many seconds pass without a request.
                (socketserver's own ``serve_forever`` never does, so its
                drop-in passes False.)

        Connection options, for stream servers (TCP v4/v6, Unix stream; see
        ``reactor.admission``): each new connection is admitted by the loop,
        without blocking and under deadlines, before ``verify_request`` sees it.

        Args:
            ssl_context: serve TLS: the handshake runs in the loop, and the
                handler gets an ``ssl.SSLSocket`` (SNI and ALPN through the context).
            handshake_timeout: seconds a TLS handshake may take.
            proxy_protocol: expect a PROXY protocol header: ``"v1"``, ``"v2"``
                or ``"any"``; then ``client_address`` is the proxied client's.
            proxy_trusted: networks a PROXY header is accepted from (empty: any peer).
            header_timeout: seconds the PROXY header may take.
            allow, deny: networks (``"10.0.0.0/8"``, ``"::1/128"``), or
                ``"uid:N"``/``"gid:N"`` peer credentials on Unix listeners;
                deny wins, and a non-empty allow list refuses everyone else.
            max_connections: open connections at most; at the cap the
                listener pauses and the kernel backlog holds the rest.
            max_connections_per_ip: open connections at most per client IP.
            wait_for_data: hand a connection over only once its client sent
                something, within this many seconds (None: at once).
            io_timeout: the timeout of the handler's socket, so no client holds
                a worker or the loop longer than that. None: 30 s
                (``DEFAULT_INLINE_IO_TIMEOUT``) for a stream handler that runs
                in the loop's thread (``Inline``, where one silent client would
                stop every server on the loop), blocking for the others; 0:
                blocking.
            keepalive_timeout: seconds a connection may wait *parked* between
                two requests, holding no thread (see ``reactor.keepalive``): for
                handlers that expose a request boundary, e.g. unmodified HTTP/1.1
                ``http.server`` handlers. None: ``DEFAULT_KEEPALIVE_TIMEOUT``
                (5 s) under every strategy; 0: off (the handler keeps its
                connection, and its thread, for the connection's whole life).

        Slow clients (see ``reactor.readahead``): for stream servers whose
        handler exposes a request boundary (unmodified ``http.server``
        handlers), the loop reads each request whole before a worker sees it
        and writes the reply behind it, so no client holds a worker longer
        than its handler computes.

        Args:
            read_ahead: None (default) or True: on where the handler exposes a
                boundary; False: the handler reads and writes its socket itself.
            request_head_timeout: seconds from a request's first byte to the
                end of its head; then ``408 Request Timeout`` and close.
            request_body_timeout, request_body_min_rate: in every
                ``request_body_timeout`` seconds the body must bring
                ``request_body_min_rate * request_body_timeout`` bytes (or the
                rest of it); then 408.
            max_request_head: bytes of request line and headers at most (431; 414 for a long line).
            max_request_headers: header fields at most (431).
            max_request_body: body bytes at most (413); None: unlimited.
            request_body_in_memory: body bytes held in memory; the rest is
                spooled to a temporary file until the handler reads it.
            write_buffer_in_memory: reply bytes held in memory; the rest is
                spooled to a temporary file.
            write_buffer_limit: reply bytes buffered at most; above it the
                handler's write blocks until the client took half of them.
            send_timeout, send_min_rate: in every ``send_timeout`` seconds a
                reply waits, the client must take ``send_min_rate * send_timeout``
                bytes of it (or the rest of it), or the connection is closed
                (``send_timeouts``).

        Raises:
            ValueError: the server or its descriptor is already in this reactor.
            TypeError: ``dispatch`` is neither a Dispatch nor a Topology.
            RuntimeError: the reactor is closed.
        """
        if self.closed:
            raise RuntimeError("reactor is closed")
        key = id(server)
        if key in self._attachments or key in self._leaving:
            raise ValueError(f"{describe_server(server)} is already hosted by this reactor")
        fd = server.fileno()
        if self.is_claimed(fd) or self.is_watched(fd):
            raise ValueError(f"descriptor {fd} of {describe_server(server)} is already watched by this reactor")
        admission = AdmissionOptions(
            ssl_context=ssl_context, handshake_timeout=handshake_timeout, proxy_protocol=proxy_protocol,
            proxy_trusted=tuple(proxy_trusted), header_timeout=header_timeout, allow=tuple(allow),
            deny=tuple(deny), max_connections=max_connections, max_connections_per_ip=max_connections_per_ip,
            wait_for_data=wait_for_data, io_timeout=io_timeout, keepalive_timeout=keepalive_timeout,
            read_ahead=read_ahead, request_head_timeout=request_head_timeout,
            request_body_timeout=request_body_timeout, request_body_min_rate=request_body_min_rate,
            max_request_head=max_request_head, max_request_headers=max_request_headers,
            max_request_body=max_request_body, request_body_in_memory=request_body_in_memory,
            write_buffer_in_memory=write_buffer_in_memory, write_buffer_limit=write_buffer_limit,
            send_timeout=send_timeout, send_min_rate=send_min_rate)
        options = HostingOptions(service_interval=service_interval, handle_timeouts=handle_timeouts,
                                 admission=admission)
        strategy = dispatch if dispatch is not None else Inline()
        attachment: Attachment
        if isinstance(strategy, Topology):
            attachment = strategy.attach(self, server, options)
        elif isinstance(strategy, Dispatch):
            attachment = HostedServer(self, server, strategy, options,
                                      on_listener_failed=functools.partial(self.remove_server, server))
        else:
            raise TypeError(f"dispatch must be a Dispatch or a Topology, not {type(strategy).__name__}")
        self._attachments[key] = attachment
        try:
            attachment.start()
        except BaseException:
            del self._attachments[key]
            attachment.detach()
            raise
        if getattr(type(server), "shutdown", None) is _stdlib_socketserver.BaseServer.shutdown:
            # An unmodified stdlib server's shutdown() waits for its own
            # serve_forever() to end, which never runs here: it would block
            # forever (and deadlock this loop from a handler).
            override = functools.partial(self.shutdown_server, server)
            server.shutdown = override
            self._shutdown_overrides[key] = override

    def create_server(
        self,
        protocol_factory: Callable[[], BaseProtocol],
        address: Any,
        *,
        family: int | None = None,
        type: int | None = None,
        dispatch: Dispatch | Topology | None = None,
        backlog: int = socket.SOMAXCONN,
        reuse_port: bool = False,
        drain_timeout: float = 30.0,
        mode: int | None = None,
        max_packet_size: int = 65535,
        **options: Any,
    ) -> StreamServer | DatagramServer:
        """Listen on ``address`` and serve it with event-driven protocols (``reactor.protocol``).

        A stream server makes one ``protocol_factory()`` per connection (a
        :class:`~reactor.protocol.Protocol`); a datagram server makes one for
        the socket (a :class:`~reactor.protocol.DatagramProtocol`). Every
        callback runs in this reactor's thread. The server is hosted like
        any other: ``remove_server()`` takes it, and ``options`` are
        ``add_server``'s keywords (TLS, PROXY protocol, access rules, limits,
        deadlines; stream servers only).

        Args:
            protocol_factory: makes a protocol (a class, or any callable).
            address: ``(host, port)`` (an IPv6 host selects AF_INET6), a Unix
                socket path (str or bytes; ``"\\0name"`` for Linux's abstract
                namespace).
            family: the address family, where the address leaves it open.
            type: ``socket.SOCK_STREAM`` or ``socket.SOCK_DGRAM``; default:
                datagram when ``protocol_factory`` is a ``DatagramProtocol``
                subclass, else stream.
            dispatch: ``None`` (the loop's thread) or a ``Topology``
                (``Prefork``: every worker process serves connections with its
                own loop). A thread pool has nothing to do here: protocols
                never block (framed message handlers run on pools).
            backlog: the listen backlog (stream).
            reuse_port: set ``SO_REUSEPORT``.
            drain_timeout: seconds connections get to flush and close when the
                server leaves (stream).
            mode: permissions of a Unix socket file.
            max_packet_size: the largest datagram taken; larger ones are
                dropped and counted, never cut (datagram).

        Returns:
            The server (a ``StreamServer`` or ``DatagramServer``), already hosted.

        Raises:
            OSError: the address cannot be bound (the message names it).
            ValueError: a ``dispatch`` that is a thread pool, or options that
                do not apply.
        """
        if isinstance(dispatch, Dispatch) and not dispatch.runs_in_loop_thread:
            raise ValueError(f"protocols run in the loop's thread: dispatch must be None or a Topology, "
                             f"not {dispatch!r}")
        if family is None:
            family = socket.AF_UNIX if isinstance(address, (str, bytes)) else socket.AF_INET
        sock_type = _socket_type_for(protocol_factory) if type is None else type
        server: StreamServer | DatagramServer
        if sock_type == socket.SOCK_DGRAM:
            server = DatagramServer(protocol_factory, address, family=family, reuse_port=reuse_port,  # type: ignore[arg-type]
                                    max_packet_size=max_packet_size, mode=mode)
        else:
            server = StreamServer(protocol_factory, address, family=family, backlog=backlog,  # type: ignore[arg-type]
                                  reuse_port=reuse_port, drain_timeout=drain_timeout, mode=mode)
        try:
            self.add_server(server, dispatch, **options)
        except BaseException:
            server.server_close()
            raise
        return server

    def remove_server(self, server: Any, *, on_removed: Callable[[], object] | None = None) -> None:
        """Stop hosting ``server`` and hand it back unclosed, its socket mode restored.

        Outside the loop, its requests in flight are drained first (see the
        module docstring: ``stop()`` meanwhile aborts them). From inside the
        loop, it takes no more requests from this moment and finishes leaving
        in the background, so the other servers never wait for it.

        Args:
            on_removed: called once the server has left (at once when nothing
                was in flight); e.g. to ``server_close()`` it, which frees its
                address only when no request of it is open any more.

        Raises:
            KeyError: the server is not hosted here.
        """
        attachment = self._attachments.pop(id(server), None)
        if attachment is None:
            raise KeyError(f"{describe_server(server)} is not hosted by this reactor")
        self._restore_shutdown(server)
        if self.in_loop():
            self._leave_in_background(attachment, on_removed)
        else:
            self._leave([attachment])
            if on_removed is not None:
                on_removed()

    def shutdown_server(self, server: Any) -> None:
        """Stop serving ``server`` from any thread, as ``shutdown()`` stops ``serve_forever()``.

        Returns once the server takes no more requests; requests in flight
        finish in the background (within the strategy's drain timeout), the
        other servers keep serving, and the server is handed back unclosed.
        From the loop's own thread (a handler), or from a worker thread of the
        server's own strategy, it returns at once. Does nothing if the server
        is not hosted here.

        Thread-safety: safe from any thread.
        """
        if self.in_loop():
            if id(server) in self._attachments:
                self.remove_server(server)
            return
        attachment = self._attachments.get(id(server))
        if attachment is None or self.closed:
            return
        removed = threading.Event()

        def remove() -> None:
            try:
                if id(server) in self._attachments:
                    self.remove_server(server)
            finally:
                removed.set()

        try:
            self.call_soon_threadsafe(remove)
        except RuntimeError:
            return  # closed meanwhile: nothing is served any more
        strategy = attachment.dispatch
        if isinstance(strategy, Dispatch) and strategy.owns_current_thread():
            return  # one of its own workers: the drain waits for us, so we must not wait for it
        # Wait while someone runs the loop; if nobody does, the removal runs
        # at its next tick and nothing is taken before it.
        while not removed.wait(0.05) and self.running:
            pass

    def attachment_of(self, server: Any) -> Attachment:
        """The attachment hosting ``server`` (a ``HostedServer`` for a per-request dispatch).

        Raises:
            KeyError: the server is not hosted here.
        """
        attachment = self._attachments.get(id(server))
        if attachment is None:
            raise KeyError(f"{describe_server(server)} is not hosted by this reactor")
        return attachment

    def dispatch_of(self, server: Any) -> Dispatch | Topology:
        """The dispatch strategy ``server`` is hosted with.

        Raises:
            KeyError: the server is not hosted here.
        """
        return self.attachment_of(server).dispatch

    def server_stats(self, server: Any) -> dict[str, Any]:
        """Counters of ``server``'s hosting, one shape for every strategy.

        ``Inline`` and ``ThreadPool`` give ``HostedServer.stats()``: requests
        taken, requests lost before they were taken (``dropped``), datagram
        replies lost, exhaustion pauses, ``io_timeouts``; with connection
        options also ``admitted``, ``refused_by_rule``, ``refused_by_limit``,
        ``proxy_errors``, ``tls_failures``, ``timeouts``, ``closed_early`` and
        the gauges ``open`` and ``admitting`` (``accept.STATS_GAUGES``). Every
        key is present, zero until it happens. ``Prefork`` gives the same keys
        summed over its workers (counters never go backwards when a worker is
        replaced; gauges count the live workers), as last reported with their
        heartbeats, plus the pool's own keys ``workers``, ``pids``, ``ready``,
        ``arbiter`` and ``spawned`` (see ``Prefork.stats()``). Returns at
        once: it never waits for another thread or process.

        Raises:
            KeyError: the server is not hosted here.
        """
        return self.attachment_of(server).stats()

    @property
    def servers(self) -> list[Any]:
        """The hosted servers, in the order they were added."""
        return [attachment.server for attachment in self._attachments.values()]

    def stats(self) -> dict[str, Any]:
        """One snapshot of everything this reactor hosts, and of its process; JSON-serialisable.

        ``{"time": ..., "process": {...}, "servers": [...]}``:

        - ``time``: the wall-clock time of the snapshot (Unix seconds).
        - ``process``: ``pid``, ``uptime`` (seconds), ``fds`` (open
          descriptors), ``threads`` (Python threads) and ``rss`` (resident
          bytes); ``fds`` and ``rss`` are None where the system does not tell.
        - ``servers``: one entry per server, hosted or still draining, in the
          order they were added:

          - ``name`` (class and address, as logs say it), ``address`` (e.g.
            ``tcp 127.0.0.1:8000``, ``unix /run/app.sock``), ``family``
            (``inet``, ``inet6``, ``unix``), ``type`` (``stream``,
            ``datagram``), and ``host``/``port`` or ``path`` where they apply;
            None for what a server without a socket does not say.
          - ``strategy``: the strategy's repr, e.g. ``ThreadPool(max_workers=4, max_pending=4)``.
          - ``state``: ``serving``, ``paused`` (see ``paused``: why the
            listener is out of the selector, e.g. ``saturated``,
            ``max_connections``, ``exhausted``) or ``draining`` (leaving).
          - ``active``: requests or connections in flight now, as well as the
            strategy knows: connections open (with connection options),
            requests running on a thread pool, a protocol server's
            connections; None where nobody counts them.
          - ``counters`` and ``gauges``: every key of ``server_stats()``
            (gauges named by ``accept.STATS_GAUGES``), integers.
          - ``accept_errors``: errors met while taking requests, by errno name
            (``{}`` under a topology: its workers take the requests).
          - ``truncated_datagrams``: datagrams dropped as larger than the
            server's ``max_packet_size``, for reactor's datagram servers
            (counted in this process: None under a topology), else None.
          - ``pool``: the strategy's own numbers: ``ThreadPool.stats()``
            (threads, idle, running, queued, done), a topology's
            ``pool_stats()`` (for ``Prefork``: workers, pids, ready, arbiter,
            spawned, restarts, last_exit), or None.

        Returns at once: it never waits for another thread or process.

        Thread-safety: call it from the loop's thread (a callback, a handler
        run inline, or ``call_soon_threadsafe`` from elsewhere).
        """
        entries: list[tuple[Attachment, str]] = [(a, "hosted") for a in self._attachments.values()]
        entries += [(d.attachment, "draining") for d in self._departing]
        entries += [(d.attachment, "draining") for d in self._leaving.values()]
        return {"time": round(time.time(), 3), "process": process_info(),
                "servers": [_server_snapshot(attachment, draining=where == "draining")
                            for attachment, where in entries]}

    # -- leaving -------------------------------------------------------------

    def _restore_shutdown(self, server: Any) -> None:
        override = self._shutdown_overrides.pop(id(server), None)
        if override is not None and vars(server).get("shutdown") is override:
            del server.shutdown

    def stop(self) -> None:
        """Ask ``serve_forever()`` to return; no request is taken from now on.

        While ``close()`` or ``remove_server()`` drains servers, it aborts
        what is still in flight instead (a second SIGTERM means "now").

        Thread-safety: safe from any thread, from a handler and from a signal
        handler; never blocks; idempotent.
        """
        if self._draining:
            self._abort_requested = True
        super().stop()

    def close(self, *, restore_listeners: bool = True) -> None:
        """Drain every hosted server at once, then ``server_close()`` each; drop timers; close the selector.

        Hosting transfers ownership, so servers still hosted are closed; use
        ``remove_server()`` first to keep one. Servers removed from inside the
        loop that are still draining finish (or are aborted) here, unclosed.
        Idempotent.

        Args:
            restore_listeners: give each hosted listener back the blocking mode
                it had before it was hosted (the default). False leaves them
                non-blocking: for listeners another process serves too, e.g. a
                new master that inherited them in a whole-process upgrade
                (``O_NONBLOCK`` lives in the open file description both
                processes share, so restoring it here would make the other's
                ``accept()`` block). See :func:`reactor.accept.keep_listener_nonblocking`.

        Raises:
            RuntimeError: the reactor is running.
        """
        if self.closed:
            return
        if self.running:
            raise RuntimeError("cannot close a running reactor; stop() it first")
        hosted = list(self._attachments.values())
        if not restore_listeners:
            for attachment in [*hosted, *(departure.attachment for departure in self._leaving.values())]:
                keep_listener_nonblocking(attachment.server)
        self._attachments.clear()
        for attachment in hosted:
            self._restore_shutdown(attachment.server)
        try:
            self._leave(hosted)
        finally:
            for attachment in hosted:
                try:
                    attachment.server.server_close()
                except Exception:  # keep closing the rest
                    logger.exception("%s: server_close() failed", describe_server(attachment.server))
            super().close()

    def _leave(self, attachments: list[Attachment]) -> None:
        """Drain ``attachments``, and any still leaving in the background, together under one
        deadline while running the loop; abort what is left at the deadline or on ``stop()``."""
        departures: list[_Departure] = []
        for departure in self._leaving.values():
            departure.then = None
            if departure.timer is not None:
                departure.timer.cancel()
            departures.append(departure)
        self._leaving.clear()
        self._draining = True
        self._abort_requested = False
        try:
            # Begun inside the try: an interrupt (Ctrl-C) while they begin
            # still aborts and detaches every one that began.
            for attachment in attachments:
                departures.append(self._begin_departure(attachment))
            self._departing = departures
            if departures:
                deadline = max(departure.deadline for departure in departures)
                self.run_until(lambda: self._abort_requested or all(d.drained for d in departures),
                               max(deadline - self.time(), 0.0))
        finally:
            self._draining = False
            self._departing = []
            for departure in departures:
                if not departure.drained:
                    departure.attachment.abort()
            for departure in departures:
                departure.attachment.detach()
            for departure in departures:
                if departure.on_removed is not None:
                    departure.on_removed()

    def _leave_in_background(self, attachment: Attachment, on_removed: Callable[[], object] | None) -> None:
        key = id(attachment.server)
        departure = self._begin_departure(attachment)
        departure.on_removed = on_removed
        self._leaving[key] = departure

        def finish() -> None:
            if self._leaving.pop(key, None) is not departure:
                return  # close() took it over
            if departure.timer is not None:
                departure.timer.cancel()
            try:
                if not departure.drained:
                    attachment.abort()
                attachment.detach()
            finally:
                if on_removed is not None:
                    on_removed()

        if departure.drained:
            finish()
            return
        departure.then = finish
        departure.timer = self.call_at(departure.deadline, finish)

    def _begin_departure(self, attachment: Attachment) -> _Departure:
        departure = _Departure(attachment)
        departure.deadline = self.time() + attachment.begin_drain(departure.set_drained)
        return departure


def _server_snapshot(attachment: Attachment, *, draining: bool) -> dict[str, Any]:
    """One server's entry in ``Reactor.stats()``."""
    server = attachment.server
    strategy = attachment.dispatch
    snapshot: dict[str, Any] = {"name": describe_server(server), **_where(server), "strategy": repr(strategy)}
    pool: dict[str, Any] | None = None
    if isinstance(strategy, Topology):
        pool = strategy.pool_stats()
    else:
        strategy_stats = getattr(strategy, "stats", None)
        if callable(strategy_stats):
            pool = dict(strategy_stats())
    counts = attachment.stats()
    paused: list[str] = []
    accept_errors: dict[str, int] = {}
    truncated: int | None = None
    if isinstance(attachment, HostedServer):
        paused = sorted(str(getattr(reason, "value", reason)) for reason in attachment.pause_reasons)
        accept_errors = attachment.accept_errors
        count = getattr(server, "truncated_datagrams", None)
        sock = getattr(server, "socket", None)
        if isinstance(count, int) and isinstance(sock, socket.socket) and sock.type == socket.SOCK_DGRAM:
            truncated = count
    numbers = {key: value for key, value in counts.items()
               if isinstance(value, int) and not isinstance(value, bool) and key not in (pool or {})}
    active: int | None = numbers.get("open")
    if active is None and pool is not None and isinstance(pool.get("running"), int):
        active = pool["running"]
    transports = getattr(server, "transports", None)
    if active is None and isinstance(transports, (set, frozenset)):
        active = len(transports)
    if draining or "draining" in paused:
        state = "draining"
    elif paused:
        state = "paused"
    else:
        state = "serving"
    snapshot.update(
        state=state, paused=[reason for reason in paused if reason != "draining"], active=active,
        counters={key: value for key, value in numbers.items() if key not in STATS_GAUGES},
        gauges={key: value for key, value in numbers.items() if key in STATS_GAUGES},
        accept_errors=accept_errors, truncated_datagrams=truncated, pool=pool)
    return snapshot


_FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}
if HAS_UNIX_SOCKETS:
    _FAMILIES[socket.AF_UNIX] = "unix"


def _where(server: Any) -> dict[str, Any]:
    """``address``, ``family``, ``type`` and ``host``/``port`` or ``path`` of a server's socket."""
    sock = getattr(server, "socket", None)
    if not isinstance(sock, socket.socket) or sock.fileno() < 0:
        address = getattr(server, "server_address", None)
        return {"address": None if address is None else str(address), "family": None, "type": None}
    address = sock.getsockname()
    where: dict[str, Any] = {"address": describe_address(sock.family, sock.type, address),
                             "family": _FAMILIES.get(sock.family, str(sock.family)),
                             "type": "datagram" if sock.type == socket.SOCK_DGRAM else "stream"}
    if isinstance(address, tuple) and len(address) >= 2:
        where.update(host=str(address[0]), port=int(address[1]))
    elif isinstance(address, (str, bytes)):
        path = address.decode("utf-8", "backslashreplace") if isinstance(address, bytes) else address
        where["path"] = "@" + path[1:] if path.startswith("\0") else path
    return where


class _Departure:
    """One server leaving: drained yet, by when, and what to do once it is."""

    def __init__(self, attachment: Attachment) -> None:
        self.attachment = attachment
        self.drained = False
        self.deadline = 0.0
        self.then: Callable[[], None] | None = None
        self.timer: TimerHandle | None = None
        #: What remove_server() was asked to call once the server has left.
        self.on_removed: Callable[[], object] | None = None

    def set_drained(self) -> None:
        self.drained = True
        if self.then is not None:
            self.then()
