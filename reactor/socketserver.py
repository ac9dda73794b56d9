"""Drop-in replacement for the standard library's ``socketserver``.

``from reactor import socketserver`` instead of ``import socketserver``: every
name in the stdlib module's ``__all__`` is here, the server classes subclass
the stdlib ones (``isinstance`` checks hold), the request handler classes are
the stdlib's own objects, every hook is called in the same order and every
class attribute (``address_family``, ``socket_type``, ``allow_reuse_address``,
``allow_reuse_port``, ``request_queue_size``, ``max_packet_size``, ``timeout``)
is honoured. Names this module does not define are looked up in the stdlib
module, so even private helpers keep resolving.

What differs, on purpose:

* ``serve_forever()`` runs on a private :class:`reactor.Reactor` woken by a
  socketpair, so ``shutdown()`` returns within milliseconds instead of up to
  ``poll_interval`` later, and ``shutdown()`` called from the serving thread
  (a handler, ``service_actions``) returns at once instead of deadlocking.
  ``shutdown()`` before ``serve_forever()`` starts makes it return at once,
  as in the stdlib, but does not block waiting for it.
* No request is taken after ``shutdown()`` is called.
* Accept errors follow reactor's policy: EMFILE/ENFILE/ENOBUFS/ENOMEM pause
  the listener and retry on a timer, logged once per burst, where the stdlib
  spins at 100% CPU without a word. A hook that raises (even
  ``verify_request``) goes to ``handle_error`` instead of killing the loop.
* TCP and UDP servers accept IPv6 addresses (``("::1", 0)``) without a
  subclass that sets ``address_family``.
* UDP: ``max_packet_size`` defaults to 65535, which holds any UDP datagram; a
  datagram larger than the buffer is dropped, logged and counted in
  ``truncated_datagrams``, never handed to the handler cut short.
* Unix sockets: a stale socket file left by a dead process is replaced; a path
  where a live server answers (or that is not a socket) is refused with a
  clear error; ``server_close()`` unlinks the path if it is still the socket
  this server bound, and only in the process that bound it; Linux abstract
  names (``"\\0name"``) touch no file; the ``mode`` keyword sets the file's
  permissions.
* Bind errors name the address (``Address already in use: cannot bind tcp4
  127.0.0.1:8000``), with the same exception type and errno as before.
* Every server takes a keyword-only ``dispatch`` strategy (see
  :mod:`reactor.dispatch`) used by ``serve_forever()``, and stream servers a
  keyword-only ``connection_options=AdmissionOptions(...)`` (TLS, PROXY protocol,
  access rules, limits, deadlines; see :mod:`reactor.admission`).
* Hosted with a ``dispatch`` (or on a Reactor), a keep-alive connection whose
  handler exposes a request boundary (an HTTP/1.1 ``http.server`` handler, or
  :class:`RequestLoop`, importable from here) is parked in the loop between
  requests, holding no thread (see :mod:`reactor.keepalive`). Without
  ``dispatch``, ``serve_forever()`` keeps the stdlib's one connection per
  handler call unless ``connection_options`` sets ``keepalive_timeout``.
* Under the same conditions, the loop reads each request of such a handler
  whole before it runs, and writes its reply behind it, so a slow client
  holds no worker (see :mod:`reactor.readahead`): the handler's
  ``self.request`` is then a :class:`reactor.buffered.ConnectionSocket`, which
  answers as a socket does. Without ``dispatch``, ``serve_forever()`` leaves
  the handler its socket unless ``connection_options`` sets ``read_ahead``.
* Framed message handlers (:class:`MessageRequestHandler`,
  :class:`LineRequestHandler`, :class:`LengthPrefixedRequestHandler`, and
  :class:`FrameError`, importable from here; see :mod:`reactor.framing`)
  are served a message at a time by the loop under the same conditions, and
  block on their connection, as any handler, otherwise.
* ``request_queue_size`` (the listen backlog of TCP and Unix stream servers)
  defaults to ``socket.SOMAXCONN`` instead of 5: connections that arrive
  while the loop is busy, or while a full ``ThreadPool`` has paused accepting,
  wait in the kernel backlog, and 5 overflows with a few dozen concurrent
  clients (``ab -c 50`` stalls on SYN retries). The kernel caps it at
  ``net.core.somaxconn``. A subclass's or an instance's own value is used as is.
* While ``serve_forever()`` runs (or a Reactor hosts the server), the
  listening socket is non-blocking; its mode is restored afterwards.
* Requests are taken in batches until the kernel has none left, so each
  batch ends with one ``get_request()`` call that raises ``BlockingIOError``
  (handled quietly), and ``service_actions()`` runs once after a batch
  rather than after every request.
* ``ThreadingMixIn`` forgets finished threads at once; ``ForkingMixIn`` reaps
  children as they exit, waits only for its own, and pauses accepting at
  ``max_children`` instead of blocking the loop.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver as _std
import sys
import threading
from typing import Any, Callable, Protocol

from ._errors import AcceptOutcome, RequestDropped, classify_accept_error
from ._platform import HAS_FORK, HAS_RECVMSG_TRUNC, HAS_UNIX_SOCKETS, pidfd_available
from .accept import Dispatch, HostedServer, PauseReason, describe_server, process_request_safely
from .admission import AdmissionOptions
from .binding import UnixSocketPath, bind_socket, family_for_address
from .hosting import Reactor, Topology
from .framing import FrameError as FrameError
from .framing import LengthPrefixedRequestHandler as LengthPrefixedRequestHandler
from .framing import LineRequestHandler as LineRequestHandler
from .framing import MessageRequestHandler as MessageRequestHandler
from .keepalive import RequestLoop as RequestLoop

# Exactly the stdlib's names (reactor's additions, such as RequestLoop and the framed
# handlers, are importable but not starred).
__all__ = list(_std.__all__)

logger = logging.getLogger(__name__)

BaseRequestHandler = _std.BaseRequestHandler
StreamRequestHandler = _std.StreamRequestHandler
DatagramRequestHandler = _std.DatagramRequestHandler


class _ThreadList(Protocol):
    """What ``ThreadingMixIn._threads`` is: the stdlib's ``_NoThreads`` or a ``_Threads``."""

    def append(self, thread: threading.Thread) -> None: ...

    def join(self) -> None: ...


