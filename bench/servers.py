"""The benchmark's contenders: one server process per run, all with the same echo logic.

Run: ``python bench/servers.py --contender NAME --transport T --address ADDR
[--handler echo|cpu|http] [--concurrency N] [--docroot DIR]``

The process binds, prints ``READY <address>`` (flushed), and serves until
SIGTERM or SIGINT, then closes everything and exits 0. SIGUSR1 instead stops
it while timing the stop: it prints ``SHUTDOWN <stop_s> <close_s>``, where
``stop_s`` runs from the signal to the serving loop having returned (what
``shutdown()`` costs) and ``close_s`` from the signal to every socket, thread
and worker being gone (``server_close()`` included).

Every contender runs the same logic on every transport: a stream connection
echoes each chunk it reads until EOF; a datagram is replied to its sender.
The ``cpu`` handler burns about 1 ms of its thread's CPU before each reply.
Every listener has a backlog of 1024.

The ``lines`` handler (stream transports, the socketserver-shaped contenders:
``LINE_CONTENDERS``) is instead a framed message handler,
``reactor.socketserver.LineRequestHandler``, whose ``handle_message`` returns
each line: the reply is the line and its newline, the bytes of the request
(the load generator's ``--line``). Reactor's strategies serve it in message
mode (the loop frames, a connection costs no thread between messages), the
stdlib's servers in blocking mode (its ``handle()``, a thread or process per
connection as usual).

The event-driven contenders serve every connection from one thread's loop,
with the echo written as a ``Protocol`` (``data_received`` writes the chunk
back): reactor's (``Reactor.create_server``; a ``DatagramProtocol`` on the
datagram transports), asyncio's on its default loop and on uvloop's, and a
minimal pure-Python level-triggered epoll loop (``epoll_echo.py``), the
ceiling for Python code. Every server process raises its soft descriptor
limit to the hard one: the persistent workloads hold up to 10,050 connections.

The ``http`` handler (tcp only, the keep-alive workload) is instead the
stdlib's unmodified ``http.server.SimpleHTTPRequestHandler`` speaking
HTTP/1.1 (``protocol_version = "HTTP/1.1"``, ``log_message`` silenced) and
serving ``--docroot``, on the contenders that have an HTTP server: stdlib
``ThreadingHTTPServer`` (a thread per connection), reactor ``ThreadPool(8)``
(a fixed pool whatever the concurrency: that is what is tested) and reactor
``Prefork`` (one process per CPU, at least 2).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.server
import os
import resource
import signal
import socket
import socketserver as std
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reactor  # noqa: E402
from reactor import Inline, Prefork, ThreadPool, Topology  # noqa: E402
from reactor import socketserver as rx  # noqa: E402
from reactor.dispatch import Dispatch  # noqa: E402

STREAM_TRANSPORTS = ("tcp", "unix")
DATAGRAM_TRANSPORTS = ("udp", "unixdgram")
TRANSPORTS = STREAM_TRANSPORTS + DATAGRAM_TRANSPORTS
BACKLOG = 1024
CPU_BURN_SECONDS = 0.001
#: What "unbounded" means when a contender's capacity is compared with a concurrency.
UNBOUNDED = 1 << 30
#: ThreadPool workers on the keep-alive HTTP workload: the issue's ThreadPool(8), whatever the concurrency.
HTTP_POOL = 8


def burn_cpu() -> None:
    """Spend about 1 ms of this thread's CPU time."""
    deadline = time.thread_time() + CPU_BURN_SECONDS
    while time.thread_time() < deadline:
        pass


# -- the one handler logic, in each API's shape ------------------------------


def echo_blocking_stream(sock: Any, burn: bool) -> None:
    """Echo every chunk until EOF on a blocking (or gevent) socket."""
    try:
        while data := sock.recv(65536):
            if burn:
                burn_cpu()
            sock.sendall(data)
    except ConnectionError:
        pass  # a client ending a run with a reply unread resets: not the server's error


