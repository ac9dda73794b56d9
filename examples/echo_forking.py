#!/usr/bin/env python3
"""The socketserver tutorial's forking echo server: a new process for each request.

What it shows
-------------
* The classic tutorial program (PyMOTW, "SocketServer - Creating network
  servers") on ``from reactor import socketserver``:
  ``class ForkingEchoServer(socketserver.ForkingMixIn, socketserver.TCPServer)``
  forks a child process for each request, and the handler puts the child's
  pid in front of the echo, so the reply tells who answered.
* ``--once``: ``serve_forever()`` runs in a background thread; the main
  thread prints the server's pid, then three clients each get a reply from a
  child process, never from the server process. After ``server_close()`` no
  child process is left, not even a zombie: the check at the end says so.
* Reactor's ``ForkingMixIn`` reaps each child as it exits (a pidfd on
  Linux), waits only for its own children, and ``server_close()`` waits for
  the ones still running (``block_on_close``).
* Without ``--once``: ``serve_forever()`` runs in the main thread until
  Ctrl-C or SIGTERM; the signal handler calls ``server.shutdown()``, which
  reactor allows from the serving thread.

Run it
------
::

    python examples/echo_forking.py --once          # three clients, three child processes, then exit
    python examples/echo_forking.py --port 9000     # serve until Ctrl-C; then, in another shell:
    printf 'Hello' | nc 127.0.0.1 9000              #   prints <child pid>: Hello
    python examples/echo_forking.py --help

POSIX only (it needs ``os.fork``).
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


class ForkingEchoRequestHandler(socketserver.BaseRequestHandler):
    """Echo back what the client sent, prefixed with the pid of the process handling it."""

    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)  # a silent client must not hold its child forever
        data = self.request.recv(1024)
        cur_pid = os.getpid()
        response = b"%d: %s" % (cur_pid, data)
        self.request.sendall(response)


class ForkingEchoServer(socketserver.ForkingMixIn, socketserver.TCPServer):
    """A TCPServer that runs each request in a new child process."""


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


def run_clients(address: Any) -> int:
    """Run ``CLIENTS`` clients one after the other; check that children, not the server, answered."""
    server_pid = os.getpid()
    pids = []
    for _ in range(CLIENTS):
        print(f"Sending : {MESSAGE}")
        try:
            reply = client(address, MESSAGE)
        except OSError as exc:
            print(f"error: no reply: {exc!r}", file=sys.stderr)
            return 1
        print(f"Received: {reply}")
        pid, _, echoed = reply.partition(": ")
        if not pid.isdigit() or echoed != MESSAGE:
            print(f"error: expected '<pid>: {MESSAGE}', received {reply!r}", file=sys.stderr)
            return 1
        pids.append(int(pid))
    if server_pid in pids:
        print(f"error: the server process {server_pid} answered a request itself", file=sys.stderr)
        return 1
    print(f"ok: {len(pids)} replies from child processes {', '.join(map(str, pids))}, "
          f"none from the server process {server_pid}")
    return 0


def no_child_left() -> int:
    """Check that this process has no child left, running or zombie."""
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        print("ok: no child process left")
        return 0
    what = "a child is still running" if pid == 0 else f"child {pid} was left unreaped (a zombie)"
    print(f"error: after server_close(), {what}", file=sys.stderr)
    return 1


def run_once(server: ForkingEchoServer) -> int:
    """Serve in a background thread, run the clients, shut down."""
    thread = threading.Thread(target=server.serve_forever, name="server")
    thread.start()
    print(f"Server loop running in process: {os.getpid()}")
    try:
        status = run_clients(server.server_address)
    finally:
        server.shutdown()  # serve_forever() returns; prompt with reactor
        thread.join()
    return status


def serve(server: ForkingEchoServer) -> int:
    """Serve in this thread until Ctrl-C or SIGTERM."""
    stopped_by: list[str] = []
    server_pid = os.getpid()

    def on_signal(signum: int, frame: object) -> None:
        if os.getpid() != server_pid:
            return  # a child handling a request (Ctrl-C reaches the whole process group): let it finish
        stopped_by.append(signal.Signals(signum).name)
        server.shutdown()  # from the serving thread itself: returns at once

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"listening on {describe(server)}", flush=True)
    print(f"Server loop running in process: {server_pid}", flush=True)
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
                        help=f"run {CLIENTS} clients against the server, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        server = ForkingEchoServer((options.host, options.port), ForkingEchoRequestHandler)
    except OSError as exc:  # e.g. "Address already in use: cannot bind tcp4 127.0.0.1:9000"
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        if options.once:
            print(f"listening on {describe(server)}", flush=True)
            status = run_once(server)
        else:
            status = serve(server)
    finally:
        server.server_close()  # closes the socket, waits for (and reaps) any child still running
    if options.once and status == 0:
        status = no_child_left()
    return status


if __name__ == "__main__":
    sys.exit(main())
