#!/usr/bin/env python3
"""Embed a Reactor in an asyncio application: socketserver servers beside asyncio ones, one thread.

What it shows
-------------
An asyncio application runs its own TCP server (``asyncio.start_server``,
answering ``asyncio: <line>``). The same event loop, in the same thread,
also drives a :class:`reactor.Reactor` that hosts a socketserver-style echo
server. ``ReactorDriver`` is all the glue:

* ``loop.add_reader(reactor.fileno(), ...)``: asyncio calls
  ``reactor.run_once(0)`` whenever the reactor has I/O to dispatch;
  ``run_once(0)`` never blocks;
* a ``loop.call_later()`` timer set to ``reactor.time_until_next()``, re-armed
  after every ``run_once()``: the reactor's timers (here the echo server's
  idle ``timeout``, which calls ``handle_timeout()``) do not make its
  descriptor readable. (A task sleeping for ``time_until_next()`` would miss
  a timer that a request adds meanwhile; re-arming after each tick cannot.)

Requirements: ``fileno()`` is the selector's own descriptor, so the reactor
needs an epoll (Linux), kqueue (BSD, macOS) or devpoll selector -- the
default on those systems.

asyncio owns the signals here: SIGINT (Ctrl-C) and SIGTERM are handled with
``loop.add_signal_handler``, and lead to a clean shutdown: remove the
reader, cancel the timer, close the asyncio server, ``reactor.close()``.

The reactor's requests run inline, inside ``run_once()``, so a handler
blocks the whole event loop while it runs: keep handlers short and bound
their reads (``timeout``). For the same reason the ``--once`` client runs in
a thread with an event loop of its own, as another program would: a client
in *this* loop could not send its line while the echo handler, in this loop
too, waits for it.

Run it
------
::

    python examples/embed_asyncio.py --once   # a client talks to both servers, then a clean shutdown
    python examples/embed_asyncio.py          # serve until Ctrl-C or SIGTERM; then try:
        printf 'hello\\n' | nc 127.0.0.1 PORT
    python examples/embed_asyncio.py --help

Exit status: 0 after a clean shutdown; 1 if the reactor cannot be embedded
or, with ``--once``, a client did not get the expected reply.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import sys
import threading
from typing import Any

try:
    from reactor import Reactor, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, socketserver
from reactor.binding import describe_address

#: Every client, and every read of a server, gives up after this many seconds.
TIMEOUT = 5.0

_print_lock = threading.Lock()


def say(message: str) -> None:
    """print() one whole line: the event loop and the --once client thread both print."""
    with _print_lock:
        print(message, flush=True)


# -- the glue -------------------------------------------------------------------


class ReactorDriver:
    """Let an asyncio event loop drive a Reactor: its descriptor and its timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reactor: Reactor) -> None:
        self.loop = loop
        self.reactor = reactor
        self.fd = reactor.fileno()  # io.UnsupportedOperation without epoll/kqueue/devpoll
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.loop.add_reader(self.fd, self.tick)
        self.rearm()

    def stop(self) -> None:
        self.loop.remove_reader(self.fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def tick(self) -> None:
        self.reactor.run_once(0)  # dispatch what is ready; never blocks
        self.rearm()

    def rearm(self) -> None:
        """Wake asyncio for the reactor's nearest timer, if it has one."""
        if self.timer is not None:
            self.timer.cancel()
        due = self.reactor.time_until_next()
        self.timer = None if due is None else self.loop.call_later(due, self.tick)


# -- the reactor's server: socketserver style -----------------------------------


class EchoHandler(socketserver.StreamRequestHandler):
    """Reads one line, answers it upper-cased."""

    timeout = TIMEOUT  # runs inside the event loop: bound every read

    def handle(self) -> None:
        line = self.rfile.readline()
        say(f"echo server: {line!r}, in thread {threading.current_thread().name}")
        self.wfile.write(line.upper())


class EchoServer(socketserver.TCPServer):
    """With ``timeout`` set, the reactor calls ``handle_timeout()`` after that long without a request."""

    def handle_timeout(self) -> None:
        say(f"echo server: no request for {self.timeout:g}s")


# -- the application's own server: asyncio style --------------------------------


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        say(f"asyncio server: {line!r}, in thread {threading.current_thread().name}")
        writer.write(b"asyncio: " + line)
        await writer.drain()
    except (OSError, asyncio.TimeoutError):
        pass  # the client went away or stalled; nothing to tell it
    finally:
        writer.close()


# -- the --once client ------------------------------------------------------------


async def exchange(address: Any, line: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address[:2]), TIMEOUT)
    try:
        say(f"client: sending {line!r} to {describe_address(*family_type(writer), address)}")
        writer.write(line)
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), TIMEOUT)
        say(f"client: received {reply!r}")
        return reply
    finally:
        writer.close()
        await writer.wait_closed()


