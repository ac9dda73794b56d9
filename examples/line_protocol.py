#!/usr/bin/env python3
"""A small line protocol done properly: a key-value service on StreamRequestHandler and a ThreadPool.

What it shows
-------------
* A real protocol on ``socketserver.StreamRequestHandler``: read a line with
  ``self.rfile.readline()``, answer a line with ``self.wfile.write()``, many
  commands per connection.
* The defences a line protocol needs:

  - a line-length limit: ``rfile.readline(LINE_LIMIT + 1)`` never reads more
    than that, so a client cannot make the server buffer an endless line;
    a longer line gets ``ERROR line too long ...`` and the connection closes
    (the rest of the line is never read);
  - clear errors for bad input (unknown command, wrong number of arguments,
    bytes that are not UTF-8, an empty line), after which the connection
    stays usable;
  - an idle timeout through the handler's ``timeout`` class attribute:
    ``StreamRequestHandler.setup()`` puts it on the socket, so a read from a
    client silent that long raises ``TimeoutError``; the handler then closes
    the connection without a word.

* Shared state under concurrency: the server runs on a ``ThreadPool``, so
  several handlers run at once, on different threads; the store they share
  takes a lock for every access.

The protocol (one line per command, UTF-8, at most 1024 bytes with the newline;
one answer line per command)::

    SET <key> <value>   -> OK                  (the value is the rest of the line)
    GET <key>           -> VALUE <value> | NOT_FOUND
    DEL <key>           -> OK | NOT_FOUND
    QUIT                -> OK, then the server closes the connection
    anything else       -> ERROR <reason>

``--once`` runs a scripted session that uses every command and causes every
error, printing the exchange (``>`` sent, ``<`` received).

Run it
------
::

    python examples/line_protocol.py --once
    python examples/line_protocol.py --port 8000 --idle-timeout 60   # serve until Ctrl-C or SIGTERM, then:
    nc 127.0.0.1 8000                                                # type: SET a 1, GET a, QUIT

Exit status: 0 on success (``--once``: every answer was the expected one), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

try:
    from reactor import Reactor, ThreadPool, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, ThreadPool, socketserver
from reactor.binding import describe_address

#: Longest line accepted, newline included.
LINE_LIMIT = 1024
#: Seconds a client may stay silent before the server closes the connection.
IDLE_TIMEOUT = 30.0
#: ``--once`` uses this shorter idle timeout unless --idle-timeout is given, to show it quickly.
ONCE_IDLE_TIMEOUT = 1.0
#: Every client socket gives up after this many seconds without an answer.
CLIENT_TIMEOUT = 5.0


# -- the service ----------------------------------------------------------------


class Store:
    """The data all connections share. Handlers run on several threads at once: every access takes the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._data[key] = value

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._data.get(key)

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None


class KeyValueServer(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: Any, store: Store) -> None:
        self.store = store
        super().__init__(address, KeyValueHandler)


