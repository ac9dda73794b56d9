"""Parking: a keep-alive connection waits in the loop between its requests, holding no thread.

A socketserver handler owns its connection from ``setup()`` to ``finish()``;
an HTTP/1.1 handler spends most of that time waiting for the client's next
request, and on a bounded pool every such wait holds a worker (a few idle
keep-alive clients deny service to everybody else). When a handler exposes
its *request boundary*, the reactor drives it one request at a time instead:

1. The first request runs as usual (``setup()``, then one request), on the
   server's dispatch strategy.
2. If the handler wants the connection kept (``close_connection`` is false),
   ``finish()`` is deferred and the connection is *parked*: its socket waits
   in the selector under ``keepalive_timeout``, costing a descriptor and a
   few hundred bytes, no thread and no process.
3. When the client sends its next request, the connection is dispatched
   again, to any free worker, which runs one more request on the same handler
   instance (its ``rfile`` buffer, attributes and TLS session intact).
4. When the handler sets ``close_connection``, raises, or the connection
   stays idle past ``keepalive_timeout`` (or the server leaves), ``finish()``
   runs and the request is shut down, as socketserver would.

Which handlers expose a boundary
--------------------------------
Those whose ``handle()`` is one of the known request loops, so that running
``handle_one_request()`` once per dispatch is exactly what ``handle()`` would
have done:

* ``http.server.BaseHTTPRequestHandler.handle`` (every unmodified
  ``http.server`` and ``xmlrpc.server`` handler; with
  ``protocol_version = "HTTP/1.0"``, the default, each connection carries one
  request and nothing is ever parked);
* :class:`RequestLoop`'s ``handle()``, the documented hook for handlers of
  other protocols: subclass it, implement ``handle_one_request()``, and set
  ``self.close_connection = True`` to end the connection.

A handler that overrides ``handle()`` keeps its connection for its whole life,
as in the stdlib. So does any server that overrides ``process_request()`` or
``finish_request()`` (``ThreadingMixIn``, ``ForkingMixIn``): the reactor can
only drive the handler when it builds it the way ``BaseServer`` does.

When the server reads requests ahead (``reactor.readahead``, on by default
for handlers whose request boundary the loop can see), a kept connection's
next request is read whole by the loop, and only then handed to a worker.

No request is stranded
----------------------
Bytes the client already sent may sit in the handler's ``rfile`` buffer or in
OpenSSL, where the selector cannot see them (a pipelined request). Before
parking, the socket is made non-blocking and both buffers are checked; a
request already there is dispatched again at once instead of parked.
"""

from __future__ import annotations

import functools
import io
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from ._timers import TimerHandle
from .loop import EventLoop

__all__ = ["DEFAULT_KEEPALIVE_TIMEOUT", "KeptConnection", "Parking", "RequestLoop", "parking_factory"]

logger = logging.getLogger(__name__)

#: Seconds a parked connection may stay idle when ``Reactor.add_server`` is not told otherwise.
DEFAULT_KEEPALIVE_TIMEOUT = 5.0

#: Set on a handler instance when its last request asked to keep the connection.
_KEPT = "_reactor_kept"


class RequestLoop:
    """Mixin for a stream handler whose protocol has request boundaries, so the reactor can park it.

    Implement ``handle_one_request()``: read and answer one request from
    ``self.rfile``/``self.wfile``, and set ``self.close_connection = True``
    when the connection should end (the client closed it, or the protocol
    says so). ``handle()`` calls it until then, which is what runs when the
    handler is not hosted by a reactor (or parking is off); on a reactor the
    connection waits in the loop between two calls, holding no thread.

    Give the class a ``request_boundary`` too (a callable returning a fresh
    ``reactor.readahead.RequestBoundary``) and the loop reads each request
    whole before the handler runs, so a client that trickles its request
    holds no thread either (``reactor.readahead``).

    Example::

        class Upper(RequestLoop, socketserver.StreamRequestHandler):
            def handle_one_request(self):
                line = self.rfile.readline()
                if not line:
                    self.close_connection = True
                    return
                self.wfile.write(line.upper())
    """

    #: False until the handler (or its client) ends the connection.
    close_connection: bool = False

    def handle_one_request(self) -> None:
        """Serve one request; set ``close_connection`` to end the connection."""
        raise NotImplementedError

    def handle(self) -> None:
        """Serve requests until ``close_connection`` is set."""
        self.close_connection = False
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()


