"""shutdown() and serve_forever() of reactor.socketserver, compared with the stdlib where they agree.

Documented differences (reactor/socketserver.py) are tested against reactor
only: shutdown() from the serving thread returns instead of deadlocking,
shutdown() before serve_forever() does not block, no request is taken after
shutdown() is called, and server_close() removes a Unix socket file.

No timing assertions: the shutdown latency is measured, and written to a JSON
file when REACTOR_MEASURE=1 (the benchmark, `make bench`, measures it properly).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver as std_socketserver
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from reactor import socketserver as rx_socketserver
from support import wait_for

MODULES = [std_socketserver, rx_socketserver]
MODULE_IDS = ["stdlib", "reactor"]
JOIN_TIMEOUT = 5


@pytest.fixture(params=MODULES, ids=MODULE_IDS)
def ss(request: pytest.FixtureRequest) -> Any:
    """The stdlib socketserver or reactor's drop-in."""
    return request.param


# ---------------------------------------------------------------- helpers

class Server:
    """A server plus the thread running its serve_forever()."""

    def __init__(self, server: Any, poll_interval: float = 0.5) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self.thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def start(self) -> threading.Thread:
        def run() -> None:
            try:
                self.server.serve_forever(poll_interval=self.poll_interval)
            except BaseException as exc:  # surfaced by the test
                self.errors.append(exc)

        # A daemon: if shutdown() regresses into a deadlock, the test fails instead of hanging at exit.
        self.thread = threading.Thread(target=run, name="serve_forever", daemon=True)
        self.thread.start()
        return self.thread

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive(), "serve_forever() did not return"
        assert self.errors == []

    def close(self) -> None:
        """Best-effort cleanup: stop serving if still running, then close."""
        if self.thread is not None and self.thread.is_alive():
            call_in_thread(self.server.shutdown)
            self.thread.join(JOIN_TIMEOUT)
        self.server.server_close()


def call_in_thread(function: Callable[[], object]) -> bool:
    """Call ``function`` in a thread; True if it returned within JOIN_TIMEOUT.

    The thread is a daemon, so a call that never returns fails the test without
    hanging the interpreter at exit.
    """
    thread = threading.Thread(target=function, name=getattr(function, "__name__", "call"), daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    return not thread.is_alive()


def stream_request(address: Any, payload: bytes) -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(payload)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
        return data


def counting_handler(module: Any, handled: list[bytes]) -> type:
    class Handler(module.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            handled.append(line)
            self.wfile.write(b"echo:" + line)

    return Handler


def record_measurement(name: str, seconds: float) -> None:
    """Add one shutdown latency to the JSON file, only when REACTOR_MEASURE=1."""
    if os.environ.get("REACTOR_MEASURE") != "1":
        return
    path = os.environ.get("REACTOR_MEASURE_FILE") or os.path.join(
        tempfile.gettempdir(), "reactor_shutdown_latency.json")
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = {}
    data.setdefault(name, []).append(seconds)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2)


# ---------------------------------------------------------------- shutdown from elsewhere

def test_shutdown_from_another_thread_makes_serve_forever_return(ss: Any) -> None:
    handled: list[bytes] = []
    running = Server(ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled)), poll_interval=0.5)
    try:
        running.start()
        assert stream_request(running.server.server_address, b"hi\n") == b"echo:hi\n"  # it is serving
        started = time.perf_counter()
        running.server.shutdown()
        latency = time.perf_counter() - started
        running.join()
    finally:
        running.close()
    record_measurement(ss.__name__, latency)


@pytest.mark.parametrize("where", ["handler", "service_actions"])
def test_shutdown_from_the_serving_thread_does_not_deadlock(where: str) -> None:
    shutdown_returned = threading.Event()

    class Handler(rx_socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.server.shutdown()
            shutdown_returned.set()
            self.wfile.write(b"bye\n")

    class StoppingServer(rx_socketserver.TCPServer):
        def service_actions(self) -> None:
            if where == "service_actions":
                self.shutdown()
                shutdown_returned.set()

    running = Server(StoppingServer(("127.0.0.1", 0), Handler), poll_interval=0.01)
    try:
        running.start()
        if where == "handler":
            assert stream_request(running.server.server_address, b"stop\n") == b"bye\n"
        assert shutdown_returned.wait(JOIN_TIMEOUT), "shutdown() did not return"
        running.join()
    finally:
        running.close()


def test_shutdown_from_a_threading_handler_makes_serve_forever_return(ss: Any) -> None:
    # The classic stdlib pattern: a handler thread of a ThreadingMixIn server
    # calls shutdown(), which waits for serve_forever() in the main loop.
    shutdown_returned = threading.Event()

    class Handler(ss.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"bye\n")
            self.wfile.flush()
            self.server.shutdown()
            shutdown_returned.set()

    running = Server(ss.ThreadingTCPServer(("127.0.0.1", 0), Handler), poll_interval=0.05)
    try:
        running.start()
        with socket.create_connection(running.server.server_address, timeout=5) as client:
            client.sendall(b"stop\n")
            assert client.recv(1024) == b"bye\n"
        assert shutdown_returned.wait(JOIN_TIMEOUT), "shutdown() did not return"
        running.join()
    finally:
        running.close()


# ---------------------------------------------------------------- shutdown before serve_forever

def test_shutdown_before_serve_forever_makes_it_return_at_once(ss: Any) -> None:
    handled: list[bytes] = []
    running = Server(ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled)))
    try:
        # The stdlib's shutdown() blocks until serve_forever() has run, so call it from a thread.
        stopper = threading.Thread(target=running.server.shutdown, name="shutdown", daemon=True)
        stopper.start()
        running.start()
        running.join()
        stopper.join(JOIN_TIMEOUT)
        assert not stopper.is_alive()
    finally:
        running.close()
    assert handled == []


