"""The admin endpoint: a reactor's statistics over HTTP (``/stats``, ``/metrics``, ``/health``), and views of them.

The ``reactor`` command serves it on ``--admin URL``; ``reactor stats URL``
reads it. It is usable alone too::

    sock, unix_path = bind_admin(parse_admin_url("tcp://127.0.0.1:9100"))
    admin = AdminServer(reactor, sock, lambda: snapshot(reactor))
    admin.start()

Design
------
1. The admin server is *not* a hosted server: it watches its listener and
   its connections with the loop's own readers, writers and timers. So it
   never appears among ``Reactor.servers`` (nor in ``/stats``), and it keeps
   answering while ``Reactor.close()`` drains every hosted server, which is
   when a load balancer most needs ``/health`` to say 503. Its owner closes
   it after the reactor (``close()`` then only closes sockets).
2. It never blocks the loop: sockets are non-blocking, a request head is at
   most :data:`MAX_REQUEST` bytes, every connection has a deadline
   (``io_timeout``) from accept to the last byte written, at most
   :data:`MAX_CONNECTIONS` are open (more are closed at once), and a
   response is a small document built in one go from a snapshot that
   ``Reactor.stats()`` returns without waiting for anyone.
3. HTTP/1.0 semantics whatever the client speaks: one request per
   connection, ``Connection: close``, a ``Content-Length``. ``GET`` and
   ``HEAD`` only.
4. The snapshot's ``health`` decides ``/health``: 200 when ready; 503 while
   starting, draining, or *saturated*, i.e. when a server's listener is
   paused for any reason but draining (a ``ThreadPool`` whose workers and
   queue are full, ``max_connections`` open connections, descriptors
   exhausted, ``ForkingMixIn`` at ``max_children``), or a ``Prefork`` pool
   has no ready worker. See :func:`health`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from ._timers import TimerHandle
from .binding import UnixSocketPath, create_server_socket
from .loop import EventLoop

__all__ = ["AdminAddress", "AdminServer", "MAX_CONNECTIONS", "MAX_REQUEST", "bind_admin", "fetch", "health",
           "parse_admin_url", "render_metrics", "render_view"]

logger = logging.getLogger(__name__)

#: Longest request head (request line and headers) the admin server reads.
MAX_REQUEST = 8192
#: Most admin connections open at once; more are closed as soon as they are taken.
MAX_CONNECTIONS = 32
#: Default deadline of one admin connection, from accept to the last byte of the response.
DEFAULT_IO_TIMEOUT = 5.0
#: Pause reasons that are not saturation (the server is leaving, or a worker recycles).
_NOT_SATURATION = frozenset({"draining", "max_requests"})


# ---------------------------------------------------------------- addresses


@dataclasses.dataclass(frozen=True)
class AdminAddress:
    """A parsed admin URL: ``kind`` is ``tcp`` (``address`` = (host, port)) or ``unix`` (a path, or ``"\\0name"``)."""

    url: str
    kind: str
    address: Any


def parse_admin_url(url: str, *, public: bool = False) -> AdminAddress:
    """Parse ``tcp://HOST:PORT`` (``[v6]`` in brackets) or ``unix:///PATH`` (``unix://@NAME``: abstract).

    Args:
        public: allow what anyone else could reach: a TCP host that is not a
            loopback address (``127.0.0.0/8``, ``::1``, ``localhost``), and an
            abstract Unix name (it has no file permissions to protect it).

    Raises:
        ValueError: not such a URL, or not allowed without ``public``; the message says which.
    """
    kind, sep, rest = url.partition("://")
    if not sep or kind not in ("tcp", "unix"):
        raise ValueError(f"{url!r}: expected tcp://HOST:PORT or unix:///PATH")
    if kind == "unix":
        if not rest or rest == "@":
            raise ValueError(f"{url!r}: expected unix:///PATH")
        if rest.startswith("@"):
            if not public:
                raise ValueError(f"{url!r}: an abstract socket has no permissions, anyone on the host can "
                                 "connect; use a path, or allow it explicitly with --admin-public")
            return AdminAddress(url, kind, "\0" + rest[1:])
        return AdminAddress(url, kind, rest)
    host, colon, port_text = rest.rpartition(":")
    if not colon or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{url!r}: expected tcp://HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{url!r}: write an IPv6 address in brackets: tcp://[{host}]:{port_text}")
    if not host:
        raise ValueError(f"{url!r}: give a host, e.g. tcp://127.0.0.1:{port_text}")
    if not public and not _is_loopback(host):
        raise ValueError(f"{url!r}: {host} is not a loopback address; statistics would be public. "
                         "Use 127.0.0.1 or [::1], or allow it explicitly with --admin-public")
    return AdminAddress(url, kind, (host, int(port_text)))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to is not ours to vouch for


def bind_admin(address: AdminAddress) -> tuple[socket.socket, UnixSocketPath | None]:
    """Bind and listen on an admin address; a Unix socket file gets mode 0600 (only its owner connects).

    The file is created under a umask of 0177, so it is never reachable by
    others, not even between ``bind()`` and ``chmod()``; the umask is the
    process's, so call this while no other thread creates files.

    Raises:
        OSError: the address cannot be bound (the message names it).
    """
    if address.kind == "unix":
        old = os.umask(0o177)
        try:
            return create_server_socket(socket.AF_UNIX, socket.SOCK_STREAM, address.address, mode=0o600)
        finally:
            os.umask(old)
    return create_server_socket(socket.AF_INET, socket.SOCK_STREAM, address.address, v6only=True)


# ---------------------------------------------------------------- the server


class AdminServer:
    """Serves ``/stats``, ``/metrics`` and ``/health`` on a listening socket, from a loop's thread.

    Args:
        loop: the loop (a ``Reactor``) to run on.
        sock: a listening stream socket (see :func:`bind_admin`); owned from now on.
        snapshot: returns the document ``/stats`` serves: ``Reactor.stats()``
            plus a ``health`` entry (see :func:`health`), called in the loop's thread.
        io_timeout: deadline of each connection, accept to last byte.
        unix_path: the socket file to remove on ``close()``.

    Thread-safety: everything runs in the loop's thread; ``close()`` too.
    """

    def __init__(self, loop: EventLoop, sock: socket.socket, snapshot: Callable[[], dict[str, Any]], *,
                 io_timeout: float = DEFAULT_IO_TIMEOUT, unix_path: UnixSocketPath | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.snapshot = snapshot
        self.io_timeout = io_timeout
        self.unix_path = unix_path
        #: Requests answered, by status.
        self.responses: dict[int, int] = {}
        self._connections: dict[socket.socket, _AdminConnection] = {}
        self._started = False

    @property
    def address(self) -> Any:
        """The listening socket's address."""
        return self.sock.getsockname()

    def start(self) -> None:
        """Start answering (the listener becomes non-blocking)."""
        self.sock.setblocking(False)
        self.loop.claim(self.sock, self)
        self._started = True
        self.loop.add_reader(self.sock, self._on_acceptable, owner=self)

    def close(self) -> None:
        """Stop, close every connection and the listener, remove the socket file. Idempotent."""
        live = not self.loop.closed
        if self._started and live:
            self.loop.remove_reader(self.sock, owner=self)
            self.loop.release(self.sock, self)
        self._started = False
        for connection in list(self._connections.values()):
            connection.close()
        if self.sock.fileno() >= 0:
            self.sock.close()
        if self.unix_path is not None:
            self.unix_path.unlink()
            self.unix_path = None

    def _on_acceptable(self) -> None:
        for _ in range(16):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                logger.warning("admin: cannot accept: %s", exc)
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                conn.close()
                continue
            conn.setblocking(False)
            self._connections[conn] = _AdminConnection(self, conn)

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        """The status, content type and body for one request (``HEAD`` gets the same, sent without the body)."""
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n"
        path = target.split("?", 1)[0]
        if path not in ("/stats", "/metrics", "/health"):
            return 404, "text/plain; charset=utf-8", b"not found: try /stats, /metrics or /health\n"
        try:
            document = self.snapshot()
        except Exception:
            logger.exception("admin: the statistics snapshot failed")
            return 500, "text/plain; charset=utf-8", b"the statistics snapshot failed (see the log)\n"
        if path == "/stats":
            return 200, "application/json", json.dumps(document, sort_keys=False).encode() + b"\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(document).encode()
        verdict = document.get("health") or health(document)
        status = 200 if verdict.get("ok") else 503
        return status, "application/json", json.dumps(verdict).encode() + b"\n"

    def _forget(self, connection: _AdminConnection) -> None:
        self._connections.pop(connection.sock, None)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class _AdminConnection:
    """One admin request: read its head, answer, close; all of it before the deadline."""

    def __init__(self, server: AdminServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.loop = server.loop
        self.buffer = bytearray()
        self.out = memoryview(b"")
        self.closed = False
        self.timer: TimerHandle | None = self.loop.call_later(server.io_timeout, self.close)
        self.loop.claim(sock, self)
        self.loop.add_reader(sock, self._on_readable, owner=self)

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            end = self.buffer.find(b"\n\n")
        if end < 0:
            if len(self.buffer) > MAX_REQUEST:
                self._answer(431, "text/plain; charset=utf-8", b"request head too large\n", head_only=False)
            return
        request_line = bytes(self.buffer[:end]).split(b"\n", 1)[0].strip().decode("latin-1")
        parts = request_line.split()
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            self._answer(400, "text/plain; charset=utf-8", b"bad request\n", head_only=False)
            return
        method, target = parts[0], parts[1]
        status, content_type, body = self.server.respond(method, target)
        self._answer(status, content_type, body, head_only=method == "HEAD")

    def _answer(self, status: int, content_type: str, body: bytes, *, head_only: bool) -> None:
        self.server.responses[status] = self.server.responses.get(status, 0) + 1
        head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'Unknown')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode("ascii")
        self.out = memoryview(head if head_only else head + body)
        self.loop.remove_reader(self.sock, owner=self)
        self.loop.add_writer(self.sock, self._on_writable, owner=self)
        self._on_writable()

    def _on_writable(self) -> None:
        if self.closed:
            return
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if not self.out:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.loop.closed:
            self.loop.remove_reader(self.sock, owner=self)
            self.loop.remove_writer(self.sock, owner=self)
            self.loop.release(self.sock, self)
        self.sock.close()
        self.server._forget(self)


