#!/usr/bin/env python3
"""The socketserver tutorial's threaded echo server: a new thread for each request.

What it shows
-------------
* The classic tutorial program (PyMOTW, "SocketServer - Creating network
  servers") on ``from reactor import socketserver``:
  ``class ThreadedEchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer)``
  runs each request in a thread of its own, and the handler puts that
  thread's name in front of the echo, so the reply tells who answered.
* ``--once``: ``serve_forever()`` runs in a background thread named
  ``server``; three clients talk to it at the same time. Each reply comes from
  a different request thread, none of them the serving thread: the check at
  the end says so.
* Reactor's ``ThreadingMixIn`` forgets each request thread as it ends, and
  ``server_close()`` still waits for the ones running (``block_on_close``).
* Without ``--once``: ``serve_forever()`` runs in the main thread until
  Ctrl-C or SIGTERM; the signal handler calls ``server.shutdown()``, which
  reactor allows from the serving thread.

Run it
------
::

    python examples/echo_threaded.py --once          # three clients at once, then exit
    python examples/echo_threaded.py --port 9000     # serve until Ctrl-C; then, in another shell:
    printf 'Hello' | nc 127.0.0.1 9000               #   prints Thread-2 (process_request_thread): Hello
    python examples/echo_threaded.py --help
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
from typing import Any

try:
    from reactor import socketserver  # instead of: import socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import socketserver
from reactor.binding import describe_address

#: Seconds a client waits for the server, and the server for a client.
TIMEOUT = 5.0
MESSAGE = "Hello, world"
CLIENTS = 3


class ThreadedEchoRequestHandler(socketserver.BaseRequestHandler):
    """Echo back what the client sent, prefixed with the name of the thread handling it."""

    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)  # a silent client must not hold its thread forever
        data = self.request.recv(1024)
        cur_thread = threading.current_thread()
        response = cur_thread.name.encode() + b": " + data
        self.request.sendall(response)


class ThreadedEchoServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A TCPServer that runs each request in a new thread."""


def receive_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(1024):
        chunks.append(chunk)
    return b"".join(chunks)


def client(address: Any, message: str) -> str:
    """Send ``message``, return the reply."""
    with socket.create_connection(address[:2], timeout=TIMEOUT) as sock:
        sock.sendall(message.encode())
        return receive_all(sock).decode()


def run_clients(address: Any) -> list[str | BaseException]:
    """Run ``CLIENTS`` clients at the same time; return each one's reply (or error), in order."""
    results: list[str | BaseException] = [TimeoutError("no reply")] * CLIENTS

    def one(index: int) -> None:
        try:
            results[index] = client(address, MESSAGE)
        except OSError as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,), name=f"client-{i + 1}") for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def check(replies: list[str | BaseException], server_thread: str) -> int:
    """Print each exchange, then whether every reply came from its own request thread."""
    names = []
    for index, reply in enumerate(replies, 1):
        print(f"client-{index}: Sending : {MESSAGE}")
        if isinstance(reply, BaseException):
            print(f"error: client-{index}: no reply: {reply!r}", file=sys.stderr)
            return 1
        print(f"client-{index}: Received: {reply}")
        name, _, echoed = reply.partition(": ")
        if echoed != MESSAGE:
            print(f"error: client-{index}: expected '<thread>: {MESSAGE}', received {reply!r}", file=sys.stderr)
            return 1
        names.append(name)
    if len(set(names)) != len(names) or server_thread in names:
        print(f"error: expected {len(names)} different request threads, none of them {server_thread!r}; "
              f"got {names}", file=sys.stderr)
        return 1
    print(f"ok: {len(names)} replies from {len(names)} different request threads, "
          f"none from the serving thread {server_thread!r}")
    return 0


def run_once(server: ThreadedEchoServer) -> int:
    """Serve in a background thread, run the clients at once, shut down."""
    thread = threading.Thread(target=server.serve_forever, name="server")
    thread.start()
    print(f"Server loop running in thread: {thread.name}")
    try:
        replies = run_clients(server.server_address)
    finally:
        server.shutdown()  # serve_forever() returns; prompt with reactor
        thread.join()
    return check(replies, thread.name)


def serve(server: ThreadedEchoServer) -> int:
    """Serve in this thread until Ctrl-C or SIGTERM."""
    stopped_by: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        server.shutdown()  # from the serving thread itself: returns at once

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"listening on {describe(server)}", flush=True)
    print(f"Server loop running in thread: {threading.current_thread().name}", flush=True)
    server.serve_forever()
    print(f"stopped by {', '.join(stopped_by)}", flush=True)
    return 0


def describe(server: socketserver.TCPServer) -> str:
    """``tcp4 127.0.0.1:40000`` or ``tcp6 [::1]:40000``."""
    return describe_address(server.socket.family, server.socket.type, server.server_address)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--once", action="store_true",
                        help=f"run {CLIENTS} clients at once against the server, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        server = ThreadedEchoServer((options.host, options.port), ThreadedEchoRequestHandler)
    except OSError as exc:  # e.g. "Address already in use: cannot bind tcp4 127.0.0.1:9000"
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with server:  # server_close(): closes the socket, waits for running request threads
        if options.once:
            print(f"listening on {describe(server)}", flush=True)
            return run_once(server)
        return serve(server)


if __name__ == "__main__":
    sys.exit(main())
