"""The ``reactor`` command (and ``python -m reactor``): serve handlers on addresses, by hand or under systemd.

What it does, in order
----------------------
1. Parse the command line; a bad argument is one line on stderr and exit
   status 2, before anything happens.
2. ``--chdir``, then import every SPEC (``module:attr``) with the working
   directory (or ``--app-dir``) first on ``sys.path``, and load the TLS
   certificates. An unimportable SPEC or a missing certificate stops here.
3. Take the sockets a service manager passed (``LISTEN_FDS``; the variables
   are cleared either way), then bind every ``--bind``. If one fails (a port
   in use), everything bound so far is closed and its socket files removed.
4. Make one server per listening socket: a handler class gets the
   ``reactor.socketserver`` class matching the socket's family and type
   (TCP, UDP, Unix stream, Unix datagram); a factory is called with the
   socket and returns the server (see :func:`adopt_socket`).
5. Write ``--pid-file``, drop privileges (``--user``/``--group``), host the
   servers on one :class:`~reactor.hosting.Reactor` (Prefork pools first: they
   fork before any thread exists), and serve. ``READY=1`` goes to systemd once
   every server listens and every Prefork worker has booted.
6. On SIGTERM or SIGINT: ``STOPPING=1``, stop taking requests, drain every
   server at once (a second signal ends what is left at once), close, remove
   socket files and the pid file, exit 0.

A failure at any step before serving undoes the steps before it: no socket
bound, no child, no socket file and no pid file is left behind, and the exit
status is 1.

Several servers in one process
------------------------------
Options after ``SPEC`` describe its server; each ``--serve SPEC`` starts the
next server, and the options after it (up to the next ``--serve``) are that
server's. Process options (logging, user, pid file...) come before the first
``--serve``.

Signals
-------
TERM/INT: graceful stop (twice: at once). HUP: rolling reload of every
Prefork pool; new workers re-import the handler's module from disk when its
source changed, so new code serves without a dropped connection. TTIN/TTOU:
one Prefork worker more/fewer in every pool. USR1: reopen ``--log-file``.
USR2: whole-process upgrade: a new master (a fresh ``python -m reactor``
with the same arguments) inherits every listening socket; once it is ready
this one drains and exits (see ``reactor.upgrade``).

Statistics
----------
``--admin URL`` serves ``/stats`` (JSON), ``/metrics`` (Prometheus) and
``/health`` (200 ready; 503 starting, draining or saturated) from the same
loop (``reactor.admin``); it keeps answering while the servers drain.
``reactor stats URL [--watch [SECONDS]]`` shows them to a person.

Library code below this module never exits the process: only :func:`main`
turns errors into exit statuses.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import grp
import http.server
import importlib
import json
import logging
import logging.handlers
import os
import pwd
import signal
import socket
import socketserver as std_socketserver
import ssl
import stat
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import socketserver as rsocketserver
from .access import AccessRules
from .admin import AdminAddress, AdminServer, bind_admin, fetch, health, parse_admin_url, render_view
from .admission import AdmissionOptions
from .binding import UnixSocketPath, create_server_socket, describe_address
from .dispatch import Dispatch, Inline, ThreadPool
from .hosting import Reactor, Topology
from .prefork import Prefork
from .systemd import ActivatedSocket, Notifier, listen_fds
from .upgrade import Successor, Upgrade, successor_command

__all__ = ["BindAddress", "StartupError", "UsageError", "adopt_socket", "main", "parse_bind", "parse_dispatch",
           "server_class_for"]

logger = logging.getLogger(__name__)

PROG = "reactor"
DEFAULT_BIND = "tcp://127.0.0.1:8000"

#: How often readiness (every Prefork worker booted) is checked while starting or reloading.
_READY_POLL = 0.02


class UsageError(ValueError):
    """A bad command line: reported in one line, exit status 2."""


class StartupError(RuntimeError):
    """The command cannot start (unimportable SPEC, address in use, missing certificate...): exit status 1."""


# ---------------------------------------------------------------- bind URLs

_BIND_KINDS = ("tcp", "udp", "unix", "unix-dgram", "fd", "systemd")
_DATAGRAM_KINDS = ("udp", "unix-dgram")


@dataclasses.dataclass(frozen=True)
class BindAddress:
    """One ``--bind`` URL, parsed.

    Attributes:
        url: the URL as given.
        kind: ``tcp``, ``udp``, ``unix``, ``unix-dgram``, ``fd`` or ``systemd``.
        address: ``(host, port)`` for tcp/udp; a path, or ``"\\0name"`` for an
            abstract name, for unix/unix-dgram; the descriptor for fd; the
            name (None: every activated socket) for systemd.
    """

    url: str
    kind: str
    address: Any

    @property
    def datagram(self) -> bool | None:
        """True for a datagram URL, False for a stream one, None when only the socket will tell."""
        if self.kind in ("fd", "systemd"):
            return None
        return self.kind in _DATAGRAM_KINDS


def parse_bind(url: str) -> BindAddress:
    """Parse a ``--bind`` URL (see ``reactor --help``).

    Raises:
        UsageError: not one of the URL forms, with what was expected.
    """
    kind, sep, rest = url.partition("://")
    if not sep or kind not in _BIND_KINDS:
        raise UsageError(f"--bind {url!r}: expected tcp://HOST:PORT, udp://HOST:PORT, unix:///PATH, "
                         "unix://@NAME, unix-dgram:///PATH, fd://N or systemd://[NAME]")
    if kind in ("tcp", "udp"):
        host, colon, port_text = rest.rpartition(":")
        if not colon or not port_text.isdigit() or int(port_text) > 65535:
            raise UsageError(f"--bind {url!r}: expected {kind}://HOST:PORT with a port from 0 to 65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
            except OSError:
                raise UsageError(f"--bind {url!r}: {host!r} is not an IPv6 address") from None
        elif ":" in host:
            raise UsageError(f"--bind {url!r}: write an IPv6 address in brackets: {kind}://[{host}]:{port_text}")
        return BindAddress(url, kind, (host or "0.0.0.0", int(port_text)))
    if kind in ("unix", "unix-dgram"):
        if not rest or rest == "@":
            raise UsageError(f"--bind {url!r}: expected {kind}:///PATH or {kind}://@NAME")
        return BindAddress(url, kind, "\0" + rest[1:] if rest.startswith("@") else rest)
    if kind == "fd":
        if not rest.isdigit() or int(rest) < 3:
            raise UsageError(f"--bind {url!r}: expected fd://N with N an inherited descriptor, 3 or more")
        return BindAddress(url, kind, int(rest))
    if ":" in rest:
        raise UsageError(f"--bind {url!r}: a systemd socket name has no ':'")
    return BindAddress(url, kind, rest or None)


# ---------------------------------------------------------------- dispatch


@dataclasses.dataclass(frozen=True)
class DispatchSpec:
    """A parsed ``--dispatch``: a kind and its numbers; ``make()`` builds a fresh strategy."""

    kind: str  # "inline", "threads" or "prefork"
    count: int = 0
    threads: int = 0
    max_requests: int = 0

    def __str__(self) -> str:
        if self.kind == "inline":
            return "inline"
        if self.kind == "threads":
            return f"threads:{self.count}"
        extra = f",threads={self.threads}" if self.threads else ""
        extra += f",max_requests={self.max_requests}" if self.max_requests else ""
        return f"prefork:{self.count}{extra}"


def parse_dispatch(text: str) -> DispatchSpec:
    """Parse ``inline``, ``threads:N`` or ``prefork:N[,threads=T][,max_requests=M]``.

    Raises:
        UsageError: anything else.
    """
    expected = f"--dispatch {text!r}: expected inline, threads:N or prefork:N[,threads=T][,max_requests=M]"
    if text == "inline":
        return DispatchSpec("inline")
    kind, colon, rest = text.partition(":")
    parts = rest.split(",")
    if not colon or not parts[0].isdigit() or int(parts[0]) < 1:
        raise UsageError(expected + " with N at least 1")
    count = int(parts[0])
    if kind == "threads" and len(parts) == 1:
        return DispatchSpec("threads", count)
    if kind != "prefork":
        raise UsageError(expected)
    options = {"threads": 0, "max_requests": 0}
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        key = key.replace("-", "_")
        if not equals or key not in options or not value.isdigit():
            raise UsageError(expected)
        options[key] = int(value)
    return DispatchSpec("prefork", count, options["threads"], options["max_requests"])


# ---------------------------------------------------------------- the command line

_EPILOG = f"""\
examples:
  # An unmodified http.server handler on port 8000 (the working directory's files):
  {PROG} http.server:SimpleHTTPRequestHandler --bind tcp://127.0.0.1:8000

  # Your handler (myapp.py in the working directory) on IPv4, IPv6 and a Unix socket, 4 threads each:
  {PROG} myapp:EchoHandler --bind tcp://0.0.0.0:9000 --bind tcp://[::]:9000 \\
      --bind unix:///run/myapp.sock --dispatch threads:4

  # Two servers in one process: HTTP with 4 pre-forked workers, a UDP handler inline:
  {PROG} myapp:WebHandler --bind tcp://127.0.0.1:8080 --dispatch prefork:4 \\
         --serve myapp:DnsHandler --bind udp://127.0.0.1:5353

  # TLS, behind a load balancer speaking PROXY protocol, at most 1000 connections:
  {PROG} myapp:WebHandler --bind tcp://0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem \\
      --proxy-protocol v2 --proxy-trusted 10.0.0.0/8 --max-connections 1000 --io-timeout 30

  # Statistics for people and for Prometheus on a loopback port, then a live view of them:
  {PROG} myapp:WebHandler --bind tcp://0.0.0.0:8080 --dispatch threads:8 --admin tcp://127.0.0.1:9100
  {PROG} stats tcp://127.0.0.1:9100 --watch

  # Under systemd (a .socket unit passes the listener; Type=notify gets READY=1):
  {PROG} myapp:WebHandler --bind systemd://web --dispatch prefork:4 --log-format json