def _known_request_loops() -> dict[Any, bool]:
    """The ``handle`` functions known to loop over ``handle_one_request()``, each with the
    ``close_connection`` value it sets before the first request."""
    loops: dict[Any, bool] = {RequestLoop.handle: False}
    http_server = sys.modules.get("http.server")  # a handler of it implies it was imported
    if http_server is not None:
        loops[http_server.BaseHTTPRequestHandler.handle] = True
    return loops


def parking_factory(factory: Any) -> Callable[..., Any] | None:
    """The parking variant of a server's ``RequestHandlerClass``, or None if its handler
    does not expose a request boundary (see the module docstring).

    ``factory`` may be a handler class or a ``functools.partial`` of one (as
    ``http.server`` documents for ``SimpleHTTPRequestHandler``'s ``directory``).
    The variant is a new subclass with the same name whose ``handle()`` runs
    one request and whose ``finish()`` waits until the connection really ends
    (the caller keeps it: ``HostedServer`` makes one per server).
    """
    if isinstance(factory, functools.partial):
        inner = parking_factory(factory.func)
        if inner is None:
            return None
        return functools.partial(inner, *factory.args, **factory.keywords)
    if not isinstance(factory, type):
        return None
    initial = _known_request_loops().get(getattr(factory, "handle", None))
    return None if initial is None else _make_parking_class(factory, initial)


def _make_parking_class(cls: type, initial: bool) -> type:
    def handle(self: Any) -> None:
        self.close_connection = initial
        self.handle_one_request()
        setattr(self, _KEPT, not self.close_connection)

    def finish(self: Any) -> None:
        if getattr(self, _KEPT, False):
            return  # the connection is kept: finish() runs when it ends
        cls.finish(self)  # type: ignore[attr-defined]

    namespace = {"handle": handle, "finish": finish, "__module__": cls.__module__,
                 "__qualname__": cls.__qualname__, "__doc__": cls.__doc__, "_reactor_base": cls}
    return type(cls)(cls.__name__, (cls,), namespace)


class KeptConnection:
    """A connection whose handler asked to keep it, between two of its requests.

    Attributes:
        handler: the handler instance serving it (``setup()`` ran, ``finish()`` not yet).
        request: the socket, as ``process_request`` received it.
        client_address: the client's address.
    """

    __slots__ = ("handler", "request", "client_address", "_timeout", "timer", "fd")

    def __init__(self, handler: Any, request: socket.socket, client_address: Any) -> None:
        self.handler = handler
        self.request = request
        self.client_address = client_address
        self._timeout: float | None = None
        self.timer: TimerHandle | None = None
        self.fd = -1

    @staticmethod
    def kept(handler: Any) -> bool:
        """True when ``handler``'s last request asked to keep its connection."""
        return bool(getattr(handler, _KEPT, False))

    def suspend(self) -> bool:
        """Make the socket non-blocking for parking; True if a next request is already buffered
        (in the handler's ``rfile`` or in TLS), so it must be dispatched at once."""
        sock = self.request
        self._timeout = sock.gettimeout()
        sock.setblocking(False)
        self.fd = sock.fileno()
        pending = getattr(sock, "pending", None)  # ssl.SSLSocket: decrypted bytes OpenSSL holds
        if pending is not None and pending():
            return True
        rfile = getattr(self.handler, "rfile", None)
        if isinstance(rfile, io.BufferedReader) and not rfile.closed:
            try:
                # Returns what is buffered without reading; with an empty buffer it
                # makes one non-blocking read, so bytes sent meanwhile are found too.
                return bool(rfile.peek(1))
            except OSError as exc:
                return not _is_want_io(exc)  # a reset: let the handler see it
        return False

    def remember_timeout(self) -> None:
        """Note the socket's timeout, for ``resume()`` (when something other than ``suspend()``
        waits for the next request: ``reactor.readahead``)."""
        self._timeout = self.request.gettimeout()

    def resume(self) -> None:
        """Give the socket back the timeout it had when it was parked (before the next request)."""
        self.request.settimeout(self._timeout)

    def serve_next(self) -> bool:
        """Run one more request on the handler; True if the connection is to be kept."""
        self.handler.handle_one_request()
        return not self.handler.close_connection

    def finish(self) -> None:
        """Run the handler's own ``finish()``, which its last request deferred."""
        handler = self.handler
        setattr(handler, _KEPT, False)
        handler.finish()


