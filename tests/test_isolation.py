"""One failure, one casualty: a handler, a client or a server leaving touches only itself.

* ``shutdown()`` of a hosted server (reactor's own or an unmodified stdlib one)
  stops serving that server only, from any thread and from its own handler;
* a handler's ``SystemExit`` is never silent;
* a Unix datagram peer that never reads costs a counter and a rate-limited
  log line per cause, not a traceback per reply;
* ``close()`` drains every server at once under one deadline, and a second
  stop (a second SIGTERM or Ctrl-C) aborts what is left.

Each fault test also checks that another server on the same reactor kept
answering.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import logging
import os
import signal
import socket
import socketserver as std_socketserver
import threading
from typing import Any

import pytest

from reactor import Reactor, ThreadPool, socketserver
from support import QuietHTTPHandler, reactor_thread, spawn_python, wait_for

CLIENT_TIMEOUT = 5.0
JOIN_TIMEOUT = 10.0


class UpperHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline().upper())


def ask(address: Any, line: bytes = b"ping\n") -> bytes:
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(line)
        return sock.makefile("rb").readline()


def not_answered(address: Any) -> bool:
    """True when a connection to ``address`` gets no reply (nobody accepts it)."""
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.settimeout(0.3)
        sock.sendall(b"anyone?\n")
        try:
            return sock.recv(100) == b""
        except TimeoutError:
            return True


# ---------------------------------------------------------------- shutdown() of a hosted server

@pytest.mark.parametrize("dispatch", ["inline", "pool"])
def test_shutdown_of_a_hosted_reactor_server_from_another_thread_stops_only_that_server(dispatch: str) -> None:
    with Reactor() as reactor:
        leaving = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
        staying = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
        reactor.add_server(leaving, dispatch=ThreadPool(2) if dispatch == "pool" else None)
        reactor.add_server(staying)
        try:
            with reactor_thread(reactor):
                assert ask(leaving.server_address) == b"PING\n"
                done = threading.Event()
                threading.Thread(target=lambda: (leaving.shutdown(), done.set())).start()
                assert done.wait(JOIN_TIMEOUT), "shutdown() did not return"
                assert leaving not in reactor.servers
                assert not_answered(leaving.server_address)
                assert ask(staying.server_address) == b"PING\n"
        finally:
            leaving.server_close()


def test_shutdown_from_the_servers_own_inline_handler_returns_and_spares_the_others() -> None:
    class ShutdownHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            self.server.shutdown()  # the loop's own thread: must not deadlock
            self.wfile.write(b"bye\n")

    with Reactor() as reactor:
        leaving = socketserver.TCPServer(("127.0.0.1", 0), ShutdownHandler)
        staying = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
        reactor.add_server(leaving)
        reactor.add_server(staying)
        try:
            with reactor_thread(reactor):
                assert ask(leaving.server_address) == b"bye\n"
                wait_for(lambda: leaving not in reactor.servers)
                assert ask(staying.server_address) == b"PING\n"
        finally:
            leaving.server_close()


class HelloHandler(QuietHTTPHandler):
    def reply(self) -> bytes:
        if self.path == "/shutdown":
            self.server.shutdown()  # from its own handler, in the loop's thread
        return b"hello\n"


def http_get(server: Any, path: str = "/") -> bytes:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.mark.parametrize("caller", ["another thread", "its own handler"])
def test_shutdown_of_a_hosted_stdlib_http_server_neither_blocks_nor_deadlocks(caller: str) -> None:
    with Reactor() as reactor:
        web = http.server.HTTPServer(("127.0.0.1", 0), HelloHandler)  # the stdlib's, unmodified
        staying = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
        reactor.add_server(web)
        reactor.add_server(staying)
        try:
            with reactor_thread(reactor):
                assert http_get(web) == b"hello\n"
                if caller == "another thread":
                    done = threading.Event()
                    threading.Thread(target=lambda: (web.shutdown(), done.set())).start()
                    assert done.wait(JOIN_TIMEOUT), "the stdlib server's shutdown() blocked"
                else:
                    assert http_get(web, "/shutdown") == b"hello\n"
                wait_for(lambda: web not in reactor.servers)
                assert "shutdown" not in vars(web), "the reactor's shutdown() outlived the hosting"
                assert ask(staying.server_address) == b"PING\n"
        finally:
            web.server_close()


def test_shutdown_before_hosting_and_after_leaving_is_the_stdlib_s_again() -> None:
    web = http.server.HTTPServer(("127.0.0.1", 0), HelloHandler)
    try:
        with Reactor() as reactor:
            reactor.add_server(web)
            assert vars(web).get("shutdown") is not None
            reactor.remove_server(web)
            assert "shutdown" not in vars(web)
            assert type(web).shutdown is std_socketserver.BaseServer.shutdown
    finally:
        web.server_close()


# ---------------------------------------------------------------- SystemExit is never silent

def test_a_handlers_system_exit_is_logged_with_the_server_and_handler(caplog: pytest.LogCaptureFixture) -> None:
    class ExitingHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            raise SystemExit(3)

    caplog.set_level(logging.ERROR, logger="reactor")
    reactor = Reactor()
    server = socketserver.TCPServer(("127.0.0.1", 0), ExitingHandler)
    reactor.add_server(server)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            reactor.serve_forever()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
            assert sock.recv(10) == b""  # the request was shut down
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    finally:
        reactor.stop()
        thread.join(JOIN_TIMEOUT)
        reactor.close()
    assert len(outcome) == 1 and isinstance(outcome[0], SystemExit), "Python's semantics are kept"
    messages = [record.getMessage() for record in caplog.records]
    assert any("SystemExit" in m and "ExitingHandler" in m and str(server.server_address[1]) in m
               for m in messages), messages


# ---------------------------------------------------------------- a datagram peer that never reads

@pytest.mark.linux
def test_replies_to_a_unix_datagram_peer_that_never_reads_are_counted_not_traced(
        unix_dir: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.WARNING, logger="reactor")
    sent = 200
    with Reactor() as reactor:
        echo = socketserver.UnixDatagramServer(os.path.join(unix_dir, "echo.sock"),
                                               socketserver.DatagramRequestHandler)
        staying = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
        reactor.add_server(echo)
        reactor.add_server(staying)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as deaf, reactor_thread(reactor, close=False):
            deaf.bind(os.path.join(unix_dir, "deaf.sock"))
            deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            deaf.settimeout(CLIENT_TIMEOUT)
            for _ in range(sent):
                deaf.sendto(b"x" * 512, echo.server_address)  # never read: its queue fills up
            wait_for(lambda: reactor.server_stats(echo)["requests"] == sent)
            stats = reactor.server_stats(echo)
            assert stats["replies_lost"] > sent // 2, stats
            assert ask(staying.server_address) == b"PING\n"
    lost_logs = [r for r in caplog.records if "reply" in r.getMessage() and "lost" in r.getMessage()]
    assert 1 <= len(lost_logs) <= 2, [r.getMessage() for r in lost_logs]
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------- close(): one deadline, second stop aborts

class RendezvousHandler(socketserver.StreamRequestHandler):
    """Answers only once every server's drain has begun (serial drains would never get there)."""

    draining_everywhere: threading.Event

    def handle(self) -> None:
        self.rfile.readline()
        self.server.in_flight.set()  # type: ignore[attr-defined]
        if self.draining_everywhere.wait(JOIN_TIMEOUT):
            self.wfile.write(b"finished\n")