class _Threads(list[threading.Thread]):
    """The running non-daemon request threads of one server (its ``_threads``).

    The stdlib's ``_Threads`` list, with the same methods (``append``,
    ``pop_all``, ``join``, ``reap``), plus ``discard``: a request thread
    removes itself as it ends, so the list holds only live threads.

    Thread-safety: every method may be called from any thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def append(self, thread: threading.Thread) -> None:
        """Remember ``thread`` unless it is a daemon thread."""
        if thread.daemon:
            return
        with self._lock:
            super().append(thread)

    def discard(self, thread: threading.Thread) -> None:
        """Forget ``thread`` if it is here."""
        with self._lock:
            if thread in self:
                super().remove(thread)

    def pop_all(self) -> list[threading.Thread]:
        """Forget every thread and return them."""
        with self._lock:
            self[:], result = [], self[:]
        return result

    def join(self) -> None:
        """Wait for every remembered thread to end."""
        for thread in self.pop_all():
            thread.join()

    def reap(self) -> None:
        """Forget the threads that have ended (kept for the stdlib's API)."""
        with self._lock:
            self[:] = [thread for thread in self if thread.is_alive()]


class ThreadingMixIn(_std.ThreadingMixIn):
    """Mix-in class to handle each request in a new thread; the stdlib's, tidier.

    Class variables: ``daemon_threads`` (threads do not keep the process
    alive), ``block_on_close`` (``server_close()`` joins non-daemon threads).

    As in the stdlib, with ``block_on_close`` the running non-daemon threads
    are in the server's ``_threads`` list (``len(server._threads)`` works),
    and ``server_close()`` joins them.

    What differs: a finished request thread is forgotten as it ends (the
    stdlib keeps it until the next request arrives), so an idle server
    holds no dead ``Thread`` objects.
    """

    # The stdlib's class attribute is a shared ``_NoThreads()``; a server
    # with ``block_on_close`` gets its own ``_Threads`` at its first request.
    _threads: _ThreadList

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread that runs ``process_request_thread``."""
        if self.block_on_close and "_threads" not in vars(self):
            self._threads = _Threads()
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address))
        thread.daemon = self.daemon_threads
        threads = self._threads
        threads.append(thread)
        try:
            thread.start()
        except BaseException:
            # Never started: server_close() must not join it.
            if isinstance(threads, _Threads):
                threads.discard(thread)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Run the request, then forget this thread."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            threads = vars(self).get("_threads")
            if isinstance(threads, _Threads):
                threads.discard(threading.current_thread())


if HAS_FORK:

    class ForkingMixIn(_std.ForkingMixIn):
        """Mix-in class to handle each request in a new process; the stdlib's, without its stalls.

        Class variables: ``max_children``, ``block_on_close``, ``timeout``.

        What differs, when a Reactor hosts the server (``serve_forever`` does):
        children are reaped as they exit (a pidfd per child on Linux, else at
        each ``service_actions``); only this server's own children are waited
        for, never ``waitpid(-1)``, which could take another component's
        child; and reaching ``max_children`` pauses accepting until a child
        exits, where the stdlib blocks the whole loop in ``waitpid``.
        """

        _hosted: HostedServer | None = None

        def hosting_started(self, hosted: HostedServer) -> None:
            """Remember the hosting, to pause it at ``max_children`` and watch children's exits."""
            self._hosted = hosted
            self._child_watches: dict[int, int] = {}
            inherited = getattr(super(), "hosting_started", None)
            if inherited is not None:
                inherited(hosted)

        def hosting_stopped(self, hosted: HostedServer) -> None:
            """Stop watching children; they are still reaped by ``collect_children``."""
            for pid in list(self._child_watches):
                self._unwatch(pid)
            self._hosted = None
            inherited = getattr(super(), "hosting_stopped", None)
            if inherited is not None:
                inherited(hosted)

        def process_request(self, request: Any, client_address: Any) -> None:
            """Fork a child to handle the request (the child never returns here)."""
            before = set(self.active_children or ())
            super().process_request(request, client_address)
            hosted = self._hosted
            if hosted is None or self.active_children is None:
                return
            for pid in self.active_children - before:
                self._watch(hosted, pid)
            if len(self.active_children) >= self.max_children:
                hosted.pause(PauseReason.MAX_CHILDREN)

        def collect_children(self, *, blocking: bool = False) -> None:
            """Reap this server's exited children; with ``blocking``, wait for all of them."""
            children = self.active_children
            if not children:
                return
            if not blocking and self._hosted is None:
                # Not hosted (handle_request loops): as the stdlib, wait for
                # room below max_children — but only on our own children.
                while len(children) >= self.max_children:
                    self._reap(min(children), block=True)
            for pid in list(children):
                self._reap(pid, block=blocking)

        def _reap(self, pid: int, *, block: bool) -> None:
            try:
                done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                done = pid  # already reaped
            if done:
                self._child_exited(pid)

        def _reap_exited(self, pid: int) -> None:
            self._reap(pid, block=False)

        def _child_exited(self, pid: int) -> None:
            if self.active_children is not None:
                self.active_children.discard(pid)
            if self._hosted is not None:
                self._unwatch(pid)
                if self.active_children is None or len(self.active_children) < self.max_children:
                    self._hosted.resume(PauseReason.MAX_CHILDREN)

        def _watch(self, hosted: HostedServer, pid: int) -> None:
            if not pidfd_available():
                return
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                return  # already gone or not allowed: service_actions reaps it
            self._child_watches[pid] = fd
            hosted.reactor.add_reader(fd, self._reap_exited, pid)

        def _unwatch(self, pid: int) -> None:
            fd = self._child_watches.pop(pid, None)
            if fd is not None and self._hosted is not None:
                if not self._hosted.reactor.closed:
                    self._hosted.reactor.remove_reader(fd)
                os.close(fd)

#: Largest UDP payload (65535 minus headers fits below it), so nothing is cut by default.
MAX_DATAGRAM_SIZE = 65535
# A plain int: ``flags & socket.MSG_TRUNC`` would go through IntFlag's
# operators, which cost more than the recvmsg_into() call itself.
_MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0))