# ---------------------------------------------------------------- health


def health(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Whether a load balancer should send traffic here: ``{"ok", "state", "reasons"}``.

    ``ok`` is false (``/health`` answers 503) while the snapshot's ``state``
    is not ``ready`` or ``reloading`` (e.g. ``starting``, ``draining``), or
    while any server is *saturated* or leaving:

    - its ``state`` is ``draining``;
    - its listener is paused for a reason other than draining (``saturated``:
      a ThreadPool's workers and queue are full; ``max_connections``;
      ``exhausted``: out of descriptors or memory; ``max_children``);
    - it is a Prefork pool with no ready worker.

    ``reasons`` says which, one string each. A snapshot without ``state``
    counts as ready.
    """
    state = snapshot.get("state", "ready")
    reasons: list[str] = []
    if state not in ("ready", "reloading"):
        reasons.append(state)
    for server in snapshot.get("servers", []):
        where = server.get("address") or server.get("name")
        if server.get("state") == "draining":
            reasons.append(f"{where}: draining")
            continue
        saturated = [reason for reason in server.get("paused", []) if reason not in _NOT_SATURATION]
        if saturated:
            reasons.append(f"{where}: saturated ({', '.join(saturated)})")
        pool = server.get("pool") or {}
        if isinstance(pool.get("ready"), list) and pool.get("workers") and not pool["ready"]:
            reasons.append(f"{where}: no ready worker")
    return {"ok": not reasons, "state": state, "reasons": reasons}


# ---------------------------------------------------------------- Prometheus


_HELP = {
    "requests": "Requests taken from the server's socket (connections accepted, datagrams received).",
    "dropped": "Requests lost while being taken (the peer went away first, a failed TLS accept, a datagram "
               "too large).",
    "replies_lost": "Datagram replies the peer could not take.",
    "exhausted": "Times the listener paused because descriptors or memory ran out.",
    "io_timeouts": "Handlers that gave up on a silent client after io_timeout.",
    "dispatched": "Handler runs handed to the dispatch strategy.",
    "resumed": "Next requests of parked keep-alive connections handed to the dispatch strategy.",
    "keepalive_expired": "Parked keep-alive connections closed idle.",
    "admitted": "Connections admitted (access rules, limits, PROXY header and TLS passed).",
    "refused_by_rule": "Connections refused by --allow/--deny rules.",
    "refused_by_limit": "Connections refused by a connection limit.",
    "proxy_errors": "Connections closed for a bad or missing PROXY protocol header.",
    "tls_failures": "Connections closed for a failed TLS handshake.",
    "timeouts": "Connections closed because admission (PROXY header, TLS, first data) took too long.",
    "closed_early": "Connections the client closed during admission.",
    "open": "Connections open now.",
    "admitting": "Connections in admission now.",
    "parked": "Keep-alive connections parked between requests now.",
    "reading": "Connections whose request the loop is reading ahead now.",
    "read_ahead_refused": "Requests refused while read ahead (408, 413, 414, 431, 400, 501).",
    "send_timeouts": "Connections closed because the client took its reply slower than send_min_rate.",
}
_POOL_HELP = {
    "threads": "Worker threads of the thread pool.",
    "idle": "Idle worker threads of the thread pool.",
    "running": "Requests running on the thread pool now.",
    "queued": "Requests queued for the thread pool now.",
    "done": "Requests the thread pool finished.",
    "workers": "Worker processes the pre-fork pool should run.",
    "spawned": "Worker processes the pre-fork pool started.",
    "restarts": "Worker processes started beyond the pool's first ones (replacements, reloads).",
}
_POOL_COUNTERS = frozenset({"done", "spawned", "restarts"})
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Families:
    """Metric families in the order first seen, each with its samples together (as the format requires)."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float | None,
            labels: dict[str, str] | None = None) -> None:
        if value is None:
            return
        name = _NAME.sub("_", name)
        family = self.families.setdefault(name, (kind, help_text, []))
        shown = ",".join(f'{key}="{_escape_label(str(label))}"' for key, label in (labels or {}).items())
        family[2].append(f"{name}{{{shown}}} {_number(value)}" if shown else f"{name} {_number(value)}")

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self.families.items():
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


