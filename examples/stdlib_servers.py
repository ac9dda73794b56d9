#!/usr/bin/env python3
"""Unmodified stdlib servers -- http.server and xmlrpc.server -- on one Reactor beside an echo server.

What it shows
-------------
A :class:`reactor.Reactor` hosts three servers in one thread:

* ``http.server.ThreadingHTTPServer`` with ``SimpleHTTPRequestHandler``,
  serving a temporary directory that holds an ``index.html`` the example
  writes (and removes at exit);
* ``xmlrpc.server.SimpleXMLRPCServer`` with ``add``, ``upper`` and the
  introspection functions (``system.listMethods``, ...);
* an echo server built on ``reactor.socketserver.TCPServer``.

The two stdlib server classes are hosted *unmodified*: no subclass, no
patch, nothing of reactor's mixed in. (Only their request handlers are
customised, the stdlib way: the HTTP log goes to stdout, and the XML-RPC
handler bounds its reads with a ``timeout``.) ``add_server()`` only
uses the hooks every socketserver server has (``fileno``, ``get_request``,
``verify_request``, ``process_request``, ``handle_error``,
``shutdown_request``, ``server_close``), so anything built on
``socketserver`` can be hosted. Each server keeps its own behaviour:
``ThreadingHTTPServer``'s ``process_request`` (from ``ThreadingMixIn``) runs
every request in a thread of its own, while the XML-RPC and echo requests
run inline, in the reactor's thread. Inline requests hold the reactor while
they run, so their handlers bound every read with a ``timeout``.

Run it
------
::

    python examples/stdlib_servers.py --once   # a client for each server, then a clean shutdown
    python examples/stdlib_servers.py          # serve until Ctrl-C or SIGTERM; then try:
        curl http://127.0.0.1:PORT/
        python -c 'import xmlrpc.client as x; print(x.ServerProxy("http://127.0.0.1:PORT").add(2, 3))'
        printf 'hello\\n' | nc 127.0.0.1 PORT
    python examples/stdlib_servers.py --help

Each server prints a ``listening on ...`` line with its address (the ports
are chosen by the kernel unless ``--http-port``, ``--xmlrpc-port`` or
``--echo-port`` is given). Exit status: 0 after a clean shutdown, 1 if a
client did not get the reply it expected.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import http.server
import os
import signal
import socket
import sys
import tempfile
import threading
import xmlrpc.client
import xmlrpc.server
from typing import Any

try:
    from reactor import Reactor, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, socketserver
from reactor.binding import describe_address

#: Every client socket, and every read of an inline handler, gives up after this many seconds.
TIMEOUT = 5.0

#: What system.listMethods() returns once add, upper and the introspection functions are registered.
RPC_METHODS = ["add", "system.listMethods", "system.methodHelp", "system.methodSignature", "upper"]

INDEX_HTML = "<!doctype html>\n<title>reactor</title>\n<p>Hello from http.server</p>\n"

_print_lock = threading.Lock()


def say(message: str) -> None:
    """print() one whole line: the reactor, the request threads and the client thread all print."""
    with _print_lock:
        print(message, flush=True)


# -- the servers --------------------------------------------------------------


class FileHandler(http.server.SimpleHTTPRequestHandler):
    """The stdlib's file handler; only its log goes to stdout instead of stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        main = threading.current_thread() is threading.main_thread()
        where = "in the reactor's thread" if main else "in a ThreadingMixIn thread"
        say(f"http.server: {format % args}  ({where})")


class RPCHandler(xmlrpc.server.SimpleXMLRPCRequestHandler):
    """The stdlib's XML-RPC handler with a bound on each read: it runs in the reactor's thread."""

    timeout = TIMEOUT


class EchoHandler(socketserver.StreamRequestHandler):
    """Reads one line, answers it upper-cased."""

    timeout = TIMEOUT  # inline: a stalled client must not stall the reactor for ever

    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


def upper(text: str) -> str:
    """Return ``text`` in upper case."""
    return text.upper()


def add(a: int, b: int) -> int:
    """Return ``a + b``."""
    return a + b


def describe(server: Any) -> str:
    """``tcp4 127.0.0.1:40000  (http.server.ThreadingHTTPServer)``."""
    cls = type(server)
    where = describe_address(server.socket.family, server.socket.type, server.server_address)
    return f"{where}  ({cls.__module__}.{cls.__qualname__})"


