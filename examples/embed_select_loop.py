#!/usr/bin/env python3
"""Embed a Reactor in an existing select.select() loop that has duties of its own.

What it shows
-------------
The host program below already has its own loop, the kind many programs
have: one ``select.select()`` over its descriptors and a periodic timer. It
reads commands from stdin (``status``, ``quit``) and prints ``tick N`` every
``--tick`` seconds. Three additions, marked ``[reactor]`` in
``HostLoop.run()``, let the same loop, in the same thread, drive a
:class:`reactor.Reactor` that hosts a TCP echo server:

1. watch ``reactor.fileno()`` beside the host's own descriptors: it becomes
   readable whenever the reactor has I/O to dispatch;
2. never sleep past ``reactor.time_until_next()``: the reactor's timers (here
   the echo server's idle ``timeout``, which calls ``handle_timeout()``) do
   not make that descriptor readable, so the host combines the reactor's
   deadline with its own tick deadline;
3. call ``reactor.run_once(0)`` after every wake-up: it dispatches what is
   ready and never blocks.

Requirements: ``fileno()`` is the selector's own descriptor, so the reactor
needs an epoll (Linux), kqueue (BSD, macOS) or devpoll selector -- the
default on those systems. With ``select`` or ``poll`` selectors
``fileno()`` raises ``io.UnsupportedOperation``, and this example exits
with an error.

Requests run inline, inside ``run_once()``, in the host loop's thread: keep
handlers short. The echo handler bounds each read with a ``timeout`` so that
a client that stalls cannot freeze the host loop for ever.

Signals belong to the host, as they would in any program that has its own
loop: SIGINT (Ctrl-C) and SIGTERM get plain ``signal.signal`` handlers that
write the signal number to a self-pipe, which the loop watches like any
other descriptor (the classic self-pipe trick). ``Reactor.add_signal_handler``
is not used: only one loop in a process can own the signals.

Run it
------
::

    python examples/embed_select_loop.py          # type "status" or "quit"; Ctrl-C / SIGTERM stop it
    printf 'hello\\n' | nc 127.0.0.1 PORT          # from another terminal: the echo server answers
    python examples/embed_select_loop.py --once   # a client thread talks to the echo server, then the loop exits
    python examples/embed_select_loop.py --help

End of input on stdin (Ctrl-D) works like ``quit``. Exit status: 0 after a
clean shutdown; 1 if the reactor cannot be embedded or, with ``--once``, the
client did not get the expected reply.
"""

from __future__ import annotations

import argparse
import io
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

try:
    from reactor import Reactor, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, socketserver
from reactor.binding import describe_address

#: Every client socket, and every read of the echo handler, gives up after this many seconds.
TIMEOUT = 5.0
#: What the --once client thread writes to the self-pipe when it is done (signal numbers start at 1).
CLIENT_DONE = 0

_print_lock = threading.Lock()


def say(message: str) -> None:
    """print() one whole line: the host loop and the --once client thread both print."""
    with _print_lock:
        print(message, flush=True)


# -- the host program's own loop ----------------------------------------------


class HostLoop:
    """The application's ``select()`` loop: descriptors with callbacks, and a periodic tick.

    Everything here predates the reactor except the three ``[reactor]`` lines in ``run()``.
    """

    def __init__(self, tick_interval: float) -> None:
        self.readers: dict[int, Callable[[], None]] = {}
        self.tick_interval = tick_interval
        self.ticks = 0
        self.next_tick = time.monotonic() + tick_interval
        self.stop_reason: str | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def seconds_to_tick(self) -> float:
        return max(self.next_tick - time.monotonic(), 0.0)

    def run(self, reactor: Reactor) -> None:
        reactor_fd = reactor.fileno()                    # [reactor] 1. its descriptor
        while self.stop_reason is None:
            timeout = self.seconds_to_tick()
            reactor_due = reactor.time_until_next()      # [reactor] 2. its next timer
            if reactor_due is not None:
                timeout = min(timeout, reactor_due)
            readable, _, _ = select.select([*self.readers, reactor_fd], [], [], timeout)
            for fd in readable:
                callback = self.readers.get(fd)  # a callback may have removed it
                if callback is not None:
                    callback()
            reactor.run_once(0)                          # [reactor] 3. dispatch what is ready; never blocks
            now = time.monotonic()
            if now >= self.next_tick:
                self.ticks += 1
                say(f"tick {self.ticks}")
                self.next_tick += self.tick_interval
                if self.next_tick <= now:  # fell behind (a long handler): skip, do not burst
                    self.next_tick = now + self.tick_interval