SPEC is module:attr. A handler class (a socketserver.BaseRequestHandler,
e.g. an http.server handler) is served by the reactor.socketserver server
class matching each bound socket (TCP, UDP, Unix stream or datagram). Any
other callable is a server factory: it is called with each bound socket and
returns the server that serves it (see reactor.cli.adopt_socket).

bind URLs:
  tcp://HOST:PORT  tcp://[::1]:PORT   TCP over IPv4, or IPv6 only (port 0: any free port)
  udp://HOST:PORT                     UDP
  unix:///PATH  unix://@NAME          Unix stream socket (path, or Linux abstract name)
  unix-dgram:///PATH                  Unix datagram socket
  fd://N                              a listening socket inherited as descriptor N
  systemd://NAME  systemd://          socket-activated sockets named NAME (FileDescriptorName=), or all

signals:
  TERM, INT   stop gracefully: drain every server, then exit (a second one: at once)
  HUP         reload: new Prefork workers (new code of the handler's module), then the old ones retire
  TTIN, TTOU  one Prefork worker more / fewer, in every pool
  USR1        reopen --log-file (after logrotate moved it)
  USR2        upgrade: start a new master (new code) on the same sockets; once it
              is ready, this one drains and exits (its pid is in --pid-file)

exit status: 0 after a stop by signal, 1 if it could not start or a pool failed, 2 for bad arguments.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with every error as one line (``reactor: error: ...``) and exit status 2."""

    #: Prefixed to errors (``--serve: ``) for a ``--serve`` group.
    context = ""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {self.context}{message} (see {PROG} --help)\n")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server options (for the SPEC they follow)")
    group.add_argument("--bind", "-b", metavar="URL", action="append", default=[],
                       help=f"an address to serve (repeatable; default {DEFAULT_BIND}); see bind URLs below")
    group.add_argument("--dispatch", "-d", metavar="HOW", default="inline", type=_checked(parse_dispatch),
                       help="where requests run: inline (the loop's thread, the default), threads:N (a pool of N "
                            "threads), prefork:N[,threads=T][,max_requests=M] (N worker processes, each with T "
                            "threads); each bound address gets its own pool")
    group.add_argument("--graceful-timeout", metavar="SECONDS", type=_positive(float, allow_zero=True),
                       default=30.0, help="how long requests in flight may take when stopping or reloading "
                                          "(default 30)")
    group.add_argument("--reuse-port", action="store_true",
                       help="set SO_REUSEPORT, so independent processes can share the port (connections "
                            "queued on a process that exits are lost: see the README)")
    group.add_argument("--socket-mode", metavar="OCTAL", type=_octal,
                       help="permissions of Unix socket files this command creates (e.g. 660)")
    conn = parser.add_argument_group("connection options (stream servers: TCP, Unix stream)")
    conn.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain (PEM)")
    conn.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM; default: in --tls-cert)")
    conn.add_argument("--proxy-protocol", metavar="MODE", choices=("v1", "v2", "any"),
                      help="expect a PROXY protocol header: v1, v2 or any")
    conn.add_argument("--proxy-trusted", metavar="CIDR", action="append", default=[],
                      help="accept PROXY headers only from this network (repeatable; default: from anyone)")
    conn.add_argument("--allow", metavar="RULE", action="append", default=[],
                      help="admit only these clients: a network (10.0.0.0/8) or, on Unix sockets, uid:N/gid:N "
                           "(repeatable)")
    conn.add_argument("--deny", metavar="RULE", action="append", default=[],
                      help="refuse these clients (repeatable; wins over --allow)")
    conn.add_argument("--max-connections", metavar="N", type=_positive(int),
                      help="open connections at most; beyond it, new ones wait in the kernel backlog")
    conn.add_argument("--max-connections-per-ip", metavar="N", type=_positive(int),
                      help="open connections at most per client IP address")
    conn.add_argument("--io-timeout", metavar="SECONDS", type=_positive(float, allow_zero=True),
                      help="timeout of the handler's socket: no client holds a worker longer than that per read "
                           "(default: 30 for --dispatch inline, none otherwise; 0: none)")
    conn.add_argument("--keepalive-timeout", metavar="SECONDS", type=_positive(float, allow_zero=True),
                      help="seconds a keep-alive connection may wait parked between two requests, holding no "
                           "thread (handlers with a request boundary, e.g. HTTP/1.1 http.server ones; default 5; "
                           "0: off)")
    conn.add_argument("--wait-for-data", metavar="SECONDS", type=_positive(float),
                      help="hand a connection to the handler only once the client sent something, within "
                           "this time")
    slow = parser.add_argument_group(
        "slow clients (stream servers whose handler exposes a request boundary, e.g. http.server ones: "
        "the loop reads each request whole and writes each reply behind it)")
    slow.add_argument("--no-read-ahead", dest="read_ahead", action="store_const", const=False,
                      help="let handlers read and write their sockets themselves (a slow client holds a worker)")
    slow.add_argument("--request-head-timeout", metavar="SECONDS", type=_positive(float),
                      help="seconds from a request's first byte to the end of its head, then 408 (default 10)")
    slow.add_argument("--request-body-timeout", metavar="SECONDS", type=_positive(float),
                      help="window of the request body's minimum rate: each must bring "
                           "--request-body-min-rate times this many bytes, or the rest, then 408 (default 10)")
    slow.add_argument("--request-body-min-rate", metavar="BYTES", type=_positive(int),
                      help="bytes per second a request body must keep up over each window (default 1024)")
    slow.add_argument("--max-request-head", metavar="BYTES", type=_positive(int),
                      help="request line and headers at most, then 431 (default 65536)")
    slow.add_argument("--max-request-headers", metavar="N", type=_positive(int),
                      help="header fields at most, then 431 (default 100)")
    slow.add_argument("--max-request-body", metavar="BYTES", type=_positive(int),
                      help="request body at most, then 413 (default 1 GiB)")
    slow.add_argument("--request-body-in-memory", metavar="BYTES", type=_positive(int),
                      help="request body bytes held in memory; the rest is spooled to a temporary file "
                           "(default 65536)")
    slow.add_argument("--write-buffer-in-memory", metavar="BYTES", type=_positive(int),
                      help="reply bytes held in memory; the rest is spooled to a temporary file (default 65536)")
    slow.add_argument("--write-buffer-limit", metavar="BYTES", type=_positive(int),
                      help="reply bytes buffered at most; above it the handler's write waits (default 16 MiB; "
                           "past --write-buffer-in-memory they wait in a temporary file)")
    slow.add_argument("--send-timeout", metavar="SECONDS", type=_positive(float),
                      help="window of a reply's minimum rate: in each the client must take --send-min-rate "
                           "times this many bytes, or the rest (default 10)")
    slow.add_argument("--send-min-rate", metavar="BYTES", type=_positive(int),
                      help="bytes per second a client must take its reply at over each window, or it is "
                           "disconnected (default 1024)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line (its ``--help`` is the command's manual)."""
    parser = _Parser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        usage=f"{PROG} [OPTIONS] SPEC [SERVER OPTIONS] [--serve SPEC [SERVER OPTIONS]]...",
        description="Serve socketserver-style handlers on TCP, UDP and Unix sockets from one process: "
                    "one event loop, requests inline, on threads or in pre-forked workers.")
    parser.add_argument("spec", metavar="SPEC", nargs="?",
                        help="module:attr, a handler class or a server factory (see below)")
    parser.add_argument("--serve", metavar="SPEC",
                        help="start another server; the options after it (up to the next --serve) are its own")
    process = parser.add_argument_group("process options (before the first --serve)")
    process.add_argument("--log-level", metavar="LEVEL", default="info",
                         choices=("debug", "info", "warning", "error", "critical"),
                         help="debug, info (default), warning, error or critical")
    process.add_argument("--log-format", metavar="FORMAT", default="text", choices=("text", "json"),
                         help="text (for people, the default) or json (one JSON object per line)")
    process.add_argument("--log-file", metavar="PATH",
                         help="log to this file instead of stderr (SIGUSR1 reopens it)")
    process.add_argument("--user", "-u", metavar="USER", help="switch to this user (name or uid) after binding")
    process.add_argument("--group", "-g", metavar="GROUP",
                         help="switch to this group (name or gid) after binding (default: the user's group)")
    process.add_argument("--pid-file", metavar="PATH", help="write the process id here while serving")
    process.add_argument("--chdir", metavar="DIR", help="change to this directory before importing SPEC")
    process.add_argument("--app-dir", metavar="DIR",
                         help="import SPEC from this directory (default: the working directory)")
    process.add_argument("--admin", metavar="URL",
                         help="serve statistics over HTTP here: tcp://127.0.0.1:PORT or unix:///PATH (mode 0600); "
                              "GET /stats (JSON), /metrics (Prometheus), /health (200 ready, 503 starting, "
                              "draining or saturated); read it with: reactor stats URL")
    process.add_argument("--admin-public", action="store_true",
                         help="allow --admin on a non-loopback TCP address or an abstract Unix name "
                              "(anyone who reaches it reads the statistics)")
    process.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_server_options(parser)
    return parser