_HandlerFactory = Callable[..., Any]


def __getattr__(name: str) -> Any:
    # Anything not redefined here (private helpers such as _SocketWriter)
    # resolves to the stdlib's, so code reaching into the module keeps working.
    return getattr(_std, name)


class BaseServer(_std.BaseServer):
    """Base class for server classes; the stdlib's, served by a reactor.

    Methods for the caller: ``__init__(server_address, RequestHandlerClass,
    *, dispatch=None)``, ``serve_forever(poll_interval=0.5)``, ``shutdown()``,
    ``handle_request()``, ``server_close()``, ``fileno()``.

    Methods that may be overridden: ``server_bind()``, ``server_activate()``,
    ``get_request()``, ``handle_request()``, ``verify_request()``,
    ``process_request()``, ``finish_request()``, ``shutdown_request()``,
    ``close_request()``, ``service_actions()``, ``handle_timeout()``,
    ``handle_error()``.

    Class variables: ``timeout``.

    What differs from the stdlib: ``serve_forever()`` runs on a private
    Reactor, so ``shutdown()`` takes effect within milliseconds and never
    deadlocks when called from the serving thread; exhausted descriptors
    pause accepting instead of spinning; ``dispatch`` picks where requests
    run (default inline, as the stdlib).
    """

    #: Where ``serve_forever()`` runs requests; None runs them inline.
    dispatch: Dispatch | Topology | None
    #: How ``serve_forever()`` admits a stream server's connections (TLS,
    #: PROXY protocol, access rules, limits, deadlines); None admits at once.
    connection_options: AdmissionOptions | None

    def __init__(self, server_address: Any, RequestHandlerClass: _HandlerFactory, *,
                 dispatch: Dispatch | Topology | None = None,
                 connection_options: AdmissionOptions | None = None) -> None:
        # Explicit: in TCPServer's MRO, super() here is the stdlib TCPServer.
        _std.BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.dispatch = dispatch
        self.connection_options = connection_options
        self._serving_lock = threading.RLock()
        self._serving_reactor: Reactor | None = None
        self._serving_thread: int | None = None
        self._serving_done = threading.Event()
        self._serving_done.set()
        self._shutdown_requested = False
        self._stop_sent = False
        self._host: Reactor | None = None
        self._exhausted = False

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        """Handle requests until ``shutdown()``.

        Args:
            poll_interval: seconds between ``service_actions()`` calls when
                idle (it also runs after requests). Unlike the stdlib it does
                not delay ``shutdown()``.

        Raises:
            RuntimeError: ``serve_forever()`` is already running.
        """
        reactor = Reactor()
        with self._serving_lock:
            if self._serving_reactor is not None:
                reactor.close()
                raise RuntimeError(f"{describe_server(self)}: serve_forever() is already running")
            # A signal handler calling shutdown() can run between any two of
            # these lines, in this thread (hence the RLock). The order makes
            # it either set the flag checked last, or stop the reactor itself
            # knowing it runs on the serving thread, so it is never lost.
            self._serving_thread = threading.get_ident()
            self._serving_done.clear()
            self._serving_reactor = reactor
            self._stop_sent = False
            if self._shutdown_requested:
                self._shutdown_requested = False
                reactor.stop()
        try:
            # Shut down before it started: return without binding a dispatch.
            if not reactor.stopping:
                admission = self.connection_options.keywords() if self.connection_options is not None else {}
                if self.dispatch is None:
                    # Used as the stdlib's, it behaves as the stdlib's: a handler keeps its
                    # connection, blocking, unless connection_options says otherwise.
                    for option in ("keepalive_timeout", "io_timeout"):
                        if admission.get(option) is None:
                            admission[option] = 0
                    if admission.get("read_ahead") is None:
                        admission["read_ahead"] = False
                reactor.add_server(self, self.dispatch, service_interval=poll_interval, handle_timeouts=False,
                                   **admission)
                try:
                    reactor.serve_forever()
                finally:
                    reactor.remove_server(self)
        finally:
            with self._serving_lock:
                self._serving_reactor = None
                self._serving_thread = None
                self._shutdown_requested = False
            reactor.close()
            self._serving_done.set()

    def shutdown(self) -> None:
        """Stop ``serve_forever()``: no request is taken from now on.

        From another thread, waits until ``serve_forever()`` has returned
        (milliseconds, plus any request still being handled inline). From the
        serving thread itself, returns at once; ``serve_forever()`` returns
        when the current handler does. Before ``serve_forever()`` starts, makes
        the next one return at once.

        When a Reactor other than ``serve_forever()``'s hosts the server, stops
        serving it there (``Reactor.shutdown_server``): the reactor and its
        other servers go on.

        Thread-safety: safe from any thread.
        """
        with self._serving_lock:
            reactor = self._serving_reactor
            host = self._host
            if reactor is None:
                if host is None:
                    self._shutdown_requested = True
                    return
            else:
                if not self._stop_sent:
                    # Only once: stop() while serve_forever() drains the
                    # dispatch would abort the requests in flight.
                    self._stop_sent = True
                    reactor.stop()
                # Waiting from the serving thread, or from a worker whose request
                # serve_forever() must drain before returning, would deadlock.
                from_own_thread = self._serving_thread == threading.get_ident() or (
                    isinstance(self.dispatch, Dispatch) and self.dispatch.owns_current_thread())
        if reactor is None:
            assert host is not None
            host.shutdown_server(self)  # outside the lock: it may wait for the host's loop
        elif not from_own_thread:
            self._serving_done.wait()

    def hosting_started(self, hosted: HostedServer) -> None:
        """Called when a loop starts hosting this server; a Reactor other than
        ``serve_forever()``'s is remembered, for ``shutdown()``."""
        if isinstance(hosted.reactor, Reactor) and hosted.reactor is not self._serving_reactor:
            self._host = hosted.reactor

    def hosting_stopped(self, hosted: HostedServer) -> None:
        """Called when a loop stops hosting this server."""
        if self._host is hosted.reactor:
            self._host = None

    def _handle_request_noblock(self) -> None:
        """Take one request and handle it (used by ``handle_request()``)."""
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            outcome = classify_accept_error(exc)
            if outcome is AcceptOutcome.EXHAUSTED and not self._exhausted:
                logger.warning("%s: cannot take requests: %s", describe_server(self), exc.strerror or exc)
                self._exhausted = True
            return
        self._exhausted = False
        process_request_safely(self, request, client_address)