def host_servers(reactor: Reactor, options: argparse.Namespace, docroot: str) -> tuple[Any, Any, Any]:
    """Create the three servers and hand each to ``reactor`` as soon as it exists.

    ``reactor.close()`` then closes whatever was created, even if a later bind fails.
    """

    def host(server: Any) -> Any:
        try:
            reactor.add_server(server)  # the stdlib classes need nothing more
        except BaseException:
            server.server_close()
            raise
        return server

    web = host(http.server.ThreadingHTTPServer(
        (options.host, options.http_port), functools.partial(FileHandler, directory=docroot)))

    rpc = xmlrpc.server.SimpleXMLRPCServer(
        (options.host, options.xmlrpc_port), requestHandler=RPCHandler, logRequests=False)
    host(rpc)
    rpc.register_function(add)
    rpc.register_function(upper)
    rpc.register_introspection_functions()  # system.listMethods, system.methodHelp, system.methodSignature

    echo = host(socketserver.TCPServer((options.host, options.echo_port), EchoHandler))
    return web, rpc, echo


# -- the clients --------------------------------------------------------------


class TimeoutTransport(xmlrpc.client.Transport):
    """xmlrpc.client's HTTP transport, with a timeout on its connection (it has none by default)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = self.timeout  # used by connect(), which has not happened yet
        return connection


def url_of(server: Any) -> str:
    host, port = server.server_address[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def talk_http(web: Any) -> bool:
    host, port = web.server_address[:2]
    say("http: GET /")
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    say(f"http: {response.status} {response.reason} {response.getheader('Content-Type')} {body!r}")
    return response.status == 200 and body == INDEX_HTML.encode()


def talk_xmlrpc(rpc: Any) -> bool:
    with xmlrpc.client.ServerProxy(url_of(rpc), transport=TimeoutTransport(TIMEOUT)) as proxy:
        methods = proxy.system.listMethods()
        say(f"xmlrpc: system.listMethods() -> {methods!r}")
        total = proxy.add(2, 3)
        say(f"xmlrpc: add(2, 3) -> {total!r}")
        shout = proxy.upper("hello")
        say(f"xmlrpc: upper('hello') -> {shout!r}")
    return methods == RPC_METHODS and total == 5 and shout == "HELLO"


def talk_echo(echo: Any) -> bool:
    line = b"hello, echo\n"
    with socket.create_connection(echo.server_address[:2], timeout=TIMEOUT) as sock:
        say(f"echo: sent {line!r}")
        sock.sendall(line)
        with sock.makefile("rb") as reader:
            reply = reader.readline()
    say(f"echo: received {reply!r}")
    return reply == line.upper()


def run_clients(reactor: Reactor, servers: tuple[Any, Any, Any], outcome: list[bool]) -> None:
    """The --once client thread: talk to each server, record the outcome, stop the reactor."""
    web, rpc, echo = servers
    try:
        outcome.append(talk_http(web) and talk_xmlrpc(rpc) and talk_echo(echo))
    except (OSError, xmlrpc.client.Error) as exc:
        print(f"error: {exc!r}", file=sys.stderr, flush=True)
        outcome.append(False)
    finally:
        reactor.stop()  # thread-safe: serve_forever() returns at the end of its tick


# -- main -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind every server to (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=0, help="http.server port (default: any free port)")
    parser.add_argument("--xmlrpc-port", type=int, default=0, help="xmlrpc.server port (default: any free port)")
    parser.add_argument("--echo-port", type=int, default=0, help="echo server port (default: any free port)")
    parser.add_argument("--once", action="store_true",
                        help="talk to each server once from a client thread, then shut down")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    stopped_by: list[str] = []
    outcome: list[bool] = []
    with tempfile.TemporaryDirectory(prefix="rx-www-") as docroot, Reactor() as reactor:
        with open(os.path.join(docroot, "index.html"), "w", encoding="utf-8") as page:
            page.write(INDEX_HTML)
        servers = host_servers(reactor, options, docroot)
        for server in servers:
            say(f"listening on {describe(server)}")
        say(f"http.server: serving files from {docroot}")

        def on_signal(signum: int) -> None:  # runs in the reactor's loop, not in the signal handler
            stopped_by.append(signal.Signals(signum).name)
            reactor.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            reactor.add_signal_handler(signum, on_signal, signum)

        client = None
        if options.once:
            client = threading.Thread(target=run_clients, args=(reactor, servers, outcome), name="client")
            client.start()
        reactor.serve_forever()  # in this (the main) thread, until stop()
        if client is not None:
            client.join()
    # Leaving the blocks: reactor.close() called server_close() on the three
    # servers, restored the signal handlers, and the directory was removed.
    say("stopped" + (f" ({stopped_by[0]})" if stopped_by else ""))
    if options.once and outcome != [True]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
