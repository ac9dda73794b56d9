#!/usr/bin/env python3
"""The socketserver tutorial's simple echo server, on ``from reactor import socketserver``.

What it shows
-------------
* The classic tutorial program (PyMOTW, "SocketServer - Creating network
  servers") with one line changed, the import: a ``BaseRequestHandler``
  whose ``handle()`` sends back what it receives, served by a plain
  ``socketserver.TCPServer``.
* ``--once``: ``serve_forever()`` runs in a background thread, the main
  thread is the client, then ``shutdown()`` and ``server_close()``. With
  reactor, ``shutdown()`` returns at once instead of waiting up to
  ``poll_interval``.
* Without ``--once``: ``serve_forever()`` runs in the main thread until
  Ctrl-C or SIGTERM. The signal handler simply calls ``server.shutdown()``:
  reactor's ``shutdown()`` may be called from the serving thread (the
  stdlib's would deadlock there).

Run it
------
::

    python examples/echo_simple.py --once          # one client sends "Hello, world", then exit
    python examples/echo_simple.py --port 9000     # serve until Ctrl-C; then, in another shell:
    printf 'Hello' | nc 127.0.0.1 9000             #   prints Hello
    python examples/echo_simple.py --help
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


class EchoRequestHandler(socketserver.BaseRequestHandler):
    """Echo back what the client sent: the tutorial's handler."""

    def handle(self) -> None:
        # Requests run in the serving thread: a silent client must not hold it forever.
        self.request.settimeout(TIMEOUT)
        data = self.request.recv(1024)
        self.request.sendall(data)


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


def run_once(server: socketserver.TCPServer) -> int:
    """Serve in a background thread, play one client, shut down."""
    thread = threading.Thread(target=server.serve_forever, name="server")
    thread.start()
    try:
        print(f"Sending : {MESSAGE}")
        response = client(server.server_address, MESSAGE)
        print(f"Received: {response}")
    except OSError as exc:
        print(f"error: no reply: {exc!r}", file=sys.stderr)
        return 1
    finally:
        server.shutdown()  # serve_forever() returns; prompt with reactor
        thread.join()
    return 0 if response == MESSAGE else 1


def serve(server: socketserver.TCPServer) -> int:
    """Serve in this thread until Ctrl-C or SIGTERM."""
    stopped_by: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        stopped_by.append(signal.Signals(signum).name)
        server.shutdown()  # from the serving thread itself: returns at once

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"listening on {describe(server)}", flush=True)
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
                        help="run the built-in client against the server, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        server = socketserver.TCPServer((options.host, options.port), EchoRequestHandler)
    except OSError as exc:  # e.g. "Address already in use: cannot bind tcp4 127.0.0.1:9000"
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with server:  # server_close() on the way out
        if options.once:
            print(f"listening on {describe(server)}", flush=True)
            return run_once(server)
        return serve(server)


if __name__ == "__main__":
    sys.exit(main())