def test_shutdown_before_serve_forever_does_not_block() -> None:
    server = rx_socketserver.TCPServer(("127.0.0.1", 0), rx_socketserver.StreamRequestHandler)
    running = Server(server)
    try:
        assert call_in_thread(server.shutdown), "shutdown() blocked waiting for a serve_forever() never started"
        running.start()
        running.join()
    finally:
        running.close()


def test_shutdown_before_serve_forever_stops_only_the_next_serve_forever(ss: Any) -> None:
    handled: list[bytes] = []
    running = Server(ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled)), poll_interval=0.05)
    try:
        stopper = threading.Thread(target=running.server.shutdown, name="shutdown", daemon=True)
        stopper.start()
        running.start()
        running.join()
        stopper.join(JOIN_TIMEOUT)
        running.start()
        assert stream_request(running.server.server_address, b"again\n") == b"echo:again\n"
        running.server.shutdown()
        running.join()
    finally:
        running.close()


# ---------------------------------------------------------------- no request after shutdown

def start_shutdown(server: Any) -> tuple[threading.Thread, threading.Event]:
    """Call ``server.shutdown()`` in a thread; return it and an event set once shutdown() waits.

    Both implementations record the request to stop, then wait for serve_forever() to return
    (``threading.Event.wait``), so once the thread enters ``Event.wait`` or ``Condition.wait``,
    shutdown() has been called for good. A profile function (this thread only) sees that call:
    no sleep, no look at the server's internals.
    """
    waiting = threading.Event()
    waits = (threading.Event.wait.__code__, threading.Condition.wait.__code__)

    def profile(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in waits:
            waiting.set()

    def stop() -> None:
        sys.setprofile(profile)
        try:
            server.shutdown()
        finally:
            sys.setprofile(None)

    thread = threading.Thread(target=stop, name="shutdown", daemon=True)
    thread.start()
    return thread, waiting


QUEUED = 3


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_no_request_is_handled_after_shutdown_returns(ss: Any, transport: str) -> None:
    # Requests are waiting (TCP: connections with data in the backlog; UDP: datagrams in the
    # socket's buffer) before shutdown() is called from another thread, while a handler runs. Once
    # that handler returns, serve_forever() must return without taking any of them.
    handled: list[bytes] = []
    release = threading.Event()

    def record_then_hold(data: bytes) -> None:
        handled.append(data)
        if len(handled) == 1:
            assert release.wait(JOIN_TIMEOUT), "the first handler was never released"

    class StreamHandler(ss.StreamRequestHandler):
        def handle(self) -> None:
            record_then_hold(self.rfile.readline())
            self.wfile.write(b"bye\n")

    class DatagramHandler(ss.DatagramRequestHandler):
        def handle(self) -> None:
            record_then_hold(self.rfile.read())
            self.wfile.write(b"bye\n")

    if transport == "tcp":
        server = ss.TCPServer(("127.0.0.1", 0), StreamHandler)
    else:
        server = ss.UDPServer(("127.0.0.1", 0), DatagramHandler)
    running = Server(server, poll_interval=0.05)
    sock_type = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    clients = [socket.socket(socket.AF_INET, sock_type) for _ in range(1 + QUEUED)]
    stopper: threading.Thread | None = None
    try:
        for client in clients:
            client.settimeout(5)
        running.start()
        first, queued = clients[0], clients[1:]
        first.connect(server.server_address)
        first.sendall(b"first\n")
        wait_for(lambda: handled, message="the first request was never handled")
        for i, client in enumerate(queued):
            client.connect(server.server_address)  # TCP: the handshake completes into the backlog
            client.sendall(b"queued%d\n" % i)
        stopper, shutdown_waiting = start_shutdown(server)
        assert shutdown_waiting.wait(JOIN_TIMEOUT), "shutdown() never started waiting"
        release.set()  # the handler returns with the requests still waiting and shutdown() called
        assert first.recv(1024) == b"bye\n"
        stopper.join(JOIN_TIMEOUT)
        assert not stopper.is_alive(), "shutdown() did not return"
        running.join()
        assert handled == [b"first\n"]
    finally:
        release.set()
        running.close()
        if stopper is not None:
            stopper.join(JOIN_TIMEOUT)
        for client in clients:
            client.close()
    assert handled == [b"first\n"]  # server_close() too took nothing


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_queued_request_is_not_taken_once_a_handler_calls_shutdown(transport: str) -> None:
    handled: list[bytes] = []
    second_sent = threading.Event()

    class StreamHandler(rx_socketserver.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            handled.append(line)
            assert second_sent.wait(JOIN_TIMEOUT)
            self.server.shutdown()
            self.wfile.write(b"bye\n")

    class DatagramHandler(rx_socketserver.DatagramRequestHandler):
        def handle(self) -> None:
            handled.append(self.rfile.read())
            assert second_sent.wait(JOIN_TIMEOUT)
            self.server.shutdown()
            self.wfile.write(b"bye\n")

    if transport == "tcp":
        server = rx_socketserver.TCPServer(("127.0.0.1", 0), StreamHandler)
    else:
        server = rx_socketserver.UDPServer(("127.0.0.1", 0), DatagramHandler)
    running = Server(server, poll_interval=0.05)
    sock_type = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, sock_type) as first, socket.socket(socket.AF_INET, sock_type) as second:
        first.settimeout(5)
        second.settimeout(5)
        try:
            running.start()
            first.connect(server.server_address)
            first.sendall(b"first\n")
            wait_for(lambda: handled, message="the first request was never handled")
            second.connect(server.server_address)
            second.sendall(b"second\n")  # queued while the first handler runs
            second_sent.set()
            assert first.recv(1024) == b"bye\n"
            running.join()
        finally:
            second_sent.set()
            running.close()
    assert handled == [b"first\n"]


# ---------------------------------------------------------------- reuse and idempotence

def test_serve_forever_works_again_after_shutdown(ss: Any) -> None:
    handled: list[bytes] = []
    running = Server(ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled)), poll_interval=0.05)
    try:
        for round_ in range(3):
            running.start()
            assert stream_request(running.server.server_address, b"r%d\n" % round_) == b"echo:r%d\n" % round_
            running.server.shutdown()
            running.join()
    finally:
        running.close()
    assert handled == [b"r0\n", b"r1\n", b"r2\n"]


