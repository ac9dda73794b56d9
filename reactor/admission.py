"""Admission: what the reactor does with a new stream connection before any hook sees it.

A stream server hosted with admission options (``Reactor.add_server(...,
allow=, deny=, max_connections=, proxy_protocol=, ssl_context=,
wait_for_data=, io_timeout=)``) does not hand a connection to
``verify_request`` and its dispatch strategy as soon as ``get_request()``
returns it. The loop first takes it through these stages, each without
blocking and under its own deadline:

1. **PROXY header** (``proxy_protocol``): only from a peer in
   ``proxy_trusted`` (an empty list trusts every peer). The header is read
   with ``MSG_PEEK`` and only its own bytes are consumed, so the bytes after
   it stay in the socket for the next stage or the handler. After it, the
   client address is the proxied client's; the proxy's own address stays in
   :func:`request_info`.
2. **Access and limits**: ``allow``/``deny`` (networks, or ``uid:``/``gid:``
   peer credentials on Unix listeners) and ``max_connections_per_ip`` judge
   the client address from step 1; ``max_connections`` counts every
   connection from accept to ``close_request``, and at the cap the
   listener is paused, so the kernel backlog holds the rest. A refused
   connection is counted and closed at once.
3. **TLS** (``ssl_context``): the handshake runs in the loop, under
   ``handshake_timeout``; the handler receives an ``ssl.SSLSocket``.
4. **First bytes** (``wait_for_data``): the connection is handed over only
   once the client has sent something, so an idle connect costs nothing but
   a descriptor for that long.

Then the socket is made blocking with ``io_timeout`` as its timeout (the mode
socketserver handlers expect) and handed to the dispatch. A connection that
fails a stage is one dropped connection: counted, logged rate-limited per
cause, never a dead listener.
"""

from __future__ import annotations

import logging
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from ._ratelimit import RateLimitedLog
from ._timers import TimerHandle
from .access import AccessRules, ConnectionLimits, Credentials, peer_credentials
from .loop import EventLoop
from .proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyParser

if TYPE_CHECKING:
    import ssl

__all__ = ["ADMISSION_COUNTERS", "Admission", "AdmissionOptions", "RequestInfo", "request_info"]

logger = logging.getLogger(__name__)

#: The counters admission adds to its server's stats: admitted, and dropped by cause.
ADMISSION_COUNTERS = ("admitted", "refused_by_rule", "refused_by_limit", "proxy_errors", "tls_failures",
                      "timeouts", "closed_early")

#: Most bytes peeked at once while reading a PROXY header: a v1 header, or a v2
#: header with its usual TLVs, in one read; a longer one takes a few.
_PEEK_MAX = 4096