class TCPServer(BaseServer, _std.TCPServer):
    """Stream server over TCP (IPv4 or IPv6, chosen by the address); the stdlib's, served by a reactor.

    Methods for the caller and to override are the stdlib's (see BaseServer).
    Class variables: ``address_family``, ``socket_type``, ``request_queue_size``,
    ``allow_reuse_address``, ``allow_reuse_port``.

    What differs: an IPv6 address selects ``AF_INET6`` by itself; bind errors
    name the address; ``request_queue_size`` defaults to ``socket.SOMAXCONN``
    (the stdlib's is 5); ``dispatch`` (keyword-only) picks where requests run.
    """

    #: The listen backlog: where a burst of connections waits for the loop.
    #: The stdlib's 5 overflows with 50 concurrent clients (SYN retries stall them).
    request_queue_size = socket.SOMAXCONN

    #: Permissions for a Unix socket file (Unix servers' ``mode`` keyword).
    socket_mode: int | None = None

    def __init__(self, server_address: Any, RequestHandlerClass: _HandlerFactory,
                 bind_and_activate: bool = True, *, dispatch: Dispatch | Topology | None = None,
                 connection_options: AdmissionOptions | None = None) -> None:
        if connection_options is not None and self.socket_type != socket.SOCK_STREAM:
            raise ValueError(f"{type(self).__name__}: connection_options= applies to stream servers only")
        BaseServer.__init__(self, server_address, RequestHandlerClass, dispatch=dispatch, connection_options=connection_options)
        family = family_for_address(server_address, self.address_family)
        if family != self.address_family:
            self.address_family = family
        self._unix_path: UnixSocketPath | None = None
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self) -> None:
        """Bind the socket to ``server_address`` (replacing a stale Unix socket file)."""
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if getattr(self, "allow_reuse_port", False) and hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._unix_path = bind_socket(self.socket, self.server_address, mode=self.socket_mode)
        self.server_address = self.socket.getsockname()

    def server_close(self) -> None:
        """Close the socket; a Unix socket file this process bound is removed."""
        super().server_close()
        unix_path = getattr(self, "_unix_path", None)
        if unix_path is not None:
            self._unix_path = None
            unix_path.unlink()


