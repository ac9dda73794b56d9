"""An unmodified-style HTTP/1.1 file server on a reactor, run in a fresh interpreter by
tests/test_slow_clients.py for the slowhttptest runs (the load of 600 attackers stays out of
pytest's process, and Prefork forks here, never in pytest).

Usage: ``http_server.py --docroot DIR [--dispatch threadpool|prefork] [--threads N] [--workers N]
[--read-ahead on|off|default] [--sndbuf BYTES]``

The handler is ``http.server.SimpleHTTPRequestHandler`` speaking HTTP/1.1 with its log line
silenced, plus a ``do_POST`` that reads ``Content-Length`` bytes from ``rfile`` and answers
their length and SHA-256 (what an ordinary form handler does); its ``handle()`` is untouched.

stdout: ``ready <port>`` once listening, ``stopped`` after a clean stop. SIGTERM (or EOF on
stdin: if the test dies, so does this tree) stops it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import resource
import signal
import socket
import sys
import threading
from typing import Any

from reactor import Prefork, Reactor, ThreadPool


class Files(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        reply = b"%d %s\n" % (len(body), hashlib.sha256(body).hexdigest().encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(http.server.HTTPServer):
    request_queue_size = 1024  # the attackers connect at 200/s


def raise_fd_limit() -> None:
    """600 attackers, the probe, spool files: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_threading(args: argparse.Namespace) -> int:
    class ThreadingServer(http.server.ThreadingHTTPServer):
        request_queue_size = 1024
        daemon_threads = True

    server = ThreadingServer(("127.0.0.1", 0), functools.partial(Files, directory=args.docroot))
    if args.sndbuf:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    stopping = threading.Thread(target=lambda: (sys.stdin.read(), server.shutdown()), name="stdin", daemon=True)
    stopping.start()
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown).start())
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    print("stopped", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docroot", required=True)
    parser.add_argument("--dispatch", choices=("threadpool", "prefork", "stdlib-threading"), default="threadpool",
                        help="stdlib-threading: the stdlib's ThreadingHTTPServer, a thread per connection, "
                             "no reactor (the tests' control: slowhttptest cannot starve it)")
    parser.add_argument("--threads", type=int, default=8, help="ThreadPool size, or threads per Prefork worker")
    parser.add_argument("--workers", type=int, default=2, help="Prefork workers")
    parser.add_argument("--read-ahead", choices=("on", "off", "default"), default="default")
    parser.add_argument("--sndbuf", type=int, default=0,
                        help="SO_SNDBUF of the listener, which accepted connections inherit (0: the kernel's)")
    args = parser.parse_args()
    raise_fd_limit()

    if args.dispatch == "stdlib-threading":
        return serve_threading(args)
    options: dict[str, Any] = {}
    if args.read_ahead != "default":
        options["read_ahead"] = args.read_ahead == "on"
    dispatch: Any = (ThreadPool(args.threads) if args.dispatch == "threadpool"
                     else Prefork(args.workers, threads=args.threads, handle_signals=False))
    reactor = Reactor()
    server = Server(("127.0.0.1", 0), functools.partial(Files, directory=args.docroot))
    if args.sndbuf:
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
    reactor.add_server(server, dispatch, **options)
    reactor.add_signal_handler(signal.SIGTERM, reactor.stop)

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # EOF: the test is gone
            reactor.remove_reader(sys.stdin.fileno())
            reactor.stop()

    reactor.add_reader(sys.stdin.fileno(), on_stdin)
    print(f"ready {server.server_address[1]}", flush=True)
    reactor.serve_forever()
    reactor.close()
    server.server_close()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
