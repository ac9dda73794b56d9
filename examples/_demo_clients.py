"""Plain-stdlib clients for ``multi_server.py``: one request, one reply, always with a timeout.

Nothing here uses reactor: these are the few lines any client of a
socketserver-style server would write. Each function returns the reply and
raises ``OSError`` (``TimeoutError`` included) when the server does not answer.
"""

from __future__ import annotations

import http.client
import os
import socket
from typing import Any


def stream_exchange(family: int, address: Any, message: bytes, timeout: float) -> bytes:
    """Connect, send ``message`` (one line), read one line back."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.sendall(message)
        with sock.makefile("rb") as reader:
            return reader.readline()


def datagram_exchange(family: int, address: Any, message: bytes, timeout: float,
                      reply_path: str | None = None) -> bytes:
    """Send one datagram, wait for one back.

    A Unix datagram server can only answer a client that has an address of
    its own, so for ``AF_UNIX`` pass ``reply_path``: the client binds it and
    removes it afterwards.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if reply_path is not None:
            sock.bind(reply_path)
        try:
            sock.sendto(message, address)
            reply, _ = sock.recvfrom(65535)
            return reply
        finally:
            if reply_path is not None:
                os.unlink(reply_path)


def http_get(host: str, port: int, path: str, timeout: float) -> bytes:
    """GET ``path``; return the body of a 200 response (other statuses raise OSError)."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"GET {path}: HTTP {response.status} {response.reason}")
        return body
    finally:
        connection.close()
