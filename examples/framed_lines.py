#!/usr/bin/env python3
"""A key-value line protocol on a framed handler: 50 open connections, 4 pool threads.

What it shows
-------------
* ``socketserver.LineRequestHandler``: the handler declares its messages are
  lines and implements ``handle_message(line)``, returning the reply line.
  The reactor reads, frames and writes in its loop; each line runs on a
  ``ThreadPool(4)`` worker, one at a time per connection, so replies keep
  request order.
* Between lines a connection holds no thread: ``--once`` keeps 50 client
  connections open together and has each send commands in turns, all served
  by the pool's 4 threads (compare ``line_protocol.py``, where each open
  connection holds a worker).
* The protocol's own error for an overlong line (``frame_error``), after
  which the connection closes; ``max_line`` bounds what a client can make
  the server buffer.

The protocol (one line per command, UTF-8, at most 256 bytes with the newline)::

    SET <key> <value>   -> OK
    GET <key>           -> VALUE <value> | NOT_FOUND
    anything else       -> ERROR <reason>

Run it
------
::

    python examples/framed_lines.py --once
    python examples/framed_lines.py --port 8000     # serve until Ctrl-C or SIGTERM, then:
    nc 127.0.0.1 8000                                 # type: SET a 1, GET a

Exit status: 0 on success (``--once``: every answer was the expected one), 1 otherwise.
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
    from reactor import Reactor, ThreadPool, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, ThreadPool, socketserver
from reactor.binding import describe_address

#: Clients ``--once`` keeps connected at the same time.
CLIENTS = 50
#: Worker threads of the pool.
WORKERS = 4
#: Every client socket gives up after this many seconds without an answer.
CLIENT_TIMEOUT = 10.0


class KeyValueServer(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: Any) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, str] = {}
        self.threads: set[str] = set()  # the pool threads that ran a command
        super().__init__(address, KeyValueHandler)


class KeyValueHandler(socketserver.LineRequestHandler):
    """One line in, one line out; lines are framed by the reactor, not read here."""

    max_line = 256
    server: KeyValueServer

    def handle_message(self, line: bytes) -> bytes:
        with self.server.lock:
            self.server.threads.add(threading.current_thread().name)
        try:
            words = line.decode("utf-8").split(maxsplit=2)
        except UnicodeDecodeError:
            return b"ERROR line is not valid UTF-8"
        if len(words) == 3 and words[0].upper() == "SET":
            with self.server.lock:
                self.server.data[words[1]] = words[2]
            return b"OK"
        if len(words) == 2 and words[0].upper() == "GET":
            with self.server.lock:
                value = self.server.data.get(words[1])
            return b"NOT_FOUND" if value is None else f"VALUE {value}".encode("utf-8")
        return b"ERROR usage: SET <key> <value> | GET <key>"

    def frame_error(self, exc: Exception) -> bytes:
        return f"ERROR line too long (limit {self.max_line} bytes)\n".encode()


def run_clients(address: Any) -> bool:
    """50 connections open at once, taking turns; True when every answer was the expected one."""
    socks = [socket.create_connection(address, timeout=CLIENT_TIMEOUT) for _ in range(CLIENTS)]
    readers = [sock.makefile("rb") for sock in socks]
    try:
        for round_ in range(3):
            for index, sock in enumerate(socks):
                sock.sendall(f"SET k{index} round{round_}\nGET k{index}\n".encode())
            for index, reader in enumerate(readers):
                answers = [reader.readline(), reader.readline()]
                if answers != [b"OK\n", f"VALUE round{round_}\n".encode()]:
                    print(f"error: client {index} received {answers!r}", file=sys.stderr, flush=True)
                    return False
        print(f"{CLIENTS} connections open at once, 3 rounds of SET and GET each: answered in order", flush=True)
        socks[0].sendall(b"GET " + b"x" * 300 + b"\n")
        answer, rest = readers[0].readline(), readers[0].read()
        print(f"an overlong line: {answer.decode().strip()}; then the connection closed: {rest == b''}", flush=True)
        return answer == b"ERROR line too long (limit 256 bytes)\n" and rest == b""
    finally:
        for reader in readers:
            reader.close()
        for sock in socks:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    parser.add_argument("--once", action="store_true", help="run the scripted clients, print, exit")
    options = parser.parse_args(argv)

    with Reactor() as reactor:
        server = KeyValueServer((options.host, options.port))
        # keepalive_timeout: a connection silent for a minute is closed.
        reactor.add_server(server, dispatch=ThreadPool(WORKERS, name="kv"), keepalive_timeout=60)
        where = describe_address(server.socket.family, server.socket.type, server.server_address)
        print(f"listening on {where}", flush=True)
        reactor.add_signal_handler(signal.SIGINT, reactor.stop)
        reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
        if not options.once:
            print("serving until Ctrl-C or SIGTERM", flush=True)
            reactor.serve_forever()
            return 0

        outcome: list[bool] = []

        def client() -> None:
            try:
                outcome.append(run_clients(server.server_address))
            finally:
                reactor.stop()

        thread = threading.Thread(target=client, name="clients")
        thread.start()
        reactor.serve_forever()
        thread.join()
        threads = len(server.threads)
        print(f"pool threads that ran commands: {threads} (of {WORKERS}), for {CLIENTS} open connections",
              flush=True)
        if outcome == [True] and threads <= WORKERS:
            print("ok", flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