class Commands:
    """The host's stdin duty: one command per line."""

    def __init__(self, loop: HostLoop, reactor: Reactor, fd: int) -> None:
        self.loop = loop
        self.reactor = reactor
        self.fd = fd
        self.pending = b""

    def on_readable(self) -> None:
        # os.read, not sys.stdin.readline(): select() knows nothing of Python's
        # buffer, and a line left there would wait for the next keystroke.
        data = os.read(self.fd, 4096)
        if not data:  # end of input (Ctrl-D, or the pipe was closed)
            self.loop.remove_reader(self.fd)
            self.loop.stop("end of input")
            return
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            self.run(line.decode("utf-8", "replace").strip())

    def run(self, command: str) -> None:
        if command == "status":
            for server in self.reactor.servers:
                say(f"status: server {describe(server)}")
            due = self.reactor.time_until_next()
            say("status: next reactor timer " + ("none" if due is None else f"in {due:.2f}s"))
            say(f"status: next tick in {self.loop.seconds_to_tick():.2f}s")
        elif command == "quit":
            self.loop.stop("quit")
        elif command:
            say(f"unknown command {command!r}: try status or quit")


# -- the echo server the reactor hosts ----------------------------------------


class EchoHandler(socketserver.StreamRequestHandler):
    """Reads one line, answers it upper-cased."""

    timeout = TIMEOUT  # runs inside the host loop: bound every read

    def handle(self) -> None:
        line = self.rfile.readline()
        say(f"echo server: {line!r}, in thread {threading.current_thread().name}")
        self.wfile.write(line.upper())


class EchoServer(socketserver.TCPServer):
    """With ``timeout`` set, the reactor calls ``handle_timeout()`` after that long without a request.

    That is a reactor *timer*: the host loop only runs it because it sleeps
    at most ``reactor.time_until_next()``.
    """

    def handle_timeout(self) -> None:
        say(f"echo server: no request for {self.timeout:g}s")


def describe(server: Any) -> str:
    where = describe_address(server.socket.family, server.socket.type, server.server_address)
    return f"{where}  ({type(server).__name__})"


# -- the --once client ----------------------------------------------------------


def client(address: Any, wake_fd: int, outcome: list[bool]) -> None:
    """Talk to the echo server while the host loop runs, then tell the loop through the self-pipe."""
    line = b"hello from a client thread\n"
    try:
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            say(f"client: sending {line!r}")
            sock.sendall(line)
            with sock.makefile("rb") as reader:
                reply = reader.readline()
        say(f"client: received {reply!r}")
        outcome.append(reply == line.upper())
    except OSError as exc:
        print(f"error: the echo server did not answer: {exc!r}", file=sys.stderr, flush=True)
        outcome.append(False)
    finally:
        os.write(wake_fd, bytes([CLIENT_DONE]))


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="echo server address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="echo server port (default: any free port)")
    parser.add_argument("--tick", type=float, default=1.0, metavar="SECONDS",
                        help="the host loop's own timer: print 'tick N' this often (default: %(default)s)")
    parser.add_argument("--idle", type=float, default=30.0, metavar="SECONDS",
                        help="the echo server's timeout: report after this long without a request "
                             "(a reactor timer; 0 disables it; default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="a client thread talks to the echo server, then the loop exits (stdin is not read)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    reactor = Reactor()  # the default selector: epoll or kqueue
    try:
        reactor.fileno()
    except io.UnsupportedOperation as exc:
        reactor.close()
        print(f"error: cannot embed the reactor here: {exc}", file=sys.stderr)
        return 1

    loop = HostLoop(options.tick)
    wake_r, wake_w = os.pipe()  # the self-pipe: signal handlers and the client thread write to it
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    outcome: list[bool] = []
    previous_handlers: dict[int, Any] = {}
    thread = None

    def on_signal(signum: int, frame: object) -> None:
        # A Python-level handler: it runs in the main thread between two
        # bytecodes (select() returns EINTR, the handler runs, select() is
        # retried and sees the pipe readable). It only records the signal.
        try:
            os.write(wake_w, bytes([signum]))
        except BlockingIOError:
            pass  # the pipe is full: the loop has plenty to wake up for already

    def on_wake() -> None:
        for byte in os.read(wake_r, 512):
            loop.stop("client done" if byte == CLIENT_DONE else signal.Signals(byte).name)

    try:
        server = EchoServer((options.host, options.port), EchoHandler)
        if options.idle > 0:
            server.timeout = options.idle
        try:
            reactor.add_server(server)
        except BaseException:
            server.server_close()
            raise
        say(f"listening on {describe(server)}")

        loop.add_reader(wake_r, on_wake)
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[signum] = signal.signal(signum, on_signal)
        if options.once:
            thread = threading.Thread(target=client, args=(server.server_address, wake_w, outcome), name="client")
            thread.start()
        else:
            loop.add_reader(sys.stdin.fileno(), Commands(loop, reactor, sys.stdin.fileno()).on_readable)
            say('commands: status, quit (Ctrl-C or SIGTERM also stop)')
        loop.run(reactor)
    finally:
        if thread is not None:
            thread.join()
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        reactor.close()  # server_close() on the echo server
        os.close(wake_r)
        os.close(wake_w)
    say(f"stopped ({loop.stop_reason})")
    if options.once and outcome != [True]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
