#!/usr/bin/env python3
"""One Reactor, one thread, six servers: the socketserver tutorial, hosted side by side.

What it shows
-------------
* ``from reactor import socketserver`` is a drop-in for the stdlib module. The
  echo servers below are written exactly as in the classic socketserver
  tutorial: a server subclass and a ``StreamRequestHandler`` /
  ``DatagramRequestHandler`` subclass whose hooks log, then call ``super()``.
  The log therefore shows the tutorial's call sequence (``verify_request``,
  ``process_request``, ``finish_request``, the handler's ``setup``, ``handle``,
  ``finish``, then ``close_request``), and the ``[reactor]`` prefix shows the
  thread each hook ran in.
* One :class:`reactor.Reactor`, running ``serve_forever()`` in one background
  thread, serves all of them at once: TCP over IPv4 and IPv6, UDP, a Unix
  stream and a Unix datagram socket, plus an *unmodified*
  ``http.server.HTTPServer``. ``add_server()`` is all it takes.
* The main thread plays the clients (plain stdlib sockets and http.client,
  see ``_demo_clients.py``), each with a timeout.
* A clean shutdown: ``stop()`` from the main thread (thread-safe), join the
  reactor thread, ``close()`` (which ``server_close()``s every hosted server,
  and so removes the Unix socket files), then check that no file is left.
* Ctrl-C and SIGTERM: ``add_signal_handler()`` is called in the main thread
  (Python allows no other), yet its callback runs in the reactor's thread.

Run it
------
::

    make demo                                   # python examples/multi_server.py
    python examples/multi_server.py --quiet     # only the listening lines and a summary
    python examples/multi_server.py --no-ipv6   # leave out the ::1 server
    python examples/multi_server.py --serve     # after the clients, keep serving until
                                                # Ctrl-C: try curl or nc on the addresses

Exit status: 0 when every client got the reply it expected and nothing was
left behind; 1 on any failure (explained on stderr); 128 + the signal number
when Ctrl-C or SIGTERM cut the clients short.
"""

from __future__ import annotations

import argparse
import http.server
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable

try:
    from reactor import Reactor, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, socketserver
from reactor._platform import ipv6_loopback_available
from reactor.binding import describe_address

import _demo_clients as clients

#: Every client gives up after this many seconds without a reply.
CLIENT_TIMEOUT = 5.0
#: How long the shutdown waits for the reactor thread.
JOIN_TIMEOUT = 5.0

GREETING = b"Hello, world"

client_log = logging.getLogger("client")
demo_log = logging.getLogger("demo")


# -- the servers: socketserver tutorial style ---------------------------------


def short(request: Any) -> str:
    """socketserver's ``request`` for the log: a socket, or ``(data, socket)`` for datagrams."""
    if isinstance(request, socket.socket):
        return f"<socket fd={request.fileno()}>"
    data, sock = request
    return f"({data!r}, <socket fd={sock.fileno()}>)"


class TracingServer(socketserver.BaseServer):
    """Logs each socketserver hook, then runs it. Mix it in before a server class.

    The logger is named after the server (``tcp4.EchoServer``), so the
    interleaved logs of six servers stay readable.
    """

    def __init__(self, server_address: Any, RequestHandlerClass: Any, *, label: str) -> None:
        self.label = label
        self.log = logging.getLogger(f"{label}.{type(self).__name__}")
        self.log.info("__init__")
        super().__init__(server_address, RequestHandlerClass)

    def server_activate(self) -> None:
        self.log.info("server_activate")
        super().server_activate()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.log.info("verify_request(%s, %r)", short(request), client_address)
        return super().verify_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.log.info("process_request(%s, %r)", short(request), client_address)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.log.info("finish_request(%s, %r)", short(request), client_address)
        super().finish_request(request, client_address)

    def close_request(self, request: Any) -> None:
        self.log.info("close_request(%s)", short(request))
        super().close_request(request)

    def server_close(self) -> None:
        self.log.info("server_close")
        super().server_close()


class EchoServer(TracingServer, socketserver.TCPServer):
    """TCP, IPv4 or IPv6: the address decides, no subclass needed."""


class UDPEchoServer(TracingServer, socketserver.UDPServer):
    """UDP."""


class UnixEchoServer(TracingServer, socketserver.UnixStreamServer):
    """Unix stream socket; server_close() removes its file."""


class UnixDatagramEchoServer(TracingServer, socketserver.UnixDatagramServer):
    """Unix datagram socket; server_close() removes its file."""


