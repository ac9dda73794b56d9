"""Connections the reactor admits: idle clients, a PROXY header, access rules and limits.

One reactor thread hosts two servers:

* a line echo server (``socketserver.StreamRequestHandler``, inline) with
  ``wait_for_data=2`` and ``io_timeout=5``: a client that connects and says
  nothing costs a descriptor for two seconds, never the reactor's thread, so
  the other server keeps answering;
* an unmodified ``http.server`` handler behind a load balancer that speaks
  the PROXY protocol (``proxy_protocol="v1"``, trusted from loopback only),
  open to ``allow=["127.0.0.0/8", "192.0.2.0/24"]`` clients, at most
  ``max_connections=64`` at once: its log names the real client, not the
  balancer.

With ``--once`` the main thread plays the clients (an idle one, a proxied
HTTP request, a client the allow list refuses) and prints what happened;
without it, the servers run until Ctrl-C or SIGTERM.

Run: ``python examples/connections.py --once``
"""

from __future__ import annotations

import argparse
import http.server
import signal
import socket
import threading
from typing import Any

from reactor import Reactor, socketserver


class EchoHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


class WhoHandler(http.server.BaseHTTPRequestHandler):
    """Plain http.server code: it knows nothing of PROXY headers."""

    def do_GET(self) -> None:
        body = f"hello, {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"http.server log: {self.address_string()} {format % args}", flush=True)


def proxied_get(address: Any, client: str) -> bytes:
    """What a load balancer sends: a PROXY v1 header naming ``client``, then the request."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 80\r\n".encode()
                     + b"GET / HTTP/1.0\r\nHost: example\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass  # refused: closed (with our request unread, hence the reset)
    return data.partition(b"\r\n\r\n")[2]


def play_clients(reactor: Reactor, echo: Any, web: Any) -> None:
    try:
        with socket.create_connection(echo.server_address, timeout=5) as idle:
            print("idle client connected to the echo server and says nothing", flush=True)
            print(f"proxied request answered: {proxied_get(web.server_address, '192.0.2.10').decode().strip()}",
                  flush=True)
            with socket.create_connection(echo.server_address, timeout=5) as talker:
                talker.sendall(b"still answering\n")
                print(f"echo answered meanwhile: {talker.makefile('rb').readline().decode().strip()}", flush=True)
            print(f"the idle client was closed after wait_for_data: {idle.recv(10) == b''}", flush=True)
        refused = proxied_get(web.server_address, "198.51.100.1")
        print(f"a client outside the allow list got: {refused!r}", flush=True)
        stats = reactor.server_stats(web)
        print(f"http stats: admitted={stats['admitted']} refused_by_rule={stats['refused_by_rule']}", flush=True)
        print(f"echo stats: admitted={reactor.server_stats(echo)['admitted']} "
              f"timeouts={reactor.server_stats(echo)['timeouts']}", flush=True)
    finally:
        reactor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="play the clients, then exit")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: any free one)")
    args = parser.parse_args()
    with Reactor() as reactor:
        echo = socketserver.TCPServer(("127.0.0.1", 0), EchoHandler)
        web = http.server.HTTPServer(("127.0.0.1", args.port), WhoHandler)
        reactor.add_server(echo, wait_for_data=2.0, io_timeout=5.0)
        reactor.add_server(web, proxy_protocol="v1", proxy_trusted=["127.0.0.0/8"],
                           allow=["127.0.0.0/8", "192.0.2.0/24"], max_connections=64)
        print(f"listening on tcp4 127.0.0.1:{echo.server_address[1]}  (echo, wait_for_data=2)", flush=True)
        print(f"listening on tcp4 127.0.0.1:{web.server_address[1]}  (http.server behind PROXY v1)", flush=True)
        if args.once:
            threading.Thread(target=play_clients, args=(reactor, echo, web)).start()
        else:
            reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
            reactor.add_signal_handler(signal.SIGINT, reactor.stop)
        reactor.serve_forever()
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