class UDPServer(TCPServer, _std.UDPServer):
    """Datagram server over UDP (IPv4 or IPv6); the stdlib's, served by a reactor.

    Class variables: as TCPServer, plus ``max_packet_size``.

    What differs: ``max_packet_size`` defaults to 65535; a datagram that does
    not fit is dropped, logged and counted in ``truncated_datagrams`` instead of
    reaching the handler cut short.
    """

    max_packet_size = MAX_DATAGRAM_SIZE

    #: Datagrams dropped because they were larger than ``max_packet_size``.
    truncated_datagrams: int = 0
    _receive_buffer: memoryview | None = None

    def get_request(self) -> tuple[Any, Any]:
        """Receive one datagram: ``((data, socket), client_address)``.

        Raises:
            RequestDropped: the datagram was larger than ``max_packet_size``.
        """
        if not HAS_RECVMSG_TRUNC:
            return _std.UDPServer.get_request(self)
        size = self.max_packet_size
        buffer = self._receive_buffer
        if buffer is None or len(buffer) != size:
            buffer = self._receive_buffer = memoryview(bytearray(size))
        nbytes, _, flags, client_address = self.socket.recvmsg_into([buffer])
        if flags & _MSG_TRUNC:
            self.truncated_datagrams += 1
            count = self.truncated_datagrams
            if count & (count - 1) == 0:  # 1, 2, 4, 8...: visible, but never a flood
                logger.warning("%s: dropped a datagram from %r larger than max_packet_size=%d "
                               "(%d dropped so far)", describe_server(self), client_address, size, count)
            raise RequestDropped(f"datagram from {client_address!r} larger than max_packet_size={size}")
        return (bytes(buffer[:nbytes]), self.socket), client_address

    # Our TCPServer precedes the stdlib UDPServer in the MRO; these must stay the datagram versions.
    server_activate = _std.UDPServer.server_activate
    shutdown_request = _std.UDPServer.shutdown_request
    close_request = _std.UDPServer.close_request