class TracingHandler(socketserver.BaseRequestHandler):
    """Logs the request handler's life cycle, then runs each step."""

    def __init__(self, request: Any, client_address: Any, server: socketserver.BaseServer) -> None:
        label = getattr(server, "label", "handler")
        self.log = logging.getLogger(f"{label}.{type(self).__name__}")
        self.log.info("__init__")
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.log.info("setup")
        super().setup()

    def finish(self) -> None:
        self.log.info("finish")
        super().finish()


class EchoRequestHandler(TracingHandler, socketserver.StreamRequestHandler):
    """Reads one line and answers it upper-cased."""

    # Requests run inline in the reactor's thread, so a client that stalls
    # would stall every server: bound each read.
    timeout = CLIENT_TIMEOUT

    def handle(self) -> None:
        self.log.info("handle")
        line = self.rfile.readline()
        self.log.info("recv()->%r", line)
        self.wfile.write(line.upper())


class DatagramEchoHandler(TracingHandler, socketserver.DatagramRequestHandler):
    """Answers each datagram with ``echo: `` and the datagram (sent by finish())."""

    def handle(self) -> None:
        self.log.info("handle")
        data = self.rfile.read()
        self.log.info("recv()->%r", data)
        self.wfile.write(b"echo: " + data)


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """A tiny page for the unmodified stdlib HTTPServer."""

    timeout = CLIENT_TIMEOUT
    body = b"Hello from http.server\n"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes to stderr; route it to logging like everything else.
        logging.getLogger("http.HelloHandler").info(format, *args)


# -- hosting them on one reactor ----------------------------------------------


@dataclass
class Service:
    """A hosted server and the client exchange that checks it."""

    label: str                       # "tcp4", "unix-dgram", ...
    server: Any                      # any socketserver-style server
    sent: bytes                      # what the client sends
    expected: bytes                  # the reply it must get back
    talk: Callable[[float], bytes]   # the client: timeout -> reply

    @property
    def where(self) -> str:
        """``tcp4 127.0.0.1:40000``, ``unix-dgram /tmp/.../dgram.sock``, ..."""
        sock = self.server.socket
        return describe_address(sock.family, sock.type, self.server.server_address)

    @property
    def kind(self) -> str:
        """The server's class; one from elsewhere with its module (``http.server.HTTPServer``)."""
        cls = type(self.server)
        return cls.__qualname__ if cls.__module__ == __name__ else f"{cls.__module__}.{cls.__qualname__}"


def host_servers(reactor: Reactor, socket_dir: str, *, ipv6: bool) -> list[Service]:
    """Create every server and hand it to ``reactor``; return them with their clients.

    Each server is hosted as soon as it exists, so ``reactor.close()`` closes
    whatever was created even if a later one fails.
    """
    services: list[Service] = []

    def host(service: Service) -> None:
        try:
            reactor.add_server(service.server)  # all it takes: any socketserver-style server
        except BaseException:
            service.server.server_close()
            raise
        services.append(service)

    line = GREETING + b"\n"

    tcp4 = EchoServer(("127.0.0.1", 0), EchoRequestHandler, label="tcp4")
    host(Service("tcp4", tcp4, line, line.upper(),
                 lambda timeout: clients.stream_exchange(socket.AF_INET, tcp4.server_address, line, timeout)))

    if ipv6:
        tcp6 = EchoServer(("::1", 0), EchoRequestHandler, label="tcp6")
        host(Service("tcp6", tcp6, line, line.upper(),
                     lambda timeout: clients.stream_exchange(socket.AF_INET6, tcp6.server_address, line, timeout)))

    udp4 = UDPEchoServer(("127.0.0.1", 0), DatagramEchoHandler, label="udp4")
    host(Service("udp4", udp4, GREETING, b"echo: " + GREETING,
                 lambda timeout: clients.datagram_exchange(socket.AF_INET, udp4.server_address, GREETING, timeout)))

    unix = UnixEchoServer(os.path.join(socket_dir, "echo.sock"), EchoRequestHandler, label="unix")
    host(Service("unix", unix, line, line.upper(),
                 lambda timeout: clients.stream_exchange(socket.AF_UNIX, unix.server_address, line, timeout)))

    unix_dgram = UnixDatagramEchoServer(os.path.join(socket_dir, "dgram.sock"), DatagramEchoHandler,
                                        label="unix-dgram")
    reply_path = os.path.join(socket_dir, "client.sock")  # where the server's reply goes
    host(Service("unix-dgram", unix_dgram, GREETING, b"echo: " + GREETING,
                 lambda timeout: clients.datagram_exchange(socket.AF_UNIX, unix_dgram.server_address, GREETING,
                                                           timeout, reply_path=reply_path)))

    httpd = http.server.HTTPServer(("127.0.0.1", 0), HelloHandler)  # the stdlib's own class
    host(Service("http", httpd, b"GET /", HelloHandler.body,
                 lambda timeout: clients.http_get("127.0.0.1", httpd.server_address[1], "/", timeout)))

    return services