def _server_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} ... --serve", add_help=False,
                     usage=f"{PROG} ... --serve SPEC [SERVER OPTIONS]")
    parser.context = "--serve: "
    parser.add_argument("spec", metavar="SPEC")
    _add_server_options(parser)
    return parser


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("reactor")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _checked(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None
    convert.__name__ = parse.__name__
    return convert


def _positive(kind: type[int] | type[float], allow_zero: bool = False) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'0 or more' if allow_zero else 'positive'}")
        return value
    convert.__name__ = kind.__name__
    return convert


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 660") from None


@dataclasses.dataclass
class ServerConfig:
    """One server of the command line: what to serve, where, and how."""

    spec: str
    binds: list[BindAddress]
    dispatch: DispatchSpec
    graceful_timeout: float
    reuse_port: bool
    socket_mode: int | None
    tls_cert: str | None
    tls_key: str | None
    #: ``Reactor.add_server`` connection keywords (ssl_context aside), already validated.
    connection: dict[str, Any]


@dataclasses.dataclass
class Config:
    """The whole command line."""

    servers: list[ServerConfig]
    log_level: str
    log_format: str
    log_file: str | None
    user: str | None
    group: str | None
    pid_file: str | None
    chdir: str | None
    app_dir: str | None
    admin: AdminAddress | None = None


def parse_command_line(argv: Sequence[str]) -> Config:
    """Parse the whole command line (``--serve`` groups included).

    Raises:
        SystemExit: argparse's own exits (``--help``, ``--version``; status 2 for errors).
        UsageError: an inconsistent combination argparse cannot see.
    """
    segments: list[list[str]] = [[]]
    for token in argv:
        if token == "--serve":
            segments.append([])
        elif token.startswith("--serve="):
            segments.append([token.partition("=")[2]])
        else:
            segments[-1].append(token)
    first = build_parser().parse_args(segments[0])
    groups = [first] + [_server_parser().parse_args(segment) for segment in segments[1:]]
    if first.spec is None:
        if len(groups) == 1:
            raise UsageError("give a SPEC to serve (module:attr), e.g. http.server:SimpleHTTPRequestHandler")
        raise UsageError("the first server needs a SPEC too: SPEC [OPTIONS] --serve SPEC [OPTIONS]")
    servers = [_server_config(namespace, index) for index, namespace in enumerate(groups)]
    admin = None
    if first.admin is not None:
        try:
            admin = parse_admin_url(first.admin, public=first.admin_public)
        except ValueError as exc:
            raise UsageError(f"--admin {exc}") from None
    if first.user is not None:
        _user_ids(first.user, first.group)
    elif first.group is not None:
        _group_id(first.group)
    return Config(servers=servers, log_level=first.log_level, log_format=first.log_format, log_file=first.log_file,
                  user=first.user, group=first.group, pid_file=first.pid_file, chdir=first.chdir,
                  app_dir=first.app_dir, admin=admin)