if HAS_UNIX_SOCKETS:

    class UnixStreamServer(TCPServer, _std.UnixStreamServer):
        """Stream server on a Unix socket path or (Linux) abstract name.

        What differs: a stale socket file is replaced, a live one refused;
        ``server_close()`` removes the path if it is still ours; ``mode``
        sets the file's permissions.
        """

        def __init__(self, server_address: Any, RequestHandlerClass: _HandlerFactory,
                     bind_and_activate: bool = True, *, dispatch: Dispatch | Topology | None = None,
                     mode: int | None = None, connection_options: AdmissionOptions | None = None) -> None:
            if mode is not None:
                self.socket_mode = mode
            super().__init__(server_address, RequestHandlerClass, bind_and_activate, dispatch=dispatch,
                             connection_options=connection_options)

    class UnixDatagramServer(UDPServer, _std.UnixDatagramServer):
        """Datagram server on a Unix socket path or (Linux) abstract name.

        What differs: as UnixStreamServer, plus UDPServer's truncation check.
        """

        def __init__(self, server_address: Any, RequestHandlerClass: _HandlerFactory,
                     bind_and_activate: bool = True, *, dispatch: Dispatch | Topology | None = None,
                     mode: int | None = None) -> None:
            if mode is not None:
                self.socket_mode = mode
            super().__init__(server_address, RequestHandlerClass, bind_and_activate, dispatch=dispatch)

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer, _std.ThreadingUnixStreamServer):
        """UnixStreamServer with a thread per request."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer, _std.ThreadingUnixDatagramServer):
        """UnixDatagramServer with a thread per request."""


# The combined classes list our mixin, our base, then the stdlib's combined
# class: the MRO is our mixin, our base, the stdlib combined class, the stdlib
# mixin, the stdlib base. Mixins still win over BaseServer.process_request,
# and isinstance(server, stdlib.ThreadingTCPServer) holds.


class ThreadingUDPServer(ThreadingMixIn, UDPServer, _std.ThreadingUDPServer):
    """UDPServer with a thread per request."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer, _std.ThreadingTCPServer):
    """TCPServer with a thread per request."""


if HAS_FORK:

    class ForkingUDPServer(ForkingMixIn, UDPServer, _std.ForkingUDPServer):
        """UDPServer with a process per request."""

    class ForkingTCPServer(ForkingMixIn, TCPServer, _std.ForkingTCPServer):
        """TCPServer with a process per request."""

    if sys.version_info >= (3, 12):  # the stdlib added these in 3.12

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer, _std.ForkingUnixStreamServer):
            """UnixStreamServer with a process per request."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer, _std.ForkingUnixDatagramServer):
            """UnixDatagramServer with a process per request."""