def render_metrics(snapshot: dict[str, Any]) -> str:
    """A snapshot in the Prometheus text exposition format 0.0.4.

    Counters end in ``_total``; every server's samples carry the labels
    ``server`` (its address, e.g. ``tcp4 127.0.0.1:8000``), ``family`` and
    ``type``. Names: ``reactor_server_<key>_total`` / ``reactor_server_<key>``
    for ``server_stats()`` counters / gauges, ``reactor_server_accept_errors_total``
    (label ``error``), ``reactor_server_truncated_datagrams_total``,
    ``reactor_pool_*`` for a strategy's own numbers, ``reactor_process_*``,
    and ``reactor_ready`` (1 when ``/health`` says 200).
    """
    out = _Families()
    verdict = snapshot.get("health") or health(snapshot)
    out.add("reactor_ready", "gauge", "1 when /health answers 200 (ready, not draining, not saturated), else 0.",
            1 if verdict.get("ok") else 0)
    process = snapshot.get("process", {})
    out.add("reactor_process_uptime_seconds", "gauge", "Seconds since the process started.", process.get("uptime"))
    out.add("reactor_process_open_fds", "gauge", "Open file descriptors.", process.get("fds"))
    out.add("reactor_process_threads", "gauge", "Python threads alive.", process.get("threads"))
    out.add("reactor_process_resident_memory_bytes", "gauge", "Resident memory in bytes.", process.get("rss"))
    for server in snapshot.get("servers", []):
        labels = {"server": str(server.get("address") or server.get("name")),
                  "family": str(server.get("family") or ""), "type": str(server.get("type") or "")}
        out.add("reactor_server_info", "gauge", "One per server; the strategy and the class are labels.", 1,
                dict(labels, strategy=str(server.get("strategy", "")), name=str(server.get("name", ""))))
        state = server.get("state")
        out.add("reactor_server_paused", "gauge", "1 while the server's listener is paused (saturated, at "
                "max_connections, out of descriptors), else 0.", 1 if state == "paused" else 0, labels)
        out.add("reactor_server_draining", "gauge", "1 while the server is leaving, else 0.",
                1 if state == "draining" else 0, labels)
        out.add("reactor_server_active", "gauge", "Requests or connections in flight now (connections open, "
                "requests running on a thread pool, a protocol server's connections).", server.get("active"), labels)
        for key, value in server.get("counters", {}).items():
            out.add(f"reactor_server_{key}_total", "counter", _HELP.get(key, f"{key} (Reactor.server_stats())."),
                    value, labels)
        for key, value in server.get("gauges", {}).items():
            out.add(f"reactor_server_{key}", "gauge", _HELP.get(key, f"{key} (Reactor.server_stats())."),
                    value, labels)
        for error, count in sorted(server.get("accept_errors", {}).items()):
            out.add("reactor_server_accept_errors_total", "counter",
                    "Errors met while taking requests, by errno name (or exception class).", count,
                    dict(labels, error=error))
        out.add("reactor_server_truncated_datagrams_total", "counter",
                "Datagrams dropped as larger than max_packet_size.", server.get("truncated_datagrams"), labels)
        pool = server.get("pool") or {}
        for key, value in pool.items():
            if isinstance(value, bool) or not isinstance(value, int) or key == "arbiter":
                continue
            counter = key in _POOL_COUNTERS
            out.add(f"reactor_pool_{key}{'_total' if counter else ''}", "counter" if counter else "gauge",
                    _POOL_HELP.get(key, f"{key} of the strategy's stats."), value, labels)
        if isinstance(pool.get("pids"), list):
            out.add("reactor_pool_live_workers", "gauge", "Worker processes alive.", len(pool["pids"]), labels)
        if isinstance(pool.get("ready"), list):
            out.add("reactor_pool_ready_workers", "gauge", "Worker processes serving.", len(pool["ready"]), labels)
    return out.render()