def make_handlers(burn: bool) -> tuple[type[std.BaseRequestHandler], type[std.BaseRequestHandler]]:
    """Return the (stream, datagram) socketserver handler classes."""

    class StreamEcho(std.BaseRequestHandler):
        def handle(self) -> None:
            echo_blocking_stream(self.request, burn)

    class DatagramEcho(std.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            if burn:
                burn_cpu()
            sock.sendto(data, self.client_address)

    return StreamEcho, DatagramEcho


class LineEcho(rx.LineRequestHandler):
    """The echo as framed messages: each line back, as a line."""

    def handle_message(self, message: bytes) -> bytes:
        return message


# -- contenders -----------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    """One server implementation under test."""

    name: str
    label: str
    transports: tuple[str, ...]
    #: Stream connections served at once, given (concurrency, server CPUs), for persistent workloads.
    capacity: Callable[[int, int], int]
    #: The stdlib contender this one is compared with, if any.
    stdlib_peer: str | None = None
    #: Python module that must import for the contender to run.
    requires: str | None = None
    #: Processes in the server's tree once it is ready, given the server CPUs.
    processes: Callable[[int], int] = lambda cpus: 1
    #: How it serves the keep-alive HTTP workload (see module docstring), e.g. "ThreadPool(8)"; None: it does not.
    http: str | None = None
    #: Every connection is served from one thread's event loop (no thread or process per connection).
    event_driven: bool = False

    def available(self) -> bool:
        """True if this interpreter can run it."""
        if self.requires is None:
            return True
        try:
            __import__(self.requires)
        except ImportError:
            return False
        return True


def pool_size(concurrency: int) -> int:
    """ThreadPool workers for a run: 8, or one per connection when there are more."""
    return max(8, concurrency)


def prefork_workers(cpus: int | None = None) -> int:
    """Prefork worker processes: one per CPU the server may run on (this process's, by default), at least 2."""
    return max(2, len(os.sched_getaffinity(0)) if cpus is None else cpus)


def prefork_threads(concurrency: int, cpus: int | None = None) -> int:
    """Threads per Prefork worker: enough for every connection across the workers."""
    return max(4, -(-concurrency // prefork_workers(cpus)))


def forking_children(concurrency: int) -> int:
    """ForkingMixIn.max_children: the stdlib's 40, or one per connection when there are more."""
    return max(40, concurrency)


_STREAM_DGRAM_UNIX = ("tcp", "unix", "udp", "unixdgram")
_FORKING_TRANSPORTS = ("tcp", "udp", "unix", "unixdgram") if hasattr(std, "ForkingUnixStreamServer") else ("tcp", "udp")


def _prefork_tree(cpus: int) -> int:
    return 2 + prefork_workers(cpus)  # master, arbiter, workers


CONTENDERS: dict[str, Contender] = {c.name: c for c in [
    Contender("stdlib-inline", "stdlib {Base}", _STREAM_DGRAM_UNIX, lambda n, cpus: 1),
    Contender("stdlib-threading", "stdlib Threading{Base}", _STREAM_DGRAM_UNIX, lambda n, cpus: UNBOUNDED,
              http="ThreadingHTTPServer"),
    Contender("stdlib-forking", "stdlib Forking{Base}", _FORKING_TRANSPORTS, lambda n, cpus: forking_children(n)),
    Contender("asyncio", "asyncio {Api}", _STREAM_DGRAM_UNIX, lambda n, cpus: UNBOUNDED, event_driven=True),
    Contender("uvloop", "uvloop {Api}", ("tcp", "unix", "udp"), lambda n, cpus: UNBOUNDED, requires="uvloop",
              event_driven=True),
    Contender("gevent", "gevent {Gevent}", ("tcp", "udp"), lambda n, cpus: UNBOUNDED, requires="gevent",
              event_driven=True),
    Contender("asyncio-protocol", "asyncio {Proto}", _STREAM_DGRAM_UNIX, lambda n, cpus: UNBOUNDED,
              event_driven=True),
    Contender("uvloop-protocol", "uvloop {Proto}", ("tcp", "unix", "udp"), lambda n, cpus: UNBOUNDED,
              requires="uvloop", event_driven=True),
    Contender("epoll-echo", "pure-Python epoll loop", _STREAM_DGRAM_UNIX, lambda n, cpus: UNBOUNDED,
              event_driven=True),
    Contender("reactor-inline", "reactor Inline", _STREAM_DGRAM_UNIX, lambda n, cpus: 1, "stdlib-inline"),
    Contender("reactor-threadpool", "reactor ThreadPool", _STREAM_DGRAM_UNIX, lambda n, cpus: pool_size(n),
              "stdlib-threading", http=f"ThreadPool({HTTP_POOL})"),
    Contender("reactor-prefork", "reactor Prefork", _STREAM_DGRAM_UNIX, lambda n, cpus: prefork_workers(cpus),
              "stdlib-forking", processes=_prefork_tree, http="Prefork({workers})"),
    Contender("reactor-prefork-threads", "reactor Prefork+threads", _STREAM_DGRAM_UNIX,
              lambda n, cpus: prefork_workers(cpus) * prefork_threads(n, cpus), "stdlib-forking",
              processes=_prefork_tree),
    Contender("reactor-protocol", "reactor {Proto}", _STREAM_DGRAM_UNIX, lambda n, cpus: UNBOUNDED,
              event_driven=True),
]}

#: The contenders that serve the ``lines`` handler (see the module docstring), and of them those
#: that serve it in message mode, where a connection costs no handler between messages.
LINE_CONTENDERS = frozenset({"stdlib-inline", "stdlib-threading", "stdlib-forking", "reactor-inline",
                             "reactor-threadpool", "reactor-prefork", "reactor-prefork-threads"})
MESSAGE_MODE_CONTENDERS = frozenset(name for name in LINE_CONTENDERS if name.startswith("reactor-"))

_STDLIB_BASE = {"tcp": "TCPServer", "udp": "UDPServer", "unix": "UnixStreamServer", "unixdgram": "UnixDatagramServer"}


def http_label(contender: str, cpus: int | None = None) -> str:
    """How the report names a contender on the keep-alive HTTP workload, e.g. ``reactor ThreadPool(8)``."""
    c = CONTENDERS[contender]
    assert c.http is not None, f"{contender} has no HTTP server"
    what = c.http.format(workers=prefork_workers(cpus))
    return f"{'reactor' if contender.startswith('reactor-') else 'stdlib'} {what}"


def stdlib_class_name(contender: str, transport: str) -> str:
    """The socketserver class a stdlib contender uses on a transport, e.g. ``ThreadingTCPServer``."""
    return label(contender, transport).removeprefix("stdlib ")


def label(contender: str, transport: str | None = None) -> str:
    """How the report names a contender on a transport (or across transports, for None)."""
    template = CONTENDERS[contender].label
    if transport is None:
        return template.format(Base="Server", Api="", Gevent="", Proto="Protocol").strip()
    stream = transport in STREAM_TRANSPORTS
    return template.format(Base=_STDLIB_BASE[transport], Api="streams" if stream else "datagram endpoint",
                           Gevent="StreamServer" if stream else "DatagramServer",
                           Proto="Protocol" if stream else "DatagramProtocol")


# -- addresses ----------------------------------------------------------------


def parse_address(transport: str, text: str) -> Any:
    """``HOST:PORT`` / ``[V6]:PORT`` for tcp and udp, a path for the unix transports."""
    if transport in ("unix", "unixdgram"):
        return text
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def format_address(transport: str, address: Any) -> str:
    """The inverse of ``parse_address`` for a bound address."""
    if transport in ("unix", "unixdgram"):
        return str(address)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- socketserver-shaped contenders (stdlib and reactor) ----------------------


def _socketserver_class(module: Any, contender: str, transport: str) -> type[Any]:
    if contender.startswith("reactor-"):
        base_name = _STDLIB_BASE[transport]
    else:
        base_name = stdlib_class_name(contender, transport)
    base = getattr(module, base_name)

    class Server(base):  # type: ignore[misc, valid-type]
        request_queue_size = BACKLOG
        allow_reuse_address = True
        # The stdlib's 8192 would truncate nothing here, but keep every contender alike.
        max_packet_size = 65535

    Server.__name__ = base_name
    return Server


def _reactor_dispatch(contender: str, concurrency: int) -> Dispatch | Topology | None:
    if contender == "reactor-inline":
        return None
    if contender == "reactor-threadpool":
        size = pool_size(concurrency)
        return ThreadPool(size, size, drain_timeout=5)
    threads = prefork_threads(concurrency) if contender == "reactor-prefork-threads" else 0
    # The master's signals are this script's: SIGTERM/SIGUSR1 end serve_forever() here.
    return Prefork(prefork_workers(), threads=threads, graceful_timeout=5, handle_signals=False)


def build_socketserver(contender: str, transport: str, address: Any, burn: bool, concurrency: int,
                       lines: bool = False) -> Any:
    """A bound stdlib or reactor server for the contender (``lines``: the line handler)."""
    stream_handler, dgram_handler = make_handlers(burn)
    handler: type[std.BaseRequestHandler] = stream_handler if transport in STREAM_TRANSPORTS else dgram_handler
    if lines:
        handler = LineEcho
    if contender.startswith("reactor-"):
        cls = _socketserver_class(rx, contender, transport)
        dispatch = _reactor_dispatch(contender, concurrency)
        if lines and dispatch is None:
            dispatch = Inline()  # dispatch=None would keep the stdlib's blocking handler call: no message mode
        server = cls(address, handler, dispatch=dispatch)
    else:
        cls = _socketserver_class(std, contender, transport)
        server = cls(address, handler)
        if contender == "stdlib-forking":
            server.max_children = forking_children(concurrency)
    return server


def serve_socketserver(server: Any, transport: str, prefork: bool) -> None:
    """Serve until SIGTERM/SIGINT, or time a stop on SIGUSR1."""
    if prefork:
        serve_in_main_thread(server, transport)
    else:
        serve_in_a_thread(server, transport)


def serve_in_a_thread(server: Any, transport: str) -> None:
    # The stdlib's shutdown() must come from another thread than serve_forever():
    # this one waits for the signal, the serving thread inherits the mask.
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="serve_forever")
    serving.start()
    announce(transport, server.server_address)
    signum = signal.sigwait(stop_signals)
    started = time.perf_counter()
    server.shutdown()
    serving.join()
    stopped = time.perf_counter()
    server.server_close()
    closed = time.perf_counter()
    if signum == signal.SIGUSR1:
        print(f"SHUTDOWN {stopped - started:.6f} {closed - started:.6f}", flush=True)


def serve_in_main_thread(server: Any, transport: str) -> None:
    # Prefork forks when serve_forever() adds the server, and refuses to fork
    # while other threads run: serve here and stop from a signal handler.
    timing: dict[str, Any] = {}

    def stop(signum: int, frame: object) -> None:
        timing.setdefault("started", time.perf_counter())
        timing.setdefault("signum", signum)
        server.shutdown()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, stop)
    # Listening already: connections wait in the backlog until the workers run.
    announce(transport, server.server_address)
    server.serve_forever(poll_interval=0.5)
    stopped = time.perf_counter()
    server.server_close()
    closed = time.perf_counter()
    if timing.get("signum") == signal.SIGUSR1:
        started = timing["started"]
        print(f"SHUTDOWN {stopped - started:.6f} {closed - started:.6f}", flush=True)


def announce(transport: str, address: Any) -> None:
    """Tell the driver the server is ready and where."""
    print(f"READY {format_address(transport, address)}", flush=True)


# -- the keep-alive HTTP workload --------------------------------------------


class QuietHTTPHandler(http.server.SimpleHTTPRequestHandler):
    """The stdlib's file server speaking HTTP/1.1 (so connections are kept alive), without its
    per-request log line. ``handle()`` and the request loop are the stdlib's, untouched."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def build_http_server(contender: str, address: Any, docroot: str) -> Any:
    """A bound HTTP server for the keep-alive workload (tcp)."""
    handler = functools.partial(QuietHTTPHandler, directory=docroot)  # http.server's documented way
    if contender == "stdlib-threading":
        class ThreadingHTTPServer(http.server.ThreadingHTTPServer):
            request_queue_size = BACKLOG
        return ThreadingHTTPServer(address, handler)
    dispatch: Dispatch | Topology
    if contender == "reactor-threadpool":
        dispatch = ThreadPool(HTTP_POOL, drain_timeout=5)
    elif contender == "reactor-prefork":
        dispatch = Prefork(prefork_workers(), graceful_timeout=5, handle_signals=False)
    else:
        raise ValueError(f"{contender} has no HTTP server")

    class HTTPServer(rx.TCPServer):
        # http.server.HTTPServer on reactor's TCPServer: its allow_reuse_address (server_bind's
        # server_name and server_port, which SimpleHTTPRequestHandler never reads, are left out).
        request_queue_size = BACKLOG
        allow_reuse_address = True

    return HTTPServer(address, handler, dispatch=dispatch)


# -- asyncio and uvloop -----------------------------------------------------


def _run_asyncio(main: Any, use_uvloop: bool) -> None:
    """Run the coroutine ``main`` on asyncio's loop or uvloop's."""
    if use_uvloop:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    else:
        runner = asyncio.run
    runner(main)


def _stop_signals(loop: asyncio.AbstractEventLoop) -> asyncio.Future[int]:
    """A future set to the first of SIGTERM, SIGINT or SIGUSR1 (the driver's stop signals)."""
    done: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not done.done():
            done.set_result(signum)

    for stop_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        loop.add_signal_handler(stop_signal, on_signal, stop_signal)
    return done


async def _serve_asyncio_datagrams(transport: str, address: Any, burn: bool,
                                   done: asyncio.Future[int]) -> tuple[int, float, float, float]:
    """The echo on an asyncio datagram endpoint until a stop signal: (signal, started, stopped, closed)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_UNIX if transport == "unixdgram" else socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(address)
    dgram, _ = await loop.create_datagram_endpoint(lambda: _DatagramEcho(burn), sock=sock)
    announce(transport, sock.getsockname())
    signum = await done
    started = time.perf_counter()
    dgram.close()
    stopped = time.perf_counter()
    if transport == "unixdgram":
        os.unlink(address)
    return signum, started, stopped, stopped


def serve_asyncio(transport: str, address: Any, burn: bool, use_uvloop: bool) -> None:
    """The same echo on asyncio's streams API (or datagram endpoint), on asyncio's or uvloop's loop."""
    _run_asyncio(_asyncio_main(transport, address, burn), use_uvloop)


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, burn: bool) -> None:
    try:
        while data := await reader.read(65536):
            if burn:
                burn_cpu()
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class _DatagramEcho(asyncio.DatagramProtocol):
    def __init__(self, burn: bool) -> None:
        self.burn = burn
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport here

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.burn:
            burn_cpu()
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def _asyncio_main(transport: str, address: Any, burn: bool) -> None:
    loop = asyncio.get_running_loop()
    done = _stop_signals(loop)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _echo_stream(reader, writer, burn)

    if transport in STREAM_TRANSPORTS:
        if transport == "tcp":
            server = await asyncio.start_server(handle, address[0], address[1], backlog=BACKLOG, reuse_address=True)
        else:
            server = await asyncio.start_unix_server(handle, address, backlog=BACKLOG)
        announce(transport, server.sockets[0].getsockname())
        serving = asyncio.ensure_future(server.serve_forever())
        signum = await done
        started = time.perf_counter()
        server.close()
        serving.cancel()  # asyncio's close() ends serve_forever(), uvloop's does not
        await asyncio.gather(serving, return_exceptions=True)
        stopped = time.perf_counter()
        # Connections still open would keep their handlers waiting for the client: end them.
        handlers = asyncio.all_tasks() - {asyncio.current_task()}
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        closed = time.perf_counter()
    else:
        signum, started, stopped, closed = await _serve_asyncio_datagrams(transport, address, burn, done)
    if signum == signal.SIGUSR1:
        print(f"SHUTDOWN {stopped - started:.6f} {closed - started:.6f}", flush=True)


# -- Protocol echoes: asyncio, uvloop and reactor ------------------------------


class _AsyncioEcho(asyncio.Protocol):
    """The echo as an asyncio Protocol: every chunk is written back from ``data_received``."""

    def __init__(self, burn: bool) -> None:
        self.burn = burn
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport here

    def data_received(self, data: bytes) -> None:
        if self.burn:
            burn_cpu()
        assert self.transport is not None
        self.transport.write(data)


def serve_asyncio_protocol(transport: str, address: Any, burn: bool, use_uvloop: bool) -> None:
    """The echo as an asyncio ``Protocol`` (or ``DatagramProtocol``), on asyncio's or uvloop's loop."""
    _run_asyncio(_asyncio_protocol_main(transport, address, burn), use_uvloop)


async def _asyncio_protocol_main(transport: str, address: Any, burn: bool) -> None:
    loop = asyncio.get_running_loop()
    done = _stop_signals(loop)
    if transport in STREAM_TRANSPORTS:
        protocols: list[_AsyncioEcho] = []

        def factory() -> _AsyncioEcho:
            protocol = _AsyncioEcho(burn)
            protocols.append(protocol)
            return protocol

        if transport == "tcp":
            server = await loop.create_server(factory, address[0], address[1], backlog=BACKLOG, reuse_address=True)
        else:
            server = await loop.create_unix_server(factory, address, backlog=BACKLOG)
        announce(transport, server.sockets[0].getsockname())
        signum = await done
        started = time.perf_counter()
        server.close()
        stopped = time.perf_counter()
        for protocol in protocols:  # connections the clients keep open: end them
            if protocol.transport is not None:
                protocol.transport.abort()
        await server.wait_closed()
        closed = time.perf_counter()
    else:
        signum, started, stopped, closed = await _serve_asyncio_datagrams(transport, address, burn, done)
    if signum == signal.SIGUSR1:
        print(f"SHUTDOWN {stopped - started:.6f} {closed - started:.6f}", flush=True)


class _ReactorEcho(reactor.Protocol):
    """The echo as a reactor Protocol."""

    def __init__(self) -> None:
        self.transport: reactor.Transport | None = None

    def connection_made(self, transport: reactor.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _ReactorBurningEcho(_ReactorEcho):
    def data_received(self, data: bytes) -> None:
        burn_cpu()
        assert self.transport is not None
        self.transport.write(data)


class _ReactorDatagramEcho(reactor.DatagramProtocol):
    """The echo as a reactor DatagramProtocol."""

    def __init__(self, burn: bool) -> None:
        self.burn = burn
        self.transport: reactor.DatagramTransport | None = None

    def connection_made(self, transport: reactor.DatagramTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.burn:
            burn_cpu()
        assert self.transport is not None
        self.transport.sendto(data, addr)


def serve_reactor_protocol(transport: str, address: Any, burn: bool) -> None:
    """The echo on ``Reactor.create_server`` in this process's main thread (the loop's thread)."""
    loop = reactor.Reactor()
    received: list[tuple[int, float]] = []

    def on_signal(signum: int) -> None:
        received.append((signum, time.perf_counter()))
        loop.stop()

    for stop_signal in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        loop.add_signal_handler(stop_signal, on_signal, stop_signal)
    family = socket.AF_UNIX if transport in ("unix", "unixdgram") else None
    factory: Callable[[], reactor.BaseProtocol]
    if transport in STREAM_TRANSPORTS:
        factory = _ReactorBurningEcho if burn else _ReactorEcho
        server = loop.create_server(factory, address, family=family, backlog=BACKLOG, drain_timeout=5)
    else:
        factory = functools.partial(_ReactorDatagramEcho, burn)
        server = loop.create_server(factory, address, family=family, type=socket.SOCK_DGRAM)
    announce(transport, server.server_address)
    loop.serve_forever()
    stopped = time.perf_counter()
    loop.close()  # drains the connections (clients keep theirs open: closed at once, nothing is buffered)
    closed = time.perf_counter()
    if received and received[0][0] == signal.SIGUSR1:
        started = received[0][1]
        print(f"SHUTDOWN {stopped - started:.6f} {closed - started:.6f}", flush=True)


def serve_epoll_echo(transport: str, address: Any, burn: bool) -> None:
    """The minimal pure-Python epoll loop of ``epoll_echo.py``."""
    import epoll_echo

    family = socket.AF_UNIX if transport in ("unix", "unixdgram") else \
        socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    kind = socket.SOCK_STREAM if transport in STREAM_TRANSPORTS else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    if transport == "tcp":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    if kind == socket.SOCK_STREAM:
        sock.listen(BACKLOG)
    announce(transport, sock.getsockname())
    signum, stop_s, close_s = epoll_echo.serve(sock, burn_cpu if burn else None)
    sock.close()
    if transport in ("unix", "unixdgram"):
        os.unlink(address)
    if signum == signal.SIGUSR1:
        print(f"SHUTDOWN {stop_s:.6f} {close_s:.6f}", flush=True)


def raise_fd_limit() -> None:
    """Every connection is a descriptor: let this server hold as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass  # an unlimited hard limit may be above fs.nr_open: keep the soft one


# -- gevent -----------------------------------------------------------------


def serve_gevent(transport: str, address: Any, burn: bool) -> None:
    """The same echo on gevent's StreamServer / DatagramServer (tcp and udp)."""
    import gevent
    import gevent.event
    import gevent.server

    def stream(sock: Any, peer: Any) -> None:
        echo_blocking_stream(sock, burn)

    if transport == "tcp":
        server: Any = gevent.server.StreamServer(address, stream, backlog=BACKLOG)
    else:
        def datagram(data: bytes, peer: Any) -> None:
            if burn:
                burn_cpu()
            server.sendto(data, peer)
        server = gevent.server.DatagramServer(address, datagram)
    server.start()
    announce(transport, server.address)
    stop_signal: list[int] = []
    stopper = gevent.event.Event()

    def on_signal(signum: int) -> None:
        stop_signal.append(signum)
        stopper.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        gevent.signal_handler(signum, on_signal, signum)
    stopper.wait()
    started = time.perf_counter()
    server.close()
    stopped = time.perf_counter()
    server.stop(timeout=5)
    closed = time.perf_counter()
    if stop_signal[0] == signal.SIGUSR1:
        print(f"SHUTDOWN {stopped - started:.6f} {closed - started:.6f}", flush=True)


# -- entry point --------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contender", required=True, choices=sorted(CONTENDERS))
    parser.add_argument("--transport", required=True, choices=TRANSPORTS)
    parser.add_argument("--address", required=True)
    parser.add_argument("--handler", choices=("echo", "cpu", "http", "lines"), default="echo")
    parser.add_argument("--docroot", help="http: the directory served")
    parser.add_argument("--concurrency", type=int, default=1, help="sizes pools for persistent connections")
    args = parser.parse_args(argv)
    contender = CONTENDERS[args.contender]
    if args.transport not in contender.transports:
        parser.error(f"{args.contender} does not serve {args.transport}")
    address = parse_address(args.transport, args.address)
    burn = args.handler == "cpu"
    raise_fd_limit()
    if args.handler == "http":
        if contender.http is None or args.transport != "tcp" or not args.docroot:
            parser.error("--handler http takes --transport tcp, --docroot and a contender with an HTTP server: "
                         + ", ".join(name for name, c in CONTENDERS.items() if c.http))
        server = build_http_server(args.contender, address, args.docroot)
        serve_socketserver(server, args.transport, prefork=args.contender.startswith("reactor-prefork"))
    elif args.handler == "lines":
        if args.contender not in LINE_CONTENDERS or args.transport not in STREAM_TRANSPORTS:
            parser.error("--handler lines takes a stream transport and one of " + ", ".join(sorted(LINE_CONTENDERS)))
        server = build_socketserver(args.contender, args.transport, address, False, args.concurrency, lines=True)
        serve_socketserver(server, args.transport, prefork=args.contender.startswith("reactor-prefork"))
    elif args.contender in ("asyncio", "uvloop"):
        serve_asyncio(args.transport, address, burn, use_uvloop=args.contender == "uvloop")
    elif args.contender == "gevent":
        serve_gevent(args.transport, address, burn)
    elif args.contender in ("asyncio-protocol", "uvloop-protocol"):
        serve_asyncio_protocol(args.transport, address, burn, use_uvloop=args.contender == "uvloop-protocol")
    elif args.contender == "reactor-protocol":
        serve_reactor_protocol(args.transport, address, burn)
    elif args.contender == "epoll-echo":
        serve_epoll_echo(args.transport, address, burn)
    else:
        server = build_socketserver(args.contender, args.transport, address, burn, args.concurrency)
        serve_socketserver(server, args.transport, prefork=args.contender.startswith("reactor-prefork"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
