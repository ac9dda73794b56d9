#!/usr/bin/env python3
"""A chat server on ``reactor.Protocol``: every connection an object, no thread per client.

What it shows
-------------
* ``Reactor.create_server(factory, address)``: one ``ChatSession`` per
  connection, driven by the loop's callbacks (``connection_made``,
  ``data_received``, ``eof_received``, ``connection_lost``); thousands of
  mostly idle clients cost a descriptor and an object each, in one thread.
* Framing of its own: bytes arrive in any split, so each session keeps a
  buffer, splits complete lines off it and searches only the new bytes; a
  line longer than ``MAX_LINE`` gets an error and the connection closes
  (never an unbounded buffer).
* Shared state without locks: every callback runs in the loop's thread.
* Flow control: a member too slow to read what the room says makes its
  transport call ``pause_writing()``; the room then drops that member rather
  than buffer without end for it.
* Leaving: Ctrl-C or SIGTERM stops the loop; ``close()`` flushes what each
  connection still has to send, then closes it.

The protocol (UTF-8 lines)::

    NICK <name>     first line: who you are        -> "* welcome, <name> (<n> here)"
    <text>          said to everyone else          -> others get "<name>: <text>"
    /who            who is here                    -> "* here: alice, bob"
    /quit           leave                          -> "* bye", then the server closes

``--once`` plays three clients against the server and prints what each one
reads.

Run: ``python examples/chat.py --once`` (serve: ``python examples/chat.py --port 7000``,
then ``nc 127.0.0.1 7000``)
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from typing import Any

from reactor import Protocol, Reactor, Transport

MAX_LINE = 1024


class Room:
    """Who is here; touched only from the loop's thread, so it needs no lock."""

    def __init__(self) -> None:
        self.members: dict[str, ChatSession] = {}

    def say(self, sender: ChatSession | None, line: str) -> None:
        for member in list(self.members.values()):
            if member is not sender:
                member.send(line)


class ChatSession(Protocol):
    """One connected client."""

    def __init__(self, room: Room) -> None:
        self.room = room
        self.name: str | None = None
        self.transport: Transport | None = None
        self.buffer = bytearray()
        self.searched = 0  # the buffer holds no newline before this offset

    # -- the loop's callbacks ----------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buffer.find(b"\n", self.searched)
            if end < 0 and len(self.buffer) <= MAX_LINE:
                self.searched = len(self.buffer)
                return
            if end < 0 or end >= MAX_LINE:  # with its newline, more than MAX_LINE bytes
                self.fail(f"line too long (limit {MAX_LINE} bytes)")
                return
            line = bytes(self.buffer[:end]).rstrip(b"\r")
            del self.buffer[:end + 1]
            self.searched = 0
            self.line_received(line.decode("utf-8", "replace"))

    def eof_received(self) -> bool | None:
        return None  # the client is done: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.name is not None and self.room.members.get(self.name) is self:
            del self.room.members[self.name]
            self.room.say(None, f"* {self.name} left")

    def pause_writing(self) -> None:
        # Its transport holds more than the high-water mark: this client does not read.
        self.fail("too slow: dropped")

    # -- the protocol --------------------------------------------------------

    def line_received(self, line: str) -> None:
        if self.name is None:
            command, _, name = line.partition(" ")
            if command != "NICK" or not name.isidentifier():
                self.send("* say NICK <name> first")
            elif name in self.room.members:
                self.send(f"* {name} is taken")
            else:
                self.name = name
                self.room.members[name] = self
                self.send(f"* welcome, {name} ({len(self.room.members)} here)")
                self.room.say(self, f"* {name} joined")
        elif line == "/who":
            self.send("* here: " + ", ".join(sorted(self.room.members)))
        elif line == "/quit":
            self.send("* bye")
            assert self.transport is not None
            self.transport.close()  # after "* bye" is written
        elif line:
            self.room.say(self, f"{self.name}: {line}")

    def send(self, line: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line.encode() + b"\n")

    def fail(self, reason: str) -> None:
        self.send(f"* error: {reason}")
        assert self.transport is not None
        self.transport.close()


# -- --once: three clients ----------------------------------------------------------

class Client:
    def __init__(self, name: str, address: Any) -> None:
        self.name = name
        self.sock = socket.create_connection(address, timeout=5)
        self.file = self.sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\n")

    def read(self) -> str:
        line = self.file.readline().decode().rstrip("\n")
        print(f"[{self.name}] {line if line else '(closed by the server)'}", flush=True)
        return line

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def play(address: Any) -> bool:
    alice, bob, carol = (Client(name, address) for name in ("alice", "bob", "carol"))
    try:
        alice.send("hello?")
        alice.read()                      # * say NICK <name> first
        alice.send("NICK alice")
        alice.read()                      # * welcome, alice (1 here)
        bob.send("NICK bob")
        bob.read()                        # * welcome, bob (2 here)
        alice.read()                      # * bob joined
        alice.send("hi bob")
        bob.read()                        # alice: hi bob
        bob.send("hi alice\n/who")        # two lines in one write
        alice.read()                      # bob: hi alice
        bob.read()                        # * here: alice, bob
        carol.send("NICK carol")
        carol.read()
        carol.send("x" * (MAX_LINE + 1))  # no newline in sight: refused
        carol.read()                      # * error: line too long
        carol.read()                      # (closed by the server)
        alice.read()                      # * carol joined
        bob.read()
        alice.read()                      # * carol left
        bob.read()
        bob.send("/quit")
        bob.read()                        # * bye
        ok = bob.read() == ""             # (closed by the server)
        alice.read()                      # * bob left
        return ok
    finally:
        for client in (alice, bob, carol):
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--once", action="store_true", help="play three clients, print what they read, exit")
    options = parser.parse_args(argv)

    room = Room()
    with Reactor() as reactor:  # leaving the block drains the connections and closes the server
        server = reactor.create_server(lambda: ChatSession(room), (options.host, options.port),
                                       drain_timeout=5.0)
        host, port = server.server_address[:2]
        print(f"listening on tcp {host}:{port}", flush=True)
        reactor.add_signal_handler(signal.SIGINT, reactor.stop)
        reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
        if not options.once:
            reactor.serve_forever()
            print(f"stopped; closing {len(room.members)} member connection(s)", flush=True)
            return 0
        outcome: list[bool] = []

        def clients() -> None:
            try:
                outcome.append(play(server.server_address))
            finally:
                reactor.stop()

        thread = threading.Thread(target=clients, name="clients")
        thread.start()
        reactor.serve_forever()
        thread.join()
        print("ok" if outcome == [True] else "FAILED", flush=True)
    return 0 if outcome == [True] else 1


if __name__ == "__main__":
    sys.exit(main())
