"""Every reactor.socketserver server class x every fitting handler x every way of serving it.

Each case serves several requests and checks the replies: by ``serve_forever()``
in a thread, and hosted by a ``reactor.Reactor`` on each selector class that
works here. Threading classes must handle concurrent clients concurrently (the
handlers meet at a barrier). Forking classes fork, so their cases run in a
fresh interpreter (this module is imported there and ``run_case`` called), which
also checks that every child was reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver as std_socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import Reactor
from reactor import socketserver as rx_socketserver
from reactor._platform import available_selectors
from support import run_python

REQUESTS = 3

#: (class name, transport, concurrency)
SERVER_CLASSES = [
    ("TCPServer", "tcp", "plain"),
    ("ThreadingTCPServer", "tcp", "threading"),
    ("ForkingTCPServer", "tcp", "forking"),
    ("UDPServer", "udp", "plain"),
    ("ThreadingUDPServer", "udp", "threading"),
    ("ForkingUDPServer", "udp", "forking"),
    ("UnixStreamServer", "unix-stream", "plain"),
    ("ThreadingUnixStreamServer", "unix-stream", "threading"),
    ("ForkingUnixStreamServer", "unix-stream", "forking"),
    ("UnixDatagramServer", "unix-dgram", "plain"),
    ("ThreadingUnixDatagramServer", "unix-dgram", "threading"),
    ("ForkingUnixDatagramServer", "unix-dgram", "forking"),
]
STREAM_TRANSPORTS = ("tcp", "unix-stream")
HANDLERS = {
    "stream": ["StreamRequestHandler", "BaseRequestHandler"],
    "datagram": ["DatagramRequestHandler", "BaseRequestHandler"],
}
HOSTINGS = ["serve_forever"] + [f"reactor-{cls.__name__}" for cls in available_selectors()]


def matrix() -> list[Any]:
    cases = []
    for class_name, transport, concurrency in SERVER_CLASSES:
        kind = "stream" if transport in STREAM_TRANSPORTS else "datagram"
        for handler_name in HANDLERS[kind]:
            for hosting in HOSTINGS:
                cases.append(pytest.param(class_name, transport, concurrency, handler_name, hosting,
                                          id=f"{class_name}-{handler_name}-{hosting}"))
    return cases


# ---------------------------------------------------------------- handlers

def reply_for(server: Any, data: bytes) -> bytes:
    """What every handler answers: its pid and the request upper-cased.

    On a Threading server the handlers first meet at ``server.barrier``, which
    only works if they run at the same time.
    """
    barrier = getattr(server, "barrier", None)
    if barrier is not None:
        barrier.wait()
    return b"%d:%s" % (os.getpid(), data.strip().upper())


class StreamHandler(std_socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(reply_for(self.server, self.rfile.readline()))


class RawStreamHandler(std_socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.request.recv(1024)
            if not chunk:
                break
            data += chunk
        self.request.sendall(reply_for(self.server, data))


class DatagramHandler(std_socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(reply_for(self.server, self.rfile.read()))


class RawDatagramHandler(std_socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(reply_for(self.server, data), self.client_address)


HANDLER_CLASSES = {
    ("stream", "StreamRequestHandler"): StreamHandler,
    ("stream", "BaseRequestHandler"): RawStreamHandler,
    ("datagram", "DatagramRequestHandler"): DatagramHandler,
    ("datagram", "BaseRequestHandler"): RawDatagramHandler,
}


# ---------------------------------------------------------------- clients

def server_address_for(transport: str, workdir: str) -> Any:
    if transport in ("tcp", "udp"):
        return ("127.0.0.1", 0)
    return os.path.join(workdir, "server.sock")


def open_client(transport: str, server_address: Any, workdir: str, index: int) -> socket.socket:
    """A client socket with its request sent."""
    payload = b"request %d\n" % index
    if transport == "tcp":
        sock = socket.create_connection(server_address, timeout=5)
        sock.sendall(payload)
        return sock
    family = socket.AF_INET if transport == "udp" else socket.AF_UNIX
    sock_type = socket.SOCK_STREAM if transport == "unix-stream" else socket.SOCK_DGRAM
    sock = socket.socket(family, sock_type)
    try:
        sock.settimeout(5)
        if transport == "unix-stream":
            sock.connect(server_address)
            sock.sendall(payload)
        else:
            if transport == "unix-dgram":
                sock.bind(os.path.join(workdir, f"c{index}"))  # a Unix datagram reply needs our own path
            sock.sendto(payload, server_address)
    except BaseException:
        sock.close()
        raise
    return sock


def read_reply(transport: str, sock: socket.socket) -> bytes:
    if transport not in STREAM_TRANSPORTS:
        return sock.recv(65536)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def run_clients(transport: str, server_address: Any, workdir: str, indexes: range) -> list[bytes]:
    """Send every request first, then read every reply: the requests overlap."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(open_client(transport, server_address, workdir, i)) for i in indexes]
        return [read_reply(transport, sock) for sock in socks]