def _is_want_io(exc: OSError) -> bool:
    """True for TLS's 'would block' errors on a non-blocking socket."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError))


class Parking:
    """The parked connections of one server, on its loop (see the module docstring).

    Args:
        loop: the loop the server is hosted on.
        timeout: seconds a parked connection may stay idle.
        resume: called in the loop's thread with a connection whose next
            request has arrived (to hand it to the dispatch strategy).
        close: called in the loop's thread with a connection to end unserved
            (idle past the timeout, or the server is leaving).
        counts: the server's counters; ``resumed`` and ``keepalive_expired`` are
            incremented here.

    Thread-safety: ``hold()`` may be called from any thread; everything else
    runs in the loop's thread.
    """

    def __init__(self, loop: EventLoop, timeout: float, resume: Callable[[KeptConnection], None],
                 close: Callable[[KeptConnection], None], counts: dict[str, int]) -> None:
        self._loop = loop
        self._timeout = timeout
        self._resume = resume
        self._close = close
        self._counts = counts
        self._parked: dict[int, KeptConnection] = {}
        self._closing = False
        counts.setdefault("resumed", 0)
        counts.setdefault("keepalive_expired", 0)

    @property
    def timeout(self) -> float:
        """Seconds a parked connection may stay idle."""
        return self._timeout

    @property
    def parked(self) -> int:
        """Connections waiting in the loop for their next request now."""
        return len(self._parked)

    def hold(self, conn: KeptConnection) -> None:
        """Take a connection whose request just ended and whose handler keeps it."""
        try:
            buffered = conn.suspend()
        except OSError:
            buffered = True  # the socket broke: the handler's next read will say how
        step = self._dispatch_again if buffered else self._park
        if self._loop.in_loop():
            # Even inline, a buffered request waits for the next tick, so a
            # pipelining client takes turns with every other server.
            if buffered:
                self._loop.call_soon(step, conn)
            else:
                step(conn)
            return
        try:
            self._loop.call_soon_threadsafe(step, conn)
        except RuntimeError:  # the loop closed meanwhile: nobody will serve it
            self._close(conn)

    def close_all(self) -> None:
        """End every parked connection, and any parked from now on (the server is leaving)."""
        self._closing = True
        for conn in list(self._parked.values()):
            self._unpark(conn)
            self._close(conn)

    # -- in the loop's thread ------------------------------------------------

    def _park(self, conn: KeptConnection) -> None:
        if self._closing or self._loop.closed:
            self._close(conn)
            return
        self._parked[conn.fd] = conn
        conn.timer = self._loop.call_later(self._timeout, self._expire, conn)
        self._loop.add_reader(conn.fd, self._on_readable, conn)

    def _dispatch_again(self, conn: KeptConnection) -> None:
        if self._closing:
            self._close(conn)
            return
        self._counts["resumed"] += 1
        self._resume(conn)

    def _on_readable(self, conn: KeptConnection) -> None:
        self._unpark(conn)
        self._dispatch_again(conn)

    def _expire(self, conn: KeptConnection) -> None:
        conn.timer = None
        self._unpark(conn)
        self._counts["keepalive_expired"] += 1
        self._close(conn)

    def _unpark(self, conn: KeptConnection) -> None:
        self._parked.pop(conn.fd, None)
        self._loop.remove_reader(conn.fd)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
