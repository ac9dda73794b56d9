"""HTTPS with an unmodified http.server handler: TLS in the loop, keep-alive connections parked.

The reactor runs each TLS handshake in its own thread without blocking
(``ssl_context=``, under ``handshake_timeout``), then hands the handler an
``ssl.SSLSocket`` in blocking mode, so plain ``http.server`` code serves
HTTPS. The handler speaks HTTP/1.1, so between requests a client's
connection waits *parked* in the loop, holding none of the pool's two
threads (``keepalive_timeout``).

Without ``--cert``/``--key`` the example makes a throwaway self-signed
certificate for ``localhost`` with the ``openssl`` command. With ``--once``
the main thread plays three clients that each make three requests over one
connection, prints what they got and how many connections parked, and stops;
without it, the server runs until Ctrl-C or SIGTERM.

Run: ``python examples/https.py --once``
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from reactor import Reactor, ThreadPool


class Hello(http.server.BaseHTTPRequestHandler):
    """Plain http.server code: it knows nothing of TLS or parking."""

    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        cipher = self.request.cipher()[0]  # the handler's socket is an ssl.SSLSocket
        body = f"hello over {self.request.version()} ({cipher})\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the example's output short


def throwaway_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for localhost, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        sys.exit("this example needs the openssl command to make a certificate (or pass --cert and --key)")
    cert, key = directory / "localhost.pem", directory / "localhost.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def clients(reactor: Reactor, server: http.server.HTTPServer, cafile: Path) -> None:
    try:
        context = ssl.create_default_context(cafile=str(cafile))  # verifies the certificate
        conns = [http.client.HTTPSConnection("localhost", server.server_address[1], timeout=5, context=context)
                 for _ in range(3)]
        for round_ in range(3):
            for conn in conns:
                conn.request("GET", "/")
                reply = conn.getresponse().read().decode().strip()
                if round_ == 0 and conn is conns[0]:
                    print(reply.split(" (")[0])
        print(f"9 requests over {len(conns)} connections, "
              f"{reactor.server_stats(server)['resumed']} of them on parked connections")
        for conn in conns:
            conn.close()
    finally:
        reactor.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", type=Path, help="certificate chain (PEM); default: a throwaway one")
    parser.add_argument("--key", type=Path, help="its private key (PEM)")
    parser.add_argument("--once", action="store_true", help="play three clients on a free port, then stop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cert, key = (args.cert, args.key) if args.cert else throwaway_certificate(Path(scratch))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server = http.server.HTTPServer(("127.0.0.1", 0 if args.once else args.port), Hello)
        with Reactor() as reactor:
            reactor.add_server(server, dispatch=ThreadPool(2), ssl_context=context, handshake_timeout=5,
                               io_timeout=30, keepalive_timeout=15)
            if args.once:
                threading.Thread(target=clients, args=(reactor, server, cert), name="clients").start()
            else:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    reactor.add_signal_handler(signum, reactor.stop)
                print(f"serving https://localhost:{server.server_address[1]}/ (Ctrl-C to stop)")
            reactor.serve_forever()
        server.server_close()


if __name__ == "__main__":
    main()