#: The read-ahead options (``add_server`` keywords), each a flag of the same name.
_SLOW_CLIENT_OPTIONS = (
    "read_ahead", "request_head_timeout", "request_body_timeout", "request_body_min_rate", "max_request_head",
    "max_request_headers", "max_request_body", "request_body_in_memory", "write_buffer_in_memory",
    "write_buffer_limit", "send_timeout", "send_min_rate")


def _server_config(namespace: argparse.Namespace, index: int) -> ServerConfig:
    spec = namespace.spec
    module, colon, attr = spec.partition(":")
    if not colon or not module or not attr:
        raise UsageError(f"SPEC {spec!r}: expected module:attr, e.g. http.server:SimpleHTTPRequestHandler")
    urls = namespace.bind or ([DEFAULT_BIND] if index == 0 else [])
    if not urls:
        raise UsageError(f"--serve {spec}: give it at least one --bind (only the first server has a default)")
    binds = [parse_bind(url) for url in urls]
    if namespace.tls_key and not namespace.tls_cert:
        raise UsageError(f"{spec}: --tls-key needs --tls-cert")
    connection: dict[str, Any] = {key: value for key, value in (
        ("proxy_protocol", namespace.proxy_protocol), ("proxy_trusted", tuple(namespace.proxy_trusted)),
        ("allow", tuple(namespace.allow)), ("deny", tuple(namespace.deny)),
        ("max_connections", namespace.max_connections),
        ("max_connections_per_ip", namespace.max_connections_per_ip),
        ("io_timeout", namespace.io_timeout), ("wait_for_data", namespace.wait_for_data),
        ("keepalive_timeout", namespace.keepalive_timeout))
        if value is not None and value != ()}
    connection.update({name: getattr(namespace, name) for name in _SLOW_CLIENT_OPTIONS
                       if getattr(namespace, name) is not None})
    try:  # check networks and rules now, not after binding
        AdmissionOptions(**connection)
        AccessRules(namespace.allow, namespace.deny)
        AccessRules(allow=namespace.proxy_trusted)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{spec}: {exc}") from None
    if connection or namespace.tls_cert:
        datagrams = [bind.url for bind in binds if bind.datagram]
        if datagrams:
            raise UsageError(f"{spec}: connection options (TLS, PROXY, limits, --io-timeout...) apply to stream "
                             f"servers, not to {', '.join(datagrams)}")
    return ServerConfig(spec=spec, binds=binds, dispatch=namespace.dispatch,
                        graceful_timeout=namespace.graceful_timeout, reuse_port=namespace.reuse_port,
                        socket_mode=namespace.socket_mode, tls_cert=namespace.tls_cert, tls_key=namespace.tls_key,
                        connection=connection)


def _user_ids(user: str, group: str | None) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if user.isdigit():
            return int(user), _group_id(group) if group is not None else int(user)
        raise UsageError(f"--user {user!r}: no such user") from None
    return entry.pw_uid, _group_id(group) if group is not None else entry.pw_gid


def _group_id(group: str) -> int:
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--group {group!r}: no such group") from None


# ---------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, pid, message, extra fields, exception."""

    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ReopenableFileHandler(logging.handlers.WatchedFileHandler):
    """A log file that ``reopen()`` (SIGUSR1) reopens at its path.

    A watched file too: a forked Prefork worker, which never receives the
    master's SIGUSR1, reopens the path by itself at its next record once
    logrotate has moved the file away.
    """

    def reopen(self) -> None:
        """Close the stream and open the path again (after the file was moved away)."""
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
            self.stream = self._open()
            self._statstream()
        finally:
            self.release()