# -- the demo -----------------------------------------------------------------


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_clients(services: list[Service], interrupted: list[int]) -> int:
    """Talk to each server in turn; return how many answered as expected (stop at the first that did not)."""
    done = 0
    for service in services:
        if interrupted:
            break
        client_log.info("%s: sending %r", service.label, service.sent)
        try:
            reply = service.talk(CLIENT_TIMEOUT)
        except OSError as exc:
            fail(f"{service.label} ({service.where}): no reply: {exc!r}")
            return done
        client_log.info("%s: received %r", service.label, reply)
        if reply != service.expected:
            fail(f"{service.label} ({service.where}): expected {service.expected!r}, received {reply!r}")
            return done
        done += 1
    return done


def shut_down(reactor: Reactor, thread: threading.Thread, socket_dir: str) -> bool:
    """Stop and close the reactor, then check the socket directory is empty and remove it."""
    demo_log.info("shutting down: stop(), join the reactor thread, close()")
    reactor.stop()  # thread-safe: serve_forever() returns at the end of its current tick
    if thread.ident is not None:
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            fail(f"the reactor thread did not stop within {JOIN_TIMEOUT:g}s")
            return False
    reactor.close()  # server_close() on every hosted server: sockets closed, socket files removed
    left = sorted(os.listdir(socket_dir))
    shutil.rmtree(socket_dir, ignore_errors=True)
    if left:
        fail(f"files left in {socket_dir} after close(): {', '.join(left)}")
        return False
    demo_log.info("no socket file left in %s; removed it", socket_dir)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quiet", action="store_true", help="print only the listening lines and a summary")
    parser.add_argument("--no-ipv6", action="store_true", help="do not start the IPv6 (::1) server")
    parser.add_argument("--serve", action="store_true",
                        help="after the clients, keep serving until Ctrl-C or SIGTERM")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING if options.quiet else logging.INFO,
                        format="[%(threadName)s] %(name)s: %(message)s")

    ipv6 = not options.no_ipv6 and ipv6_loopback_available()
    skipped = ""
    if not ipv6:
        skipped = "tcp6 skipped: " + ("--no-ipv6" if options.no_ipv6 else "IPv6 not available (cannot bind ::1)")
        demo_log.info(skipped)

    socket_dir = tempfile.mkdtemp(prefix="rx-demo-", dir="/tmp")  # short: Unix paths max out near 108 bytes
    reactor = Reactor()
    thread = threading.Thread(target=reactor.serve_forever, name="reactor", daemon=True)
    interrupted: list[int] = []  # the signal that stopped the reactor, if any
    services: list[Service] = []
    answered = 0
    status = 1  # until every client got its reply
    try:
        services = host_servers(reactor, socket_dir, ipv6=ipv6)
        for service in services:
            print(f"listening on {service.where}  ({service.kind})")

        def on_signal(signum: int) -> None:  # runs in the reactor thread, not in a signal handler
            demo_log.info("got %s: stopping the reactor", signal.Signals(signum).name)
            interrupted.append(signum)
            reactor.stop()

        # Registration must happen in the main thread; the callbacks run in the reactor's.
        reactor.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
        reactor.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
        thread.start()
        demo_log.info("serve_forever() in thread %r: %d servers, one selector", thread.name, len(services))

        answered = run_clients(services, interrupted)
        if answered == len(services):
            status = 0
        elif interrupted:
            status = 128 + interrupted[0]
        if status == 0 and options.serve and not interrupted:
            demo_log.info("serving until Ctrl-C or SIGTERM")
            thread.join()  # returns once a signal has stopped the reactor
            if not interrupted:
                fail("the reactor thread ended without being stopped")
                status = 1
    finally:
        if not shut_down(reactor, thread, socket_dir):
            status = 1

    if status == 0:
        notes = [skipped] if skipped else []
        if interrupted:
            notes.append(f"stopped by {signal.Signals(interrupted[0]).name}")
        print(f"ok: {len(services)} servers on one reactor thread, {answered} replies, clean shutdown"
              + "".join(f" ({note})" for note in notes))
    elif interrupted and answered < len(services):
        print(f"interrupted after {answered} of {len(services)} exchanges", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
