#!/usr/bin/env python3
"""The socketserver tutorial's logging echo server: every hook, in the order it is called.

What it shows
-------------
* The classic tutorial program (PyMOTW, "SocketServer - Creating network
  servers") on ``from reactor import socketserver``: ``EchoServer`` (a
  ``TCPServer``) and ``EchoRequestHandler`` (a ``BaseRequestHandler``)
  override every hook to log the call, then run the base implementation.
  The log therefore shows socketserver's call sequence for one request::

      EchoServer: verify_request, process_request, finish_request
      EchoRequestHandler: __init__, setup, handle, finish
      EchoServer: close_request

* ``--once``: ``serve_forever()`` runs in a background thread, the main
  thread is the ``client`` (it logs each step), then ``shutdown()`` and
  ``server_close()``. The two threads log side by side: each one's lines are
  always in this order, but where the client's lines fall between the
  server's can vary a little from run to run.
* ``handle_request()`` is overridden too, as in the tutorial, but it is not
  in the log: reactor's ``serve_forever()`` waits on a selector and takes
  requests itself, it does not loop on ``handle_request()`` (neither does the
  stdlib's). The override only logs if you call ``handle_request()``
  yourself.
* Without ``--once``: ``serve_forever()`` runs in the main thread until
  Ctrl-C or SIGTERM, logging each request; the signal handler calls
  ``server.shutdown()``, which reactor allows from the serving thread.

Run it
------
::

    python examples/echo_logging.py --once          # one client sends "Hello, world", then exit
    python examples/echo_logging.py --port 9000     # serve until Ctrl-C; then, in another shell:
    printf 'Hello' | nc 127.0.0.1 9000              #   prints Hello; the server logs every hook
    python examples/echo_logging.py --help
"""

from __future__ import annotations

import argparse
import logging
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


def short(request: socket.socket) -> str:
    """The request socket for the log, without its long repr."""
    return f"<socket fd={request.fileno()}>"


class EchoRequestHandler(socketserver.BaseRequestHandler):
    """Echo back what the client sent, logging each step of the handler's life."""

    def __init__(self, request: Any, client_address: Any, server: socketserver.BaseServer) -> None:
        self.logger = logging.getLogger("EchoRequestHandler")
        self.logger.debug("__init__")
        super().__init__(request, client_address, server)  # runs setup(), handle(), finish()

    def setup(self) -> None:
        self.logger.debug("setup")
        super().setup()

    def handle(self) -> None:
        self.logger.debug("handle")
        # Requests run in the serving thread: a silent client must not hold it forever.
        self.request.settimeout(TIMEOUT)
        data = self.request.recv(1024)
        self.logger.debug('recv()->"%s"', data.decode("utf-8", "backslashreplace"))
        self.request.sendall(data)

    def finish(self) -> None:
        self.logger.debug("finish")
        super().finish()


class EchoServer(socketserver.TCPServer):
    """A TCPServer that logs every hook, then runs it."""

    def __init__(self, server_address: Any, handler_class: Any = EchoRequestHandler) -> None:
        self.logger = logging.getLogger("EchoServer")
        self.logger.debug("__init__")
        super().__init__(server_address, handler_class)  # binds, then calls server_activate()

    def server_activate(self) -> None:
        self.logger.debug("server_activate")
        super().server_activate()

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        self.logger.debug("waiting for request")
        super().serve_forever(poll_interval)  # does not go through handle_request()

    def handle_request(self) -> None:
        self.logger.debug("handle_request")
        super().handle_request()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.logger.debug("verify_request(%s, %s)", short(request), client_address)
        return super().verify_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.logger.debug("process_request(%s, %s)", short(request), client_address)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.logger.debug("finish_request(%s, %s)", short(request), client_address)
        super().finish_request(request, client_address)

    def close_request(self, request: Any) -> None:
        self.logger.debug("close_request(%s)", short(request))
        super().close_request(request)

    def shutdown(self) -> None:
        self.logger.debug("shutdown")
        super().shutdown()

    def server_close(self) -> None:
        self.logger.debug("server_close")
        super().server_close()


def receive_all(sock: socket.socket) -> bytes:
    """Read until the server closes the connection."""
    chunks = []
    while chunk := sock.recv(1024):
        chunks.append(chunk)
    return b"".join(chunks)


def client(server: EchoServer) -> str:
    """The tutorial's client, logging each step; returns the server's response."""
    logger = logging.getLogger("client")
    ip, port = server.server_address[:2]
    logger.info("Server on %s:%s", ip, port)

    logger.debug("creating socket")
    sock = socket.socket(server.socket.family, socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        logger.debug("connecting to server")
        sock.connect(server.server_address)

        logger.debug("sending data: %r", MESSAGE)
        sock.sendall(MESSAGE.encode())

        response = receive_all(sock).decode("utf-8", "backslashreplace")
        logger.debug("response from server: %r", response)
    finally:
        logger.debug("closing socket")
        sock.close()
    logger.debug("done")
    return response


def run_once(server: EchoServer) -> int:
    """Serve in a background thread, play the client, shut down."""
    thread = threading.Thread(target=server.serve_forever, name="server")
    thread.start()
    try:
        response = client(server)
    except OSError as exc:
        print(f"error: no reply: {exc!r}", file=sys.stderr)
        return 1
    finally:
        server.shutdown()  # serve_forever() returns; prompt with reactor
        thread.join()
    return 0 if response == MESSAGE else 1


def serve(server: EchoServer) -> int:
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
    logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format="%(name)s: %(message)s")
    logging.getLogger("reactor").setLevel(logging.INFO)  # the tutorial's DEBUG lines only

    try:
        server = EchoServer((options.host, options.port))
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