def configure_logging(config: Config) -> logging.Handler:
    """Send every logger's records (the root's) to stderr or ``--log-file``, in the chosen format."""
    handler: logging.Handler
    if config.log_file is not None:
        try:
            handler = ReopenableFileHandler(config.log_file)
        except OSError as exc:
            raise StartupError(f"cannot open --log-file {config.log_file}: {exc.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    if config.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    return handler


# ---------------------------------------------------------------- sockets and servers


@dataclasses.dataclass(eq=False)
class Listener:
    """A listening socket the command serves, and the socket file it must remove (if it bound one)."""

    bind: BindAddress
    sock: socket.socket
    unix_path: UnixSocketPath | None = None

    @property
    def description(self) -> str:
        return describe_address(self.sock.family, self.sock.type, self.sock.getsockname())

    def close(self) -> None:
        self.sock.close()
        if self.unix_path is not None:
            self.unix_path.unlink()
            self.unix_path = None


def _family_for(bind: BindAddress) -> tuple[int, int]:
    sock_type = socket.SOCK_DGRAM if bind.datagram else socket.SOCK_STREAM
    if bind.kind in ("unix", "unix-dgram"):
        return socket.AF_UNIX, sock_type
    return socket.AF_INET, sock_type  # create_server_socket picks AF_INET6 for an IPv6 literal


def open_listeners(server: ServerConfig, activated: list[ActivatedSocket], used: set[int]) -> list[Listener]:
    """Bind (or take over) every socket of ``server``; on a failure, close those it made and raise.

    Args:
        activated: the sockets passed by a service manager.
        used: descriptors already taken by another ``--bind`` (updated).

    Raises:
        StartupError: an address cannot be bound, a descriptor is not a socket, no activated socket has the name.
    """
    listeners: list[Listener] = []
    try:
        for bind in server.binds:
            listeners.extend(_open(bind, server, activated, used))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def _open(bind: BindAddress, server: ServerConfig, activated: list[ActivatedSocket],
          used: set[int]) -> list[Listener]:
    if bind.kind == "systemd":
        chosen = [item for item in activated if bind.address is None or item.name == bind.address]
        if not chosen:
            names = ", ".join(sorted({item.name for item in activated})) or "none"
            raise StartupError(f"--bind {bind.url}: no socket-activated socket "
                               f"{'at all' if bind.address is None else 'named ' + repr(bind.address)} "
                               f"(LISTEN_FDNAMES gave: {names})")
        result = []
        for item in chosen:
            if item.sock.fileno() in used:
                raise StartupError(f"--bind {bind.url}: descriptor {item.sock.fileno()} is served twice")
            if item.sock.type == socket.SOCK_STREAM and not item.sock.getsockopt(socket.SOL_SOCKET,
                                                                                 socket.SO_ACCEPTCONN):
                raise StartupError(f"--bind {bind.url}: descriptor {item.sock.fileno()} ({item.name}) is not a "
                                   "listening socket (a socket unit with Accept=yes passes connections: use "
                                   "Accept=no)")
            used.add(item.sock.fileno())
            result.append(Listener(bind, item.sock))
        return result
    if bind.kind == "fd":
        fd = bind.address
        if fd in used:
            raise StartupError(f"--bind {bind.url}: descriptor {fd} is served twice")
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise StartupError(f"--bind {bind.url}: descriptor {fd} is not open ({exc.strerror})") from None
        if not stat.S_ISSOCK(mode):
            raise StartupError(f"--bind {bind.url}: descriptor {fd} is not a socket")
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        try:
            if sock.type == socket.SOCK_STREAM and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.listen(socket.SOMAXCONN)  # bound but not listening yet: never re-bound, only listened on
        except OSError as exc:
            sock.close()
            raise StartupError(f"--bind {bind.url}: descriptor {fd} cannot listen ({exc.strerror}); "
                               "is it a bound, unconnected socket?") from None
        used.add(fd)
        return [Listener(bind, sock)]
    family, sock_type = _family_for(bind)
    try:
        # IPv6 binds serve IPv6 only, so tcp://0.0.0.0:P and tcp://[::]:P can be bound side by side.
        sock, unix_path = create_server_socket(family, sock_type, bind.address, backlog=socket.SOMAXCONN,
                                               reuse_port=server.reuse_port, mode=server.socket_mode,
                                               v6only=True)
    except (OSError, ValueError, TypeError, OverflowError) as exc:
        raise StartupError(f"--bind {bind.url}: {exc}") from None
    used.add(sock.fileno())
    return [Listener(bind, sock, unix_path)]


def adopt_socket(server_class: Callable[..., Any], sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
    """Make a socketserver-style server that serves an already bound (and listening) ``sock``.

    ``server_class(sock.getsockname(), *args, bind_and_activate=False,
    **kwargs)``, whose own unbound socket is replaced by ``sock``. For the
    factories the command takes::

        def make_server(sock):
            return adopt_socket(xmlrpc.server.SimpleXMLRPCServer, sock, logRequests=False)

    Works with ``reactor.socketserver`` and stdlib classes (their constructor
    takes ``bind_and_activate``). The server owns ``sock`` from then on.
    """
    server = server_class(sock.getsockname(), *args, bind_and_activate=False, **kwargs)
    server.socket.close()
    server.socket = sock
    server.server_address = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(server, http.server.HTTPServer):
        server.server_name, server.server_port = str(server.server_address[0]), int(server.server_address[1])
    return server


def server_class_for(sock: socket.socket) -> Callable[..., Any]:
    """The ``reactor.socketserver`` class for a bound socket: TCP, UDP, Unix stream or Unix datagram server."""
    datagram = sock.type == socket.SOCK_DGRAM
    if sock.family == socket.AF_UNIX:
        return rsocketserver.UnixDatagramServer if datagram else rsocketserver.UnixStreamServer
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return rsocketserver.UDPServer if datagram else rsocketserver.TCPServer
    raise StartupError(f"cannot serve a socket of family {sock.family!r}")


@dataclasses.dataclass
class Served:
    """A SPEC, imported: a handler class, or a server factory."""

    spec: str
    target: Any
    is_handler: bool

    def make_server(self, listener: Listener) -> Any:
        """The server for ``listener``'s socket (it owns the socket from then on)."""
        if self.is_handler:
            server = adopt_socket(server_class_for(listener.sock), listener.sock, self.target)
            if issubclass(self.target, http.server.BaseHTTPRequestHandler) and not hasattr(server, "server_name"):
                host = server.server_address[0] if isinstance(server.server_address, tuple) else "localhost"
                port = server.server_address[1] if isinstance(server.server_address, tuple) else 0
                server.server_name, server.server_port = str(host), int(port)
            return server
        try:
            server = self.target(listener.sock)
        except Exception as exc:
            raise StartupError(f"{self.spec}({listener.description}) failed: {exc!r}") from exc
        fileno = getattr(server, "fileno", None)
        if not callable(fileno) or fileno() != listener.sock.fileno():
            raise StartupError(f"{self.spec} returned {server!r}, not a server of the socket it was given "
                               "(a factory returns e.g. reactor.cli.adopt_socket(ServerClass, sock, ...))")
        return server


def import_spec(spec: str) -> Served:
    """Import ``module:attr`` (attr may be dotted).

    Raises:
        StartupError: the module cannot be imported, has no such attribute, or it is not servable.
    """
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise StartupError(f"cannot import {module_name!r} (from SPEC {spec}): {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise StartupError(f"SPEC {spec}: module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(target, type) and issubclass(target, std_socketserver.BaseRequestHandler):
        return Served(spec, target, is_handler=True)
    if isinstance(target, type) and issubclass(target, std_socketserver.BaseServer):
        raise StartupError(f"SPEC {spec} is a server class; name its handler class, or a factory taking the "
                           "bound socket (see reactor.cli.adopt_socket)")
    if not callable(target):
        raise StartupError(f"SPEC {spec} is neither a handler class nor a server factory: {target!r}")
    return Served(spec, target, is_handler=False)


def load_tls(server: ServerConfig) -> ssl.SSLContext | None:
    """The server-side TLS context of ``--tls-cert``/``--tls-key``, or None.

    Raises:
        StartupError: a file is missing or unreadable, or the key does not match the certificate.
    """
    if server.tls_cert is None:
        return None
    for path in (server.tls_cert, server.tls_key):
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:  # ssl's own error does not name the file
                raise StartupError(f"{server.spec}: cannot load the TLS certificate: {path}: {exc.strerror}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        shown = server.tls_cert + (f" / {server.tls_key}" if server.tls_key else "")
        raise StartupError(f"{server.spec}: cannot load the TLS certificate {shown}: {exc}") from None
    return context


# ---------------------------------------------------------------- code reload in Prefork workers


class CodeReloader:
    """``Prefork(on_worker_start=...)``: in a new worker, re-import the handler's module if its source changed.

    The arbiter forks workers from its copy of the master's memory, so a
    worker starts with the code the master imported. This hook (run in the
    worker, after the fork) compares the module's source file with what it
    was at startup and, if it changed, re-imports the module
    (``importlib.reload``) and serves the handler class of the new code. So
    SIGHUP (a rolling reload) brings new code into new workers while the old
    ones drain. Only that one module is re-imported, not the modules it
    imports. If the new code cannot be imported, the worker logs why and
    serves the code it has, rather than failing to boot (which would stop
    the whole pool).
    """

    def __init__(self, server: Any, handler: type) -> None:
        self.server = server
        self.module_name = handler.__module__
        self.qualname = handler.__qualname__
        module = sys.modules.get(self.module_name)
        self.path: str | None = getattr(module, "__file__", None)
        self.stamp = self._stamp()

    @classmethod
    def for_server(cls, server: Any) -> CodeReloader | None:
        """A reloader for ``server``'s ``RequestHandlerClass``, or None if it cannot be re-imported."""
        handler = getattr(server, "RequestHandlerClass", None)
        if not isinstance(handler, type) or "<locals>" in handler.__qualname__:
            return None
        module = sys.modules.get(handler.__module__)
        if module is None or getattr(module, "__file__", None) is None or handler.__module__ == "__main__":
            return None
        return cls(server, handler)

    def _stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def __call__(self) -> None:
        if self._stamp() == self.stamp:
            return
        try:
            module = importlib.reload(sys.modules[self.module_name])
            handler: Any = module
            for part in self.qualname.split("."):
                handler = getattr(handler, part)
        except Exception:
            logger.exception("worker %d: cannot re-import %s; serving the code loaded at start",
                             os.getpid(), self.module_name)
            return
        self.server.RequestHandlerClass = handler
        logger.info("worker %d: re-imported %s (its source changed)", os.getpid(), self.module_name,
                    extra={"event": "code_reloaded", "reloaded_module": self.module_name})


# ---------------------------------------------------------------- running


@dataclasses.dataclass(eq=False)
class Hosted:
    """A server the command hosts, with its listener and strategy."""

    config: ServerConfig
    listener: Listener
    server: Any
    dispatch: Dispatch | Topology
    ssl_context: ssl.SSLContext | None

    @property
    def pool(self) -> Prefork | None:
        return self.dispatch if isinstance(self.dispatch, Prefork) else None


def _make_dispatch(config: ServerConfig, server: Any) -> Dispatch | Topology:
    spec = config.dispatch
    if spec.kind == "inline":
        return Inline()
    if spec.kind == "threads":
        return ThreadPool(spec.count, drain_timeout=config.graceful_timeout)
    return Prefork(spec.count, threads=spec.threads, max_requests=spec.max_requests,
                   max_requests_jitter=spec.max_requests // 10, graceful_timeout=config.graceful_timeout,
                   on_worker_start=CodeReloader.for_server(server))


#: The position ``--admin``'s socket takes among the listeners an upgrade hands over.
_ADMIN_SERVER = -1


class _AdminListener:
    """``--admin``'s socket as an upgrade sees a listener; its Unix file is the admin server's."""

    def __init__(self, admin: AdminServer, address: AdminAddress) -> None:
        self.admin = admin
        self.bind = address
        self.sock: socket.socket = admin.sock

    @property
    def unix_path(self) -> UnixSocketPath | None:
        return self.admin.unix_path

    @unix_path.setter
    def unix_path(self, value: UnixSocketPath | None) -> None:
        self.admin.unix_path = value


class Command:
    """One run of the command: start everything or nothing, serve, stop cleanly."""

    def __init__(self, config: Config, log_handler: logging.Handler | None = None,
                 argv: Sequence[str] | None = None) -> None:
        self.config = config
        self.log_handler = log_handler
        self.notifier = Notifier()
        # SIGUSR2 starts the same command line in the directory we started in (before --chdir).
        self.upgrade = Upgrade(successor_command(sys.argv[1:] if argv is None else argv), cwd=os.getcwd(),
                               notifier=self.notifier)
        self.successor: Successor | None = None
        self.reactor: Reactor | None = None
        self.hosted: list[Hosted] = []
        self.listeners: list[Listener] = []
        self.pid_file_written = False
        self.admin: AdminServer | None = None
        self._reload_pending: dict[int, set[int]] | None = None
        #: Each pool's ``reloads_aborted`` when the pending reload began.
        self._reload_aborts: dict[int, int] = {}
        self._ready = False
        self._stopping = False

    # -- starting --------------------------------------------------------------

    def run(self) -> int:
        """Start, serve until a stop signal, stop; the exit status.

        Raises:
            StartupError: it could not start (everything started is undone first).
        """
        config = self.config
        if config.chdir is not None:
            try:
                os.chdir(config.chdir)
            except OSError as exc:
                raise StartupError(f"--chdir {config.chdir}: {exc.strerror}") from None
        app_dir = os.path.abspath(config.app_dir or os.getcwd())
        if app_dir not in sys.path:
            sys.path.insert(0, app_dir)
        served = [import_spec(server.spec) for server in config.servers]
        contexts = [load_tls(server) for server in config.servers]
        try:
            activated = listen_fds()  # clears LISTEN_* whether we use them or not
        except ValueError as exc:
            raise StartupError(f"socket activation: {exc}") from None
        try:
            self.successor = Successor.from_environment()  # an upgrade's new master: inherited sockets
        except ValueError as exc:
            raise StartupError(f"upgrade: {exc}") from None
        # The reactor first: its signal handlers record a SIGTERM that arrives while starting.
        reactor = self.reactor = Reactor()
        try:
            self._install_signal_handlers(reactor)
            self._start(served, contexts, activated)
        except BaseException:
            self._undo()
            raise
        return self._serve(reactor)

    def _start(self, served: list[Served], contexts: list[ssl.SSLContext | None],
               activated: list[ActivatedSocket]) -> None:
        config = self.config
        used: set[int] = set()
        per_server: list[list[Listener]] = []
        inherited_admin: socket.socket | None = None
        try:
            for index, server in enumerate(config.servers):
                taken = self.successor.take(index, server.binds) if self.successor is not None else None
                opened = ([Listener(bind, sock) for bind, sock in taken] if taken is not None
                          else open_listeners(server, activated, used))
                self.listeners.extend(opened)
                per_server.append(opened)
            if config.admin is not None and self.successor is not None:
                taken_admin = self.successor.take(_ADMIN_SERVER, [config.admin])
                inherited_admin = taken_admin[0][1] if taken_admin is not None else None
        finally:
            if self.successor is not None:
                self.successor.close_untaken()
            for item in activated:
                if item.sock.fileno() not in used and item.sock.fileno() >= 0:
                    logger.warning("socket-activated %s (%s) is not served by any --bind; closing it",
                                   describe_address(item.sock.family, item.sock.type, item.sock.getsockname()),
                                   item.name)
                    item.sock.close()
        for server_config, spec, context, opened in zip(config.servers, served, contexts, per_server):
            for listener in opened:
                if (context is not None or server_config.connection) and listener.sock.type != socket.SOCK_STREAM:
                    raise StartupError(f"{server_config.spec}: connection options (TLS, PROXY, limits...) apply "
                                       f"to stream servers, not to {listener.description} ({listener.bind.url})")
                try:
                    server = spec.make_server(listener)
                except StartupError:
                    raise
                except Exception as exc:
                    raise StartupError(f"{spec.spec} on {listener.description}: {exc!r}") from exc
                self.hosted.append(Hosted(server_config, listener, server, _make_dispatch(server_config, server),
                                          context))
        if config.admin is not None:
            self._bind_admin(config.admin, inherited_admin)
        if config.pid_file is not None:
            self._write_pid_file(config.pid_file)
        if (config.user is not None or config.group is not None) and self.successor is None:
            self._drop_privileges()  # (a successor runs as the user the old master switched to)
        reactor = self.reactor
        assert reactor is not None
        # Prefork pools fork before any thread exists (a ThreadPool starts its threads with its first request).
        for hosted in sorted(self.hosted, key=lambda h: h.pool is None):
            keywords: dict[str, Any] = dict(hosted.config.connection)
            if hosted.ssl_context is not None:
                keywords["ssl_context"] = hosted.ssl_context
            try:
                reactor.add_server(hosted.server, hosted.dispatch, **keywords)
            except Exception as exc:
                raise StartupError(f"{hosted.config.spec} on {hosted.listener.description}: {exc}") from exc
            logger.info("serving %s on %s (%s)", hosted.config.spec, hosted.listener.description,
                        hosted.config.dispatch, extra=self._listening_fields(hosted))
        if self.admin is not None:
            self.admin.start()

    def _bind_admin(self, address: AdminAddress, inherited: socket.socket | None) -> None:
        """Bind ``--admin``, or serve the socket an upgrade's old master passed on (not started:
        ``_start`` starts it once the servers are hosted)."""
        assert self.reactor is not None
        unix_path: UnixSocketPath | None = None  # an inherited file becomes ours at ready()
        if inherited is not None:
            sock = inherited
        else:
            try:
                sock, unix_path = bind_admin(address)
            except (OSError, ValueError) as exc:
                raise StartupError(f"--admin {address.url}: {exc}") from None
        self.admin = AdminServer(self.reactor, sock, self.snapshot, unix_path=unix_path)
        where = sock.getsockname()
        fields: dict[str, Any] = {"event": "admin", "url": address.url}
        if isinstance(where, tuple):
            fields["host"], fields["port"] = where[0], where[1]
        else:
            fields["path"] = address.address
        shown = f"{where[0]}:{where[1]}" if isinstance(where, tuple) else address.url
        logger.info("statistics on %s: GET /stats, /metrics, /health", shown, extra=fields)

    def state(self) -> str:
        """``starting`` (until every server listens and every Prefork worker booted), ``ready``,
        ``reloading`` (SIGHUP: old workers serve until new ones are ready), ``draining`` (stopping)."""
        if self._stopping:
            return "draining"
        if not self._ready:
            return "starting"
        return "reloading" if self._reload_pending is not None else "ready"

    def snapshot(self) -> dict[str, Any]:
        """What ``--admin``'s ``/stats`` serves: ``Reactor.stats()``, the command's ``state``, the
        ``health`` verdict (``reactor.admin.health``) and the admin endpoint's own ``admin`` numbers."""
        assert self.reactor is not None
        document: dict[str, Any] = {"state": self.state(), **self.reactor.stats()}
        document["health"] = health(document)
        if self.admin is not None:
            document["admin"] = {"url": self.admin_url, "responses": {str(status): count for status, count
                                                                      in sorted(self.admin.responses.items())}}
        return document

    @property
    def admin_url(self) -> str | None:
        return self.config.admin.url if self.config.admin is not None else None

    @staticmethod
    def _listening_fields(hosted: Hosted) -> dict[str, Any]:
        address = hosted.listener.sock.getsockname()
        fields: dict[str, Any] = {"event": "listening", "spec": hosted.config.spec, "bind": hosted.listener.bind.url,
                                  "address": hosted.listener.description, "dispatch": str(hosted.config.dispatch)}
        if isinstance(address, tuple):
            fields["host"], fields["port"] = address[0], address[1]
        return fields

    def _write_pid_file(self, path: str) -> None:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(descriptor, "w") as stream:
                stream.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise StartupError(f"cannot write --pid-file {path}: {exc.strerror}") from None
        self.pid_file_written = True

    def _drop_privileges(self) -> None:
        config = self.config
        try:
            if config.user is not None:
                uid, gid = _user_ids(config.user, config.group)
                # What this process created, the user must be able to remove on exit (in a sticky /tmp too).
                owned = [listener.unix_path.path for listener in self.listeners if listener.unix_path is not None]
                if self.admin is not None and self.admin.unix_path is not None:
                    owned.append(self.admin.unix_path.path)
                if self.pid_file_written and config.pid_file is not None:
                    owned.append(config.pid_file)
                for path in owned:
                    os.chown(path, uid, gid)
                name = pwd.getpwuid(uid).pw_name if not config.user.isdigit() else None
                if name is not None:
                    os.initgroups(name, gid)
                else:
                    os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            elif config.group is not None:
                gid = _group_id(config.group)
                os.setgroups([])
                os.setgid(gid)
        except (OSError, UsageError) as exc:
            who = config.user if config.user is not None else f"group {config.group}"
            raise StartupError(f"cannot switch to {who}: {exc}") from None
        logger.info("running as uid %d, gid %d", os.getuid(), os.getgid())

    def _undo(self) -> None:
        """Undo a start that failed: stop what runs, close what is bound, remove what was written."""
        reactor = self.reactor
        hosted_servers = set(id(server) for server in reactor.servers) if reactor is not None else set()
        if reactor is not None:
            try:
                reactor.close()  # stops the Prefork pools already started, closes their servers
            except Exception:
                logger.exception("while undoing the start")
        for hosted in self.hosted:
            if id(hosted.server) not in hosted_servers:
                hosted.server.server_close()
        for listener in self.listeners:
            listener.close()  # a second close of a socket is harmless; removes the socket file
        if self.admin is not None:
            self.admin.close()
        self._remove_pid_file()

    def _remove_pid_file(self) -> None:
        if self.pid_file_written and self.config.pid_file is not None:
            self.pid_file_written = False
            try:
                os.unlink(self.config.pid_file)
            except OSError as exc:
                logger.warning("cannot remove --pid-file %s: %s", self.config.pid_file, exc.strerror)

    # -- signals ---------------------------------------------------------------

    def _install_signal_handlers(self, reactor: Reactor) -> None:
        reactor.add_signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        reactor.add_signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        reactor.add_signal_handler(signal.SIGHUP, self._on_reload)
        reactor.add_signal_handler(signal.SIGTTIN, self._on_workers, +1)
        reactor.add_signal_handler(signal.SIGTTOU, self._on_workers, -1)
        reactor.add_signal_handler(signal.SIGUSR1, self._on_reopen_logs)
        reactor.add_signal_handler(signal.SIGUSR2, self._on_upgrade)

    def _on_stop_signal(self, name: str) -> None:
        assert self.reactor is not None
        if self._stopping:
            logger.warning("%s again: ending the requests in flight now", name, extra={"event": "abort"})
        else:
            logger.info("%s: stopping gracefully (send it again to stop at once)", name)
        self.reactor.stop()

    def _pools(self) -> list[Prefork]:
        return [hosted.pool for hosted in self.hosted if hosted.pool is not None]

    def _on_reload(self) -> None:
        pools = self._pools()
        if not pools:
            logger.warning("SIGHUP: nothing to reload (no Prefork server); restart the process to load new code, "
                           "or serve with --dispatch prefork:N")
            self.notifier.reloading("nothing to reload")  # a Type=notify-reload manager waits for both
            self.notifier.ready(self._status())
            return
        logger.info("SIGHUP: reloading %d Prefork pool(s): new workers first, then the old ones retire",
                    len(pools), extra={"event": "reloading"})
        self.notifier.reloading("reloading")
        self._reload_pending = {id(pool): set(pool.worker_pids) for pool in pools}
        self._reload_aborts = {id(pool): pool.reloads_aborted for pool in pools}
        for pool in pools:
            pool.reload()
        self._check_ready()

    def _on_workers(self, delta: int) -> None:
        pools = self._pools()
        if not pools:
            logger.warning("%s: no Prefork server to resize", "SIGTTIN" if delta > 0 else "SIGTTOU")
            return
        for pool in pools:
            if delta > 0:
                pool.increase()
            else:
                pool.decrease()
        logger.info("%s: one worker %s in each of %d Prefork pool(s)", "SIGTTIN" if delta > 0 else "SIGTTOU",
                    "more" if delta > 0 else "fewer", len(pools), extra={"event": "workers", "delta": delta})

    def _on_reopen_logs(self) -> None:
        if isinstance(self.log_handler, ReopenableFileHandler):
            self.log_handler.reopen()
            logger.info("SIGUSR1: reopened the log file %s", self.log_handler.baseFilename,
                        extra={"event": "log_reopened"})
        else:
            logger.info("SIGUSR1: logging to stderr, nothing to reopen")

    def _on_upgrade(self) -> None:
        reactor = self.reactor
        assert reactor is not None
        if not self._ready or self._stopping:
            logger.warning("SIGUSR2: %s; no upgrade now", "stopping" if self._stopping else "not ready yet",
                           extra={"event": "upgrade_ignored"})
            return
        positions = {id(bind): (i, j) for i, server in enumerate(self.config.servers)
                     for j, bind in enumerate(server.binds)}
        handed: list[Any] = list(self.listeners)
        where = [positions[id(listener.bind)] for listener in self.listeners]
        for admin in self._admin_listener():  # --admin goes along, or the new master could not bind it
            handed.append(admin)
            where.append((_ADMIN_SERVER, 0))
        self.upgrade.start(reactor, handed, where, on_ready=self._on_upgraded, on_failed=self._on_upgrade_failed)

    def _admin_listener(self) -> list[_AdminListener]:
        if self.admin is None or self.config.admin is None:
            return []
        return [_AdminListener(self.admin, self.config.admin)]

    def _on_upgraded(self, new_pid: int) -> None:
        assert self.reactor is not None
        self.pid_file_written = False  # the new master's pid is in it now
        self.reactor.stop()

    def _on_upgrade_failed(self) -> None:
        if self.pid_file_written and self.config.pid_file is not None and not self._stopping:
            try:
                self._write_pid_file(self.config.pid_file)  # the failed one may have written or removed it
            except StartupError as exc:
                logger.warning("%s", exc)

    # -- readiness -------------------------------------------------------------

    def _check_ready(self) -> None:
        """READY=1 once every Prefork worker booted (at start, and after each reload)."""
        reactor = self.reactor
        if reactor is None or reactor.closed or self._stopping:
            return
        waiting = False
        aborted = []
        for pool in self._pools():
            if self._reload_pending is not None and pool.reloads_aborted > self._reload_aborts.get(id(pool), 0):
                aborted.append(pool)  # a new worker failed to boot: the old ones serve on
                continue
            stats = pool.stats()
            pids, ready = set(stats["pids"]), set(stats["ready"])
            old = (self._reload_pending or {}).get(id(pool), set())
            if len(ready - old) < stats["workers"] or pids & old:
                waiting = True
        if waiting:
            reactor.call_later(_READY_POLL, self._check_ready)
            return
        status = self._status()
        if not self._ready:
            self._ready = True
            logger.info("ready: %s", status, extra={"event": "ready"})
        elif self._reload_pending is not None and aborted:
            logger.error("reload failed: a new worker of %d pool(s) could not boot; the old workers serve on: %s",
                         len(aborted), status, extra={"event": "reload_failed"})
        elif self._reload_pending is not None:
            logger.info("reloaded: %s", status, extra={"event": "reloaded"})
        self._reload_pending = None
        self.notifier.ready(status)
        if self.successor is not None:
            # An upgrade's new master: the old one hands over and leaves.
            self.successor.ready([*self.listeners, *self._admin_listener()])

    def _status(self) -> str:
        parts = []
        for hosted in self.hosted:
            pool = hosted.pool
            workers = f" ({len(pool.worker_pids)} workers)" if pool is not None else ""
            parts.append(f"{hosted.listener.description}{workers}")
        return "serving " + ", ".join(parts)

    # -- serving and stopping ----------------------------------------------------

    def _serve(self, reactor: Reactor) -> int:
        code = 0
        try:
            reactor.call_soon(self._check_ready)
            self.notifier.start_watchdog(reactor)
            try:
                reactor.serve_forever()
            except Exception as exc:
                logger.error("stopping: %s", exc, extra={"event": "failed"})
                code = 1
            self._stopping = True
            self.notifier.stop_watchdog()
            self.upgrade.abort()
            # Not when the service goes on in another master: ours, or the old one (we are its failed successor).
            if not self.upgrade.handed_over and (self.successor is None or self.successor.reported):
                self.notifier.stopping("stopping")
            logger.info("stopping: draining %d server(s)", len(self.hosted), extra={"event": "stopping"})
            reactor.close(restore_listeners=not self.upgrade.handed_over)
        finally:
            self._stopping = True
            self.notifier.stop_watchdog()
            if not reactor.closed:
                reactor.close(restore_listeners=not self.upgrade.handed_over)
            for listener in self.listeners:
                listener.close()
            if self.admin is not None:
                self.admin.close()  # only now: it answered (503, draining) while the servers drained
            self._remove_pid_file()
        logger.info("stopped", extra={"event": "stopped"})
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 stopped, 1 cannot start or failed, 2 bad arguments).

    ``reactor stats URL ...`` reads a running command's ``--admin`` instead (see :func:`stats_main`).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["stats"]:
        return stats_main(arguments[1:])
    try:
        config = parse_command_line(arguments)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc} (see {PROG} --help)\n")
        return 2
    except SystemExit as exc:  # argparse: --help, --version, or an error it reported in one line
        return exc.code if isinstance(exc.code, int) else 2
    handler: logging.Handler | None = None
    try:
        handler = configure_logging(config)
        return Command(config, handler, arguments).run()
    except StartupError as exc:
        if handler is None:
            sys.stderr.write(f"{PROG}: error: {exc}\n")
        else:
            logger.error("cannot start: %s", exc, extra={"event": "startup_failed"})
        return 1
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()


# ---------------------------------------------------------------- reactor stats


def _stats_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} stats", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show the statistics of a running reactor command, read from its --admin address.",
        epilog=f"""\
examples:
  {PROG} stats tcp://127.0.0.1:9100                      # once
  {PROG} stats unix:///run/myapp/admin.sock --watch      # every 2 seconds until Ctrl-C
  {PROG} stats tcp://127.0.0.1:9100 --watch 1 --count 10 # 10 views, 1 second apart

columns: REQUESTS taken so far; REQ/S between two views (--watch); ACTIVE
connections open, requests running on a thread pool or a protocol server's
connections (- where nobody counts them); REFUSED by --allow/--deny or limits;
ERRORS: dropped, timeouts, TLS and PROXY failures, exhaustion pauses.
exit status: 0, 1 if the address does not answer, 2 for bad arguments.
""")
    parser.add_argument("address", metavar="URL", help="the command's --admin: tcp://HOST:PORT or unix:///PATH")
    parser.add_argument("--watch", "-w", metavar="SECONDS", nargs="?", const=2.0, type=_positive(float),
                        help="refresh every SECONDS (default 2) until interrupted")
    parser.add_argument("--count", "-n", metavar="N", type=_positive(int),
                        help="stop after N views (implies --watch)")
    parser.add_argument("--json", action="store_true", help="print /stats as JSON (one line per view)")
    parser.add_argument("--timeout", metavar="SECONDS", type=_positive(float), default=5.0,
                        help="how long one request may take (default 5)")
    parser.context = "stats: "
    return parser