class KeyValueHandler(socketserver.StreamRequestHandler):
    """One connection: commands in, one answer line each, until QUIT, EOF, an overlong line or the idle timeout."""

    #: The idle timeout. socketserver configures handlers through class
    #: attributes; StreamRequestHandler.setup() applies this one to the socket.
    timeout = IDLE_TIMEOUT

    server: KeyValueServer

    def handle(self) -> None:
        commands: dict[str, tuple[int, Callable[[list[str]], str]]] = {
            # name: (number of words after it, what it does); "SET" takes the rest of the line as one
            "SET": (2, self.cmd_set), "GET": (1, self.cmd_get), "DEL": (1, self.cmd_del), "QUIT": (0, self.cmd_quit),
        }
        self.open = True
        while self.open:
            try:
                line = self.rfile.readline(LINE_LIMIT + 1)  # never buffer more than the limit
            except TimeoutError:
                return  # silent for `timeout` seconds: close without a word
            except ConnectionError:
                return  # the client reset the connection
            if not line:
                return  # the client closed its side
            if len(line) > LINE_LIMIT:
                self.answer(f"ERROR line too long (limit {LINE_LIMIT} bytes)")
                return  # the rest of that line is still unread: close rather than resynchronise
            self.answer(self.execute(line.rstrip(b"\r\n"), commands))

    def execute(self, line: bytes, commands: dict[str, tuple[int, Callable[[list[str]], str]]]) -> str:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return "ERROR line is not valid UTF-8"
        words = text.split(maxsplit=2)  # command, key, and the rest of the line (a value may hold spaces)
        if not words:
            return "ERROR empty line"
        name = words[0].upper()
        if name not in commands:
            return f"ERROR unknown command {words[0]!r}"
        arity, command = commands[name]
        if len(words) - 1 != arity:
            usage = {"SET": "SET <key> <value>", "GET": "GET <key>", "DEL": "DEL <key>", "QUIT": "QUIT"}[name]
            return f"ERROR wrong number of arguments: usage: {usage}"
        return command(words[1:])

    def cmd_set(self, args: list[str]) -> str:
        self.server.store.set(args[0], args[1])
        return "OK"

    def cmd_get(self, args: list[str]) -> str:
        value = self.server.store.get(args[0])
        return "NOT_FOUND" if value is None else f"VALUE {value}"

    def cmd_del(self, args: list[str]) -> str:
        return "OK" if self.server.store.delete(args[0]) else "NOT_FOUND"

    def cmd_quit(self, args: list[str]) -> str:
        self.open = False
        return "OK"

    def answer(self, text: str) -> None:
        self.wfile.write(text.encode("utf-8") + b"\n")


# -- the --once session ---------------------------------------------------------------


class Session:
    """One client connection that prints every line it sends (``>``) and receives (``<``)."""

    def __init__(self, number: int, address: Any, timeout: float = CLIENT_TIMEOUT) -> None:
        self.label = f"[{number}]"
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def receive_line(self) -> bytes:
        """The next line from the server; b"" once it closed the connection."""
        while b"\n" not in self.buffer:
            try:
                chunk = self.sock.recv(4096)
            except ConnectionResetError:
                chunk = b""  # closed with our unread bytes in its buffer: a reset, same meaning
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line + b"\n"

    def exchange(self, line: bytes, expected: str, shown: str | None = None) -> bool:
        """Send ``line`` (a newline is added), print both sides; True if the answer is ``expected``."""
        print(f"{self.label} > {shown if shown is not None else shown_line(line)}", flush=True)
        self.sock.sendall(line + b"\n")
        answer = self.receive_line()
        print(f"{self.label} < {answer.decode('utf-8', 'replace').rstrip()}", flush=True)
        if answer != expected.encode("utf-8") + b"\n":
            print(f"error: {self.label} expected {expected!r}, received {answer!r}", file=sys.stderr, flush=True)
            return False
        return True

    def closed_by_server(self) -> bool:
        """True if the server closed the connection (EOF) without sending anything more."""
        rest = self.receive_line()
        if rest:
            print(f"error: {self.label} expected the connection closed, received {rest!r}",
                  file=sys.stderr, flush=True)
            return False
        print(f"{self.label} (closed by the server)", flush=True)
        return True


def shown_line(line: bytes) -> str:
    try:
        return line.decode("utf-8") if line else "(an empty line)"
    except UnicodeDecodeError:
        return f"{line!r} (not UTF-8)"


