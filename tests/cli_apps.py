"""Handlers and a server factory for the ``reactor`` command's tests (``python -m reactor cli_apps:...``).

Importable in the command's interpreter because tests/ is on its PYTHONPATH.
"""

from __future__ import annotations

import os
import socket
import socketserver
from typing import Any

from reactor import socketserver as rsocketserver
from reactor.cli import adopt_socket


class EchoHandler(socketserver.StreamRequestHandler):
    """Echoes every line."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class LineLoop(rsocketserver.RequestLoop, socketserver.StreamRequestHandler):
    """Echoes lines one request at a time, so its connections park between lines."""

    def handle_one_request(self) -> None:
        line = self.rfile.readline()
        if not line:
            self.close_connection = True
            return
        self.wfile.write(line)


class DatagramEchoHandler(socketserver.DatagramRequestHandler):
    """Echoes every datagram."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class WhoHandler(socketserver.StreamRequestHandler):
    """Answers one line: ``pid uid client-host``."""

    def handle(self) -> None:
        host = self.client_address[0] if isinstance(self.client_address, tuple) else "unix"
        self.wfile.write(f"{os.getpid()} {os.getuid()} {host}\n".encode())


class TwoStepHandler(socketserver.StreamRequestHandler):
    """``started`` after the first line, ``done`` after the second: a request a test holds open."""

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"started\n")
        self.wfile.flush()
        if self.rfile.readline():
            self.wfile.write(b"done\n")


class GreetingHandler(socketserver.StreamRequestHandler):
    """Answers with the greeting of the server the factory made."""

    def handle(self) -> None:
        self.wfile.write(self.server.greeting.encode() + b"\n")  # type: ignore[attr-defined]


def make_greeting_server(sock: socket.socket) -> Any:
    """A server factory: the command calls it with each bound socket."""
    server = adopt_socket(rsocketserver.TCPServer if sock.family != socket.AF_UNIX
                          else rsocketserver.UnixStreamServer, sock, GreetingHandler)
    server.greeting = f"hello from a factory on {sock.family.name}"
    return server


def broken_factory(sock: socket.socket) -> Any:
    """A factory that fails: the command must undo its start."""
    raise RuntimeError("this factory always fails")


NOT_SERVABLE = 42


class _GatedServer(rsocketserver.TCPServer):
    """A TCPServer whose hosting, in a Prefork worker, waits until the FIFO ``$REACTOR_TEST_GATE`` is closed by a writer."""

    def hosting_started(self, hosted: Any) -> None:
        gate = os.environ.get("REACTOR_TEST_GATE")
        if gate is not None and os.getpid() != int(os.environ["REACTOR_TEST_MASTER"]):
            with open(gate, "rb") as fifo:  # blocks until the test opens the other end; read returns at its close
                fifo.read()
        super().hosting_started(hosted)


def gated_server(sock: socket.socket) -> Any:
    """A factory: a WhoHandler server whose Prefork workers boot only once the test opens the gate."""
    os.environ["REACTOR_TEST_MASTER"] = str(os.getpid())
    return adopt_socket(_GatedServer, sock, WhoHandler)


class PidEchoHandler(socketserver.StreamRequestHandler):
    """Answers every line with ``pid line``: which process served it."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{os.getpid()} ".encode() + line)