def family_type(writer: asyncio.StreamWriter) -> tuple[int, int]:
    sock = writer.get_extra_info("socket")
    return sock.family, sock.type


async def talk_to_both(echo_address: Any, asyncio_address: Any) -> bool:
    echoed = await exchange(echo_address, b"hello, reactor\n")
    answered = await exchange(asyncio_address, b"hello, asyncio\n")
    return echoed == b"HELLO, REACTOR\n" and answered == b"asyncio: hello, asyncio\n"


def client(echo_address: Any, asyncio_address: Any) -> bool:
    """The --once client: a separate event loop in a separate thread, as another program would be."""
    try:
        return asyncio.run(talk_to_both(echo_address, asyncio_address))
    except (OSError, asyncio.TimeoutError) as exc:
        print(f"error: no reply: {exc!r}", file=sys.stderr, flush=True)
        return False


# -- main ---------------------------------------------------------------------------


async def serve(options: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stopped_by: list[str] = []
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:  # asyncio runs it in the loop, not in the signal handler
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    with Reactor() as reactor:  # leaving the block: server_close() on the echo server
        try:
            driver = ReactorDriver(loop, reactor)
        except io.UnsupportedOperation as exc:
            print(f"error: cannot embed the reactor here: {exc}", file=sys.stderr)
            return 1
        echo = EchoServer((options.host, options.echo_port), EchoHandler)
        if options.idle > 0:
            echo.timeout = options.idle
        try:
            reactor.add_server(echo)
        except BaseException:
            echo.server_close()
            raise
        where = describe_address(echo.socket.family, echo.socket.type, echo.server_address)
        say(f"listening on {where}  (reactor: EchoServer)")

        app_server = await asyncio.start_server(answer, options.host, options.asyncio_port)
        try:
            for sock in app_server.sockets:
                say(f"listening on {describe_address(sock.family, sock.type, sock.getsockname())}"
                    "  (asyncio.start_server)")
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal, signum)
            driver.start()
            ok = True
            try:
                if options.once:
                    talk = asyncio.ensure_future(
                        asyncio.to_thread(client, echo.server_address, app_server.sockets[0].getsockname()))
                    stopping = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({talk, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    ok = await talk  # a signal came first: wait for the client (it has timeouts)
                else:
                    await stop.wait()
            finally:
                driver.stop()  # remove the reader and the timer before closing the reactor
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(signum)
        finally:
            app_server.close()
            await app_server.wait_closed()
    say("stopped" + (f" ({stopped_by[0]})" if stopped_by else ""))
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address of both servers (default: %(default)s)")
    parser.add_argument("--echo-port", type=int, default=0,
                        help="the reactor's echo server port (default: any free port)")
    parser.add_argument("--asyncio-port", type=int, default=0,
                        help="the asyncio server port (default: any free port)")
    parser.add_argument("--idle", type=float, default=30.0, metavar="SECONDS",
                        help="the echo server's timeout: report after this long without a request "
                             "(a reactor timer; 0 disables it; default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="a client talks to both servers, then the application shuts down")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