# ---------------------------------------------------------------- the human view


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s"


def _size(count: int | None) -> str:
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


_ERROR_KEYS = ("dropped", "exhausted", "io_timeouts", "replies_lost", "proxy_errors", "tls_failures", "timeouts")


def _cells(server: dict[str, Any], previous: dict[str, Any] | None, elapsed: float | None) -> list[str]:
    counters = server.get("counters", {})
    requests = counters.get("requests", 0)
    rate = "-"
    if previous is not None and elapsed:
        before = previous.get("counters", {}).get("requests")
        if isinstance(before, int) and requests >= before:
            rate = f"{(requests - before) / elapsed:.1f}"
    active = str(server["active"]) if server.get("active") is not None else "-"
    refused = (str(counters.get("refused_by_rule", 0) + counters.get("refused_by_limit", 0))
               if "refused_by_rule" in counters else "-")
    errors = sum(counters.get(key, 0) for key in _ERROR_KEYS)
    state = server.get("state", "?")
    if server.get("paused") and state == "paused":
        state = ",".join(server["paused"])
    strategy = str(server.get("strategy", "?"))
    return [str(server.get("address") or server.get("name")), strategy, state, str(requests), rate, active,
            refused, str(errors)]


def render_view(snapshot: dict[str, Any], previous: dict[str, Any] | None = None) -> str:
    """A snapshot as a person reads it at a glance: the process, health, then one row per server.

    With ``previous`` (the snapshot before, as ``--watch`` keeps), REQ/S is the
    rate of requests between the two.
    """
    process = snapshot.get("process", {})
    verdict = snapshot.get("health") or health(snapshot)
    fds = process.get("fds")
    lines = [
        f"reactor pid {process.get('pid', '?')}  {snapshot.get('state', 'ready')}  "
        f"up {_duration(process.get('uptime') or 0)}  threads {process.get('threads', '?')}  "
        f"fds {fds if fds is not None else '?'}  rss {_size(process.get('rss'))}",
        "health: " + ("200 ok" if verdict.get("ok") else "503 " + "; ".join(verdict.get("reasons", []))),
        "",
    ]
    elapsed = None
    before: dict[str, dict[str, Any]] = {}
    if previous is not None:
        elapsed = float(snapshot.get("time", 0)) - float(previous.get("time", 0))
        before = {str(s.get("name")): s for s in previous.get("servers", [])}
    header = ["SERVER", "STRATEGY", "STATE", "REQUESTS", "REQ/S", "ACTIVE", "REFUSED", "ERRORS"]
    rows = [_cells(server, before.get(str(server.get("name"))), elapsed) for server in snapshot.get("servers", [])]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    lines.append(line(header))
    for server, row in zip(snapshot.get("servers", []), rows):
        lines.append(line(row))
        details: list[str] = []
        pool = server.get("pool") or {}
        if isinstance(pool.get("pids"), list):
            exit_info = pool.get("last_exit")
            last = (f"worker {exit_info.get('pid')} {exit_info.get('reason')}" if isinstance(exit_info, dict)
                    else "none")
            details.append(f"workers {len(pool.get('ready', []))}/{pool.get('workers')} ready "
                           f"(pids {' '.join(str(pid) for pid in pool['pids']) or '-'}), "
                           f"restarts {pool.get('restarts', 0)}, last exit: {last}")
        elif "threads" in pool:
            details.append(f"threads {pool.get('threads')} ({pool.get('idle')} idle), queued {pool.get('queued')}")
        errors = server.get("accept_errors") or {}
        if errors:
            details.append("accept errors: " + ", ".join(f"{name} {count}" for name, count in sorted(errors.items())))
        if server.get("truncated_datagrams"):
            details.append(f"truncated datagrams: {server['truncated_datagrams']}")
        lines.extend("    " + detail for detail in details)
    if not rows:
        lines.append("(no server)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the client


def fetch(address: AdminAddress, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """``GET path`` from an admin server: the status and the body.

    Raises:
        OSError: cannot connect, or no complete answer within ``timeout`` (in all).
        ValueError: the answer is not HTTP.
    """
    deadline = time.monotonic() + timeout
    family = socket.AF_UNIX if address.kind == "unix" else socket.AF_INET
    target = address.address
    if address.kind == "tcp" and ":" in address.address[0]:
        family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: reactor\r\n\r\n".encode("ascii"))
        chunks = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{address.url}: no complete answer within {timeout}s")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, sep, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise ValueError(f"{address.url}: not an HTTP answer: {data[:60]!r}")
    return int(status_line[1]), body