def run_session(address: Any, idle_timeout: float) -> bool:
    """The scripted --once session; True when every answer was the expected one."""
    sessions: list[Session] = []
    try:
        idle = Session(1, address, timeout=idle_timeout + CLIENT_TIMEOUT)
        sessions.append(idle)
        idle_since = time.monotonic()
        print(f"{idle.label} connected; says nothing (its handler waits on a pool thread meanwhile)", flush=True)

        main = Session(2, address)
        sessions.append(main)
        script: list[tuple[bytes, str]] = [
            (b"SET color blue", "OK"),
            (b"GET color", "VALUE blue"),
            (b"SET motto hello, world", "OK"),
            (b"GET motto", "VALUE hello, world"),
            (b"DEL color", "OK"),
            (b"GET color", "NOT_FOUND"),
            (b"DEL color", "NOT_FOUND"),
            (b"FETCH color", "ERROR unknown command 'FETCH'"),
            (b"GET", "ERROR wrong number of arguments: usage: GET <key>"),
            (b"GET color motto", "ERROR wrong number of arguments: usage: GET <key>"),
            (b"SET color", "ERROR wrong number of arguments: usage: SET <key> <value>"),
            (b"QUIT now", "ERROR wrong number of arguments: usage: QUIT"),
            (b"", "ERROR empty line"),
            (b"SET name caf\xe9", "ERROR line is not valid UTF-8"),  # Latin-1, not UTF-8
            (b"set name caf\xc3\xa9", "OK"),  # commands are case-insensitive; UTF-8 values are fine
            (b"GET name", "VALUE caf\u00e9"),
            (b"QUIT", "OK"),
        ]
        for line, expected in script:
            if not main.exchange(line, expected):
                return False
        if not main.closed_by_server():
            return False

        other = Session(3, address)
        sessions.append(other)
        if not other.exchange(b"GET motto", "VALUE hello, world"):  # another connection, the same store
            return False
        long_line = b"SET big " + b"x" * 2000
        if not other.exchange(long_line, f"ERROR line too long (limit {LINE_LIMIT} bytes)",
                              shown=f"SET big xxx... ({len(long_line) + 1} bytes with the newline)"):
            return False
        if not other.closed_by_server():
            return False

        if not idle.closed_by_server():
            return False
        silent = time.monotonic() - idle_since
        if silent < idle_timeout:  # the server's clock started after our connect: it cannot be shorter
            print(f"error: {idle.label} closed after {silent:.2f}s, before the {idle_timeout:g}s idle timeout",
                  file=sys.stderr, flush=True)
            return False
        print(f"{idle.label} closed after at least the {idle_timeout:g}s idle timeout, without an answer",
              flush=True)
        print(f"ok: {len(script) + 2} commands answered as expected; "
              "line limit, bad input and idle timeout handled", flush=True)
        return True
    except OSError as exc:
        print(f"error: client: {exc!r}", file=sys.stderr, flush=True)
        return False
    finally:
        for session in sessions:
            session.close()


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help=f"close a connection silent this many seconds (default: {IDLE_TIMEOUT:g}; "
                             f"--once: {ONCE_IDLE_TIMEOUT:g})")
    parser.add_argument("--once", action="store_true", help="run the scripted client session, print it, exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    idle_timeout = options.idle_timeout
    if idle_timeout is None:
        idle_timeout = ONCE_IDLE_TIMEOUT if options.once else IDLE_TIMEOUT
    KeyValueHandler.timeout = idle_timeout  # a class attribute, as socketserver configures handlers

    pool = ThreadPool(max_workers=8, drain_timeout=5.0, name="kv")
    with Reactor() as reactor:  # leaving the block closes the server and stops the pool's threads
        server = KeyValueServer((options.host, options.port), Store())
        reactor.add_server(server, dispatch=pool)
        where = describe_address(server.socket.family, server.socket.type, server.server_address)
        print(f"listening on {where}", flush=True)

        stopped_by: list[int] = []

        def on_signal(signum: int) -> None:  # runs in the reactor's loop, not in a signal handler
            stopped_by.append(signum)
            reactor.stop()

        reactor.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
        reactor.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)

        if not options.once:
            print(f"serving (idle timeout {idle_timeout:g}s) until Ctrl-C or SIGTERM", flush=True)
            reactor.serve_forever()
            print(f"stopped by {signal.Signals(stopped_by[0]).name}" if stopped_by else "stopped", flush=True)
            return 0

        outcome: list[bool] = []

        def client() -> None:
            try:
                outcome.append(run_session(server.server_address, idle_timeout))
            finally:
                reactor.stop()  # thread-safe: serve_forever() below returns

        thread = threading.Thread(target=client, name="client")
        thread.start()
        reactor.serve_forever()
        thread.join()
    return 0 if outcome == [True] else 1


if __name__ == "__main__":
    sys.exit(main())