def stats_main(argv: Sequence[str]) -> int:
    """``reactor stats URL [--watch [SECONDS]] [--count N] [--json]``; returns the exit status."""
    parser = _stats_parser()
    try:
        options = parser.parse_args(list(argv))
        try:
            address = parse_admin_url(options.address, public=True)
        except ValueError as exc:
            raise UsageError(f"stats: {exc}") from None
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc} (see {PROG} stats --help)\n")
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if options.count is not None and options.watch is None:
        options.watch = 2.0  # --count N alone: N views, 2 s apart
    count = options.count if options.watch is not None else 1
    clear = options.watch is not None and not options.json and sys.stdout.isatty()
    previous: dict[str, Any] | None = None
    shown = 0
    try:
        while True:
            try:
                status, body = fetch(address, "/stats", options.timeout)
                if status != 200:
                    raise ValueError(f"{address.url}/stats answered {status}")
                snapshot = json.loads(body)
            except (OSError, ValueError) as exc:
                if options.watch is None:
                    sys.stderr.write(f"{PROG} stats: cannot read {address.url}: {exc}\n")
                    return 1
                text = f"{PROG} stats: cannot read {address.url}: {exc}\n"
            else:
                text = json.dumps(snapshot) + "\n" if options.json else render_view(snapshot, previous)
                previous = snapshot
            if clear:
                text = "\x1b[H\x1b[2J" + text
            elif shown and not options.json:
                text = "\n" + text
            sys.stdout.write(text)
            sys.stdout.flush()
            shown += 1
            if count is not None and shown >= count:
                return 0
            time.sleep(options.watch)
    except KeyboardInterrupt:
        return 0