# ---------------------------------------------------------------- serving

@contextlib.contextmanager
def hosting(server: Any, how: str) -> Iterator[None]:
    if how == "serve_forever":
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="serve_forever", daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            thread.join(5)
        assert not thread.is_alive(), "serve_forever() did not return"
        return
    selector_name = how.removeprefix("reactor-")
    selector_class = next(cls for cls in available_selectors() if cls.__name__ == selector_name)
    loop = Reactor(selector=selector_class())
    loop.add_server(server)
    thread = threading.Thread(target=loop.serve_forever, name="reactor", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.stop()
        thread.join(5)
        loop.remove_server(server)
        loop.close()
    assert not thread.is_alive(), "Reactor.serve_forever() did not return"


def run_case(class_name: str, transport: str, concurrency: str, handler_name: str, hosting_name: str,
             workdir: str) -> list[bytes]:
    """Serve REQUESTS sequential requests, then REQUESTS overlapping ones; return the replies."""
    kind = "stream" if transport in STREAM_TRANSPORTS else "datagram"
    server_class = getattr(rx_socketserver, class_name)
    server = server_class(server_address_for(transport, workdir), HANDLER_CLASSES[kind, handler_name])
    try:
        address = server.server_address
        with hosting(server, hosting_name):
            replies = [run_clients(transport, address, workdir, range(i, i + 1))[0] for i in range(REQUESTS)]
            if concurrency == "threading":
                server.barrier = threading.Barrier(REQUESTS, timeout=5)
            replies += run_clients(transport, address, workdir, range(REQUESTS, 2 * REQUESTS))
    finally:
        server.server_close()
    return replies


def check_replies(replies: list[bytes], concurrency: str, server_pid: int) -> None:
    assert len(replies) == 2 * REQUESTS
    for index, reply in enumerate(replies):
        pid, _, text = reply.partition(b":")
        assert text == b"REQUEST %d" % index, replies
        if concurrency == "forking":
            assert int(pid) != server_pid, "a Forking server handled a request in its own process"
        else:
            assert int(pid) == server_pid


# ---------------------------------------------------------------- the tests

FORKING_CASE = """
import json, os, sys, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)  # fork() with threads, 3.12+
import support, test_compat_matrix as matrix
replies = matrix.run_case(*sys.argv[1:])
assert not support.child_pids(), f"children left unreaped: {support.child_pids()}"
print(json.dumps({"pid": os.getpid(), "replies": [r.decode() for r in replies]}))
"""


@pytest.mark.parametrize(("class_name", "transport", "concurrency", "handler_name", "hosting_name"), matrix())
def test_round_trips(class_name: str, transport: str, concurrency: str, handler_name: str, hosting_name: str,
                     unix_dir: str) -> None:
    if not hasattr(std_socketserver, class_name):
        pytest.skip(f"socketserver.{class_name} does not exist on this Python")
    assert hasattr(rx_socketserver, class_name)
    if concurrency != "forking":
        replies = run_case(class_name, transport, concurrency, handler_name, hosting_name, unix_dir)
        check_replies(replies, concurrency, os.getpid())
        return
    result = run_python(FORKING_CASE, class_name, transport, concurrency, handler_name, hosting_name, unix_dir,
                        timeout=30)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    check_replies([reply.encode() for reply in outcome["replies"]], concurrency, outcome["pid"])


def test_matrix_covers_every_stdlib_server_class() -> None:
    covered = {name for name, _, _ in SERVER_CLASSES} | {"BaseServer"}
    assert {name for name in std_socketserver.__all__ if name.endswith("Server")} <= covered