@pytest.mark.parametrize("initial_timeout", [None, 0.0, 2.5], ids=["blocking", "non-blocking", "timeout"])
def test_socket_mode_after_serve_forever_equals_before(ss: Any, initial_timeout: float | None) -> None:
    handled: list[bytes] = []
    server = ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled))
    server.socket.settimeout(initial_timeout)
    before = (server.socket.gettimeout(), os.get_blocking(server.socket.fileno()))
    running = Server(server, poll_interval=0.05)
    try:
        running.start()
        assert stream_request(server.server_address, b"hi\n") == b"echo:hi\n"
        server.shutdown()
        running.join()
        assert (server.socket.gettimeout(), os.get_blocking(server.socket.fileno())) == before
    finally:
        running.close()


def test_shutdown_twice_concurrently_is_harmless(ss: Any) -> None:
    handled: list[bytes] = []
    running = Server(ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled)), poll_interval=0.05)
    try:
        running.start()
        assert stream_request(running.server.server_address, b"hi\n") == b"echo:hi\n"
        stoppers = [threading.Thread(target=running.server.shutdown, daemon=True) for _ in range(2)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join(JOIN_TIMEOUT)
        assert not any(stopper.is_alive() for stopper in stoppers)
        running.join()
    finally:
        running.close()


def test_shutdown_again_after_serve_forever_returned_is_harmless(ss: Any) -> None:
    handled: list[bytes] = []
    running = Server(ss.TCPServer(("127.0.0.1", 0), counting_handler(ss, handled)), poll_interval=0.05)
    try:
        running.start()
        running.server.shutdown()
        running.join()
        assert call_in_thread(running.server.shutdown), "a second shutdown() blocked"
    finally:
        running.close()


# ---------------------------------------------------------------- Unix socket files

@pytest.mark.parametrize("class_name", ["UnixStreamServer", "UnixDatagramServer"])
def test_server_close_removes_the_unix_socket_file_unlike_stdlib(ss: Any, class_name: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "server.sock")
    server = getattr(ss, class_name)(path, ss.BaseRequestHandler)
    assert os.path.exists(path)
    server.server_close()
    # Documented difference: the stdlib leaves the file behind, reactor removes it.
    assert os.path.exists(path) is (ss is std_socketserver)