class WatchedPool(ThreadPool):
    def __init__(self, started: list[str], name: str, everyone: threading.Event, count: int) -> None:
        super().__init__(2, drain_timeout=JOIN_TIMEOUT)
        self.started, self.label, self.everyone, self.count = started, name, everyone, count

    def begin_drain(self, hosted: Any, on_drained: Any) -> float:
        self.started.append(self.label)
        if len(self.started) == self.count:
            self.everyone.set()
        return super().begin_drain(hosted, on_drained)


def test_close_drains_every_server_at_once() -> None:
    everyone = threading.Event()
    started: list[str] = []
    handler = type("Handler", (RendezvousHandler,), {"draining_everywhere": everyone})
    reactor = Reactor()
    servers = []
    for name in ("a", "b", "c"):
        server = socketserver.TCPServer(("127.0.0.1", 0), handler)
        server.in_flight = threading.Event()  # type: ignore[attr-defined]
        reactor.add_server(server, dispatch=WatchedPool(started, name, everyone, 3))
        servers.append(server)
    replies: list[bytes] = []
    with contextlib.ExitStack() as stack:
        with reactor_thread(reactor, close=False):
            socks = []
            for server in servers:
                sock = stack.enter_context(socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT))
                sock.sendall(b"go\n")
                socks.append(sock)
            for server in servers:
                assert server.in_flight.wait(JOIN_TIMEOUT)  # type: ignore[attr-defined]
        reactor.close()  # every handler waits until all three drains began
        replies = [sock.makefile("rb").readline() for sock in socks]
    assert sorted(started) == ["a", "b", "c"]
    assert replies == [b"finished\n"] * 3, "a drain that ran one server after another aborted a request"