@dataclass(frozen=True)
class AdmissionOptions:
    """How a stream server's new connections are admitted (see the module docstring).

    Attributes:
        ssl_context: serve TLS with this server-side context (None: plain).
        handshake_timeout: seconds a TLS handshake may take.
        proxy_protocol: ``"v1"``, ``"v2"`` or ``"any"`` to expect a PROXY header; None for none.
        proxy_trusted: networks a PROXY header is accepted from (empty: every peer).
        header_timeout: seconds the PROXY header may take to arrive.
        allow, deny: networks (``"10.0.0.0/8"``, ``"::1/128"``) or, on Unix
            listeners, peer credentials (``"uid:1000"``, ``"gid:50"``).
        max_connections: open connections at most; at the cap the listener pauses.
        max_connections_per_ip: open connections at most per client IP.
        wait_for_data: seconds to wait for the client's first bytes before
            handing the connection over (None: hand it over at once).
        io_timeout: the handed-over socket's timeout, so no handler waits on
            a client longer than that; 0: none (blocking, as socketserver);
            None: the host's default: ``DEFAULT_INLINE_IO_TIMEOUT`` for a
            handler that runs in the loop's own thread (``Inline``), none for
            others and for a standalone compat server's ``serve_forever()``.
            Given (not None or 0), connections go through admission, so that
            ``request_info()`` answers for them.
        keepalive_timeout: seconds a connection may wait parked between two
            requests (``reactor.keepalive``); 0 turns parking off; None means
            the host's default: ``DEFAULT_KEEPALIVE_TIMEOUT`` on
            ``Reactor.add_server``, off for a standalone compat server's
            ``serve_forever()`` (the stdlib's behaviour). Not an admission
            stage: it applies to stream servers whose handler exposes a
            request boundary, with or without the options above.
        read_ahead: read each request whole in the loop before its handler
            runs, and write its reply behind it (``reactor.readahead``): None
            (the default) or True for stream servers whose handler exposes a
            request boundary; False: the handler reads and writes its socket
            itself. Not an admission stage either; the fields below are its limits.
        request_head_timeout: seconds from a request's first byte to the end of its head (then 408).
        request_body_timeout, request_body_min_rate: in every ``request_body_timeout`` seconds
            a body must bring ``request_body_min_rate * request_body_timeout`` bytes, or the
            rest of it (then 408).
        max_request_head: bytes of request line and headers at most (then 431; 414 for the line alone).
        max_request_headers: header fields at most (then 431).
        max_request_body: body bytes at most (then 413); None: no limit.
        request_body_in_memory: body bytes held in memory; the rest is spooled to a temporary file.
        write_buffer_in_memory: reply bytes held in memory; the rest is spooled to a temporary file.
        write_buffer_limit: reply bytes buffered at most; above it the handler's write blocks.
        send_timeout, send_min_rate: in every ``send_timeout`` seconds a reply waits, the client
            must take ``send_min_rate * send_timeout`` bytes of it, or the rest of it (else the
            connection is closed).
    """

    ssl_context: ssl.SSLContext | None = None
    handshake_timeout: float = 10.0
    proxy_protocol: str | None = None
    proxy_trusted: tuple[str, ...] = ()
    header_timeout: float = 5.0
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    wait_for_data: float | None = None
    io_timeout: float | None = None
    keepalive_timeout: float | None = None
    read_ahead: bool | None = None
    request_head_timeout: float = 10.0
    request_body_timeout: float = 10.0
    request_body_min_rate: int = 1024
    max_request_head: int = 65536
    max_request_headers: int = 100
    max_request_body: int | None = 1 << 30
    request_body_in_memory: int = 65536
    write_buffer_in_memory: int = 65536
    write_buffer_limit: int = 16 << 20
    send_timeout: float = 10.0
    send_min_rate: int = 1024

    def __post_init__(self) -> None:
        if self.proxy_protocol not in (None, "v1", "v2", "any"):
            raise ValueError(f"proxy_protocol must be None, 'v1', 'v2' or 'any', not {self.proxy_protocol!r}")
        for name in ("handshake_timeout", "header_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.wait_for_data is not None and self.wait_for_data <= 0:
            raise ValueError("wait_for_data must be positive or None")
        for name in ("io_timeout", "keepalive_timeout"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be positive, 0 (off) or None (the default)")
        if self.read_ahead not in (None, True, False):
            raise ValueError(f"read_ahead must be None, True or False, not {self.read_ahead!r}")
        for name in _READ_AHEAD_LIMITS:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")
            if value is None and name != "max_request_body":
                raise ValueError(f"{name} must be a number")
        if self.write_buffer_limit < self.write_buffer_in_memory:
            raise ValueError("write_buffer_limit must be at least write_buffer_in_memory")

    def keywords(self) -> dict[str, Any]:
        """These options as ``Reactor.add_server`` keywords."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @property
    def active(self) -> bool:
        """True when anything is asked of admission (else connections go straight to the dispatch)."""
        # keepalive_timeout is not an admission stage; io_timeout makes the
        # connection's request_info() available only when asked for explicitly.
        return replace(self, io_timeout=self.io_timeout or None, keepalive_timeout=None, read_ahead=None,
                       **{name: getattr(_NOTHING, name) for name in _READ_AHEAD_LIMITS}) != _NOTHING


#: The limits of read-ahead (``reactor.readahead``), which are not admission stages.
_READ_AHEAD_LIMITS = (
    "request_head_timeout", "request_body_timeout", "request_body_min_rate", "max_request_head",
    "max_request_headers", "max_request_body", "request_body_in_memory", "write_buffer_in_memory",
    "write_buffer_limit", "send_timeout", "send_min_rate")
_NOTHING = AdmissionOptions()


@dataclass
class RequestInfo:
    """What admission learned about one connection; see :func:`request_info`.

    Attributes:
        client_address: the client's address (the proxied client's behind a PROXY header).
        peer_address: the address of the socket's peer (the proxy's, behind one).
        proxy_address: the proxy's address when a PROXY header named the client, else None.
        proxy_header: the parsed PROXY header, if any.
        credentials: the Unix peer's pid/uid/gid (``SO_PEERCRED``), if read.
        tls: the ``ssl.SSLSocket`` after a handshake, if TLS.
    """

    client_address: Any
    peer_address: Any
    proxy_address: Any = None
    proxy_header: ProxyHeader | None = None
    credentials: Credentials | None = None
    tls: Any = None


_INFO: weakref.WeakKeyDictionary[socket.socket, RequestInfo] = weakref.WeakKeyDictionary()
_INFO_LOCK = threading.Lock()


def request_info(request: Any) -> RequestInfo | None:
    """What admission learned about ``request`` (a handler's ``self.request``), or None.

    Thread-safety: safe from any thread (handlers run on worker threads).
    """
    request = getattr(request, "raw_socket", request)  # a read-ahead connection's socket
    if not isinstance(request, socket.socket):
        return None
    with _INFO_LOCK:
        return _INFO.get(request)


class _Connection:
    """One connection going through admission."""

    __slots__ = ("sock", "client_address", "info", "parser", "timer", "stage", "limit_key")

    def __init__(self, sock: socket.socket, client_address: Any) -> None:
        self.sock = sock
        self.client_address = client_address
        self.info = RequestInfo(client_address=client_address, peer_address=client_address)
        self.parser: ProxyParser | None = None
        self.timer: TimerHandle | None = None
        self.stage = ""
        self.limit_key: Any = None


class Admission:
    """Admits the new connections of one stream server (see the module docstring).

    Args:
        loop: the loop the server is hosted on.
        name: the server's name, for logs.
        options: what to check and wait for.
        family: the listener's address family (``AF_INET``, ``AF_INET6``, ``AF_UNIX``).
        hand_over: called with ``(request, client_address)`` for each admitted connection.
        counts: the server's counters, incremented here.
        pause: called with True when ``max_connections`` is reached, False when below again.
    """

    def __init__(self, loop: EventLoop, name: str, options: AdmissionOptions, family: int,
                 hand_over: Callable[[socket.socket, Any], None], counts: dict[str, int],
                 pause: Callable[[bool], None]) -> None:
        self._loop = loop
        self._name = name
        self._options = options
        self._family = family
        self._hand_over = hand_over
        self._counts = counts
        self._pause = pause
        self._rules = AccessRules(options.allow, options.deny)
        self._rules.validate_for(family, proxied=options.proxy_protocol is not None)
        self._trusted = AccessRules(allow=options.proxy_trusted)
        if options.proxy_trusted:
            self._trusted.validate_for(family)
        self._limits = ConnectionLimits(options.max_connections, options.max_connections_per_ip)
        self._pending: dict[int, _Connection] = {}
        #: Limit keys of handed-over connections, by id(request), until close_request.
        self._open: dict[int, Any] = {}
        self._at_capacity = False
        self._log = RateLimitedLog(logger)
        for name_ in ADMISSION_COUNTERS:
            counts.setdefault(name_, 0)

    @property
    def pending(self) -> int:
        """Connections in admission now."""
        return len(self._pending)

    @property
    def open(self) -> int:
        """Connections counted against ``max_connections`` now (in admission or handed over)."""
        return self._limits.active

    # -- entry ---------------------------------------------------------------

    def take(self, sock: socket.socket, client_address: Any) -> None:
        """Start admitting a connection that ``get_request()`` returned."""
        conn = _Connection(sock, client_address)
        try:
            sock.setblocking(False)
        except OSError as exc:
            self._drop(conn, "closed_early", exc)
            return
        self._pending[sock.fileno()] = conn
        if self._options.proxy_protocol is not None:
            if not self._trusted.empty and not self._trusted.permits(client_address, self._credentials(conn)):
                self._drop(conn, "refused_by_rule", "not a trusted PROXY protocol peer")
                return
            conn.parser = ProxyParser(self._options.proxy_protocol)
            self._enter(conn, "proxy", self._options.header_timeout, self._read_proxy_header, write=False)
            return
        self._after_proxy(conn)

    def closed(self, request: Any) -> None:
        """``close_request(request)`` ran (in any thread or process): the connection no longer counts."""
        key = self._open.pop(id(request), _NO_KEY)
        if key is _NO_KEY:
            return
        try:
            self._loop.call_soon_threadsafe(self._release, key)
        except RuntimeError:
            pass  # the loop closed: nothing left to count

    def close_all(self) -> None:
        """Drop every connection still in admission (the server is leaving)."""
        for conn in list(self._pending.values()):
            self._close(conn)

    # -- stages --------------------------------------------------------------

    def _after_proxy(self, conn: _Connection) -> None:
        credentials = self._credentials(conn)
        if not self._rules.empty and not self._rules.permits(conn.client_address, credentials,
                                                             proxied=conn.info.proxy_address is not None):
            self._drop(conn, "refused_by_rule", "refused by allow/deny")
            return
        key = conn.client_address
        reason = self._limits.admit(key)
        if reason is not None:
            self._drop(conn, "refused_by_limit", f"refused: {reason}")
            return
        conn.limit_key = key
        if self._limits.at_capacity and not self._at_capacity:
            self._at_capacity = True
            self._pause(True)
        if self._options.ssl_context is not None:
            self._start_tls(conn)
            return
        self._after_tls(conn)

    def _after_tls(self, conn: _Connection) -> None:
        if self._options.wait_for_data is not None:
            tls = conn.info.tls
            if tls is not None and tls.pending():
                self._admit(conn)
                return
            self._enter(conn, "first bytes", self._options.wait_for_data, self._check_first_bytes, write=False)
            return
        self._admit(conn)

    def _read_proxy_header(self, conn: _Connection) -> None:
        assert conn.parser is not None
        try:
            data = conn.sock.recv(_PEEK_MAX, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(conn, "closed_early", exc)
            return
        if not data:
            self._drop(conn, "proxy_errors", "closed before its PROXY header ended")
            return
        try:
            header = conn.parser.feed(data)
        except ProxyHeaderError as exc:
            self._drop(conn, "proxy_errors", f"bad PROXY header: {exc}")
            return
        # Consume only the header's own bytes: what follows it stays in the socket.
        header_bytes = len(data) if header is None else len(data) - len(conn.parser.remainder)
        try:
            conn.sock.recv(header_bytes)
        except OSError as exc:
            self._drop(conn, "closed_early", exc)
            return
        if header is None:
            return
        conn.info.proxy_header = header
        if header.command == "PROXY" and header.source is not None:
            conn.info.proxy_address = conn.info.peer_address
            conn.client_address = _as_client_address(header)
            conn.info.client_address = conn.client_address
        self._leave_stage(conn)
        self._after_proxy(conn)

    def _start_tls(self, conn: _Connection) -> None:
        assert self._options.ssl_context is not None
        fd = conn.sock.fileno()
        try:
            tls = self._options.ssl_context.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self._drop(conn, "tls_failures", exc)
            return
        conn.sock = tls  # the same descriptor, now behind TLS
        self._pending[fd] = conn
        conn.info.tls = tls
        self._enter(conn, "TLS handshake", self._options.handshake_timeout, self._handshake, write=False)
        self._handshake(conn)

    def _handshake(self, conn: _Connection) -> None:
        import ssl

        tls = conn.sock
        assert isinstance(tls, ssl.SSLSocket)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, self._handshake, write=False)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, self._handshake, write=True)
            return
        except (ssl.SSLError, OSError) as exc:
            self._drop(conn, "tls_failures", f"TLS handshake failed: {exc}")
            return
        self._leave_stage(conn)
        self._after_tls(conn)

    def _check_first_bytes(self, conn: _Connection) -> None:
        if conn.info.tls is None:
            try:
                first = conn.sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._drop(conn, "closed_early", exc)
                return
            if not first:
                self._drop(conn, "closed_early", "closed without sending anything")
                return
        self._leave_stage(conn)
        self._admit(conn)

    def _admit(self, conn: _Connection) -> None:
        self._pending.pop(conn.sock.fileno(), None)
        sock = conn.sock
        try:
            sock.settimeout(self._options.io_timeout)
        except OSError as exc:
            self._drop(conn, "closed_early", exc)
            return
        self._open[id(sock)] = conn.limit_key
        with _INFO_LOCK:
            _INFO[sock] = conn.info
        self._counts["admitted"] += 1
        self._hand_over(sock, conn.client_address)

    # -- plumbing ------------------------------------------------------------

    def _enter(self, conn: _Connection, stage: str, timeout: float,
               step: Callable[[_Connection], None], *, write: bool) -> None:
        conn.stage = stage
        conn.timer = self._loop.call_later(timeout, self._expire, conn)
        self._watch(conn, step, write=write)

    def _watch(self, conn: _Connection, step: Callable[[_Connection], None], *, write: bool) -> None:
        fd = conn.sock.fileno()
        if write:
            self._loop.remove_reader(fd)
            self._loop.add_writer(fd, step, conn)
        else:
            self._loop.remove_writer(fd)
            self._loop.add_reader(fd, step, conn)

    def _leave_stage(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _expire(self, conn: _Connection) -> None:
        conn.timer = None
        self._drop(conn, "timeouts", f"no {conn.stage} within its deadline")

    def _credentials(self, conn: _Connection) -> Credentials | None:
        if self._family != getattr(socket, "AF_UNIX", None):
            return None
        if conn.info.credentials is None:
            conn.info.credentials = peer_credentials(conn.sock)
        return conn.info.credentials

    def _drop(self, conn: _Connection, cause: str, why: object) -> None:
        self._counts[cause] += 1
        self._log.warning(cause, "%s: dropped a connection from %r: %s (%d %s so far)",
                          self._name, conn.client_address, why, self._counts[cause], cause)
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._pending.pop(fd, None)
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        if conn.limit_key is not None:
            key, conn.limit_key = conn.limit_key, None
            self._release(key)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _release(self, key: Any) -> None:
        self._limits.release(key)
        if self._at_capacity and not self._limits.at_capacity:
            self._at_capacity = False
            self._pause(False)


_NO_KEY = object()


def _as_client_address(header: ProxyHeader) -> Any:
    """The proxied client's address in the shape ``accept()`` gives for that family."""
    source = header.source
    if header.family == socket.AF_INET6 and isinstance(source, tuple):
        return (source[0], source[1], 0, 0)
    return source