SECOND_SIGNAL_SCRIPT = r"""
import signal, socket, sys, threading
from reactor import Reactor, ThreadPool, socketserver

release = threading.Event()

class Stuck(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        print("in-flight", flush=True)
        release.wait(120)  # longer than the test may take: only an abort ends the drain

class Announced(ThreadPool):
    def begin_drain(self, hosted, on_drained):
        timeout = super().begin_drain(hosted, on_drained)
        print("drain-begun", flush=True)
        return timeout

mode = sys.argv[1]
reactor = Reactor()
stuck = socketserver.TCPServer(("127.0.0.1", 0), Stuck)
other = socketserver.TCPServer(("127.0.0.1", 0), Stuck)
reactor.add_server(stuck, dispatch=Announced(2, drain_timeout=120))
reactor.add_server(other, dispatch=ThreadPool(2, drain_timeout=120))
if mode == "sigterm":
    reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
print("ready", stuck.server_address[1], flush=True)
try:
    reactor.serve_forever()
    print("draining", flush=True)
    reactor.close()
except KeyboardInterrupt:  # the first Ctrl-C
    print("interrupted", flush=True)
    try:
        reactor.close()
    except KeyboardInterrupt:  # the second: close() aborted the drain and closed
        print("aborted", flush=True)
print("closed" if reactor.closed else "still open", flush=True)
"""


@pytest.mark.parametrize("mode", ["sigterm", "sigint"])
def test_a_second_signal_during_close_aborts_the_drain(mode: str) -> None:
    signum = signal.SIGTERM if mode == "sigterm" else signal.SIGINT
    with spawn_python(SECOND_SIGNAL_SCRIPT, mode) as proc:
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline().split()
            assert ready[0] == "ready", ready
            client = socket.create_connection(("127.0.0.1", int(ready[1])), timeout=CLIENT_TIMEOUT)
            with client:
                client.sendall(b"hold\n")
                assert proc.stdout.readline().strip() == "in-flight"
                proc.send_signal(signum)  # first: stop serving, drain (for 120 s at most)
                first = "draining" if mode == "sigterm" else "interrupted"
                assert proc.stdout.readline().strip() == first
                assert proc.stdout.readline().strip() == "drain-begun"
                proc.send_signal(signum)  # second: now
                rest = proc.stdout.read()
                proc.wait(JOIN_TIMEOUT)
            assert "closed" in rest.split(), (rest, proc.stderr.read() if proc.stderr else "")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------- remove_server() from inside the loop

def test_remove_server_from_a_handler_leaves_in_the_background_and_says_when_done() -> None:
    release = threading.Event()
    in_flight = threading.Event()

    class Held(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()
            in_flight.set()
            if release.wait(JOIN_TIMEOUT):
                self.wfile.write(b"finished\n")

    removed: list[str] = []
    with Reactor() as reactor:
        pooled = socketserver.TCPServer(("127.0.0.1", 0), Held)

        class Remover(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.rfile.readline()
                reactor.remove_server(pooled, on_removed=lambda: removed.append("pooled"))
                self.wfile.write(b"removing\n")

        remover = socketserver.TCPServer(("127.0.0.1", 0), Remover)
        staying = socketserver.TCPServer(("127.0.0.1", 0), UpperHandler)
        reactor.add_server(pooled, dispatch=ThreadPool(2, drain_timeout=JOIN_TIMEOUT))
        reactor.add_server(remover)
        reactor.add_server(staying)
        try:
            with reactor_thread(reactor), socket.create_connection(pooled.server_address, timeout=CLIENT_TIMEOUT) as held:
                held.sendall(b"hold\n")
                assert in_flight.wait(JOIN_TIMEOUT)
                assert ask(remover.server_address) == b"removing\n"  # the loop did not wait for the pool
                assert pooled not in reactor.servers
                assert ask(staying.server_address) == b"PING\n"
                assert removed == [], "on_removed ran while a request was still in flight"
                release.set()
                assert held.makefile("rb").readline() == b"finished\n"
                wait_for(lambda: removed == ["pooled"])
        finally:
            pooled.server_close()
