"""Driving a Reactor from a foreign loop: a plain ``select.select()`` loop and asyncio.

The host watches ``reactor.fileno()``, sleeps at most ``reactor.time_until_next()``
and calls ``reactor.run_once(0)``; the reactor never blocks the host.
"""

from __future__ import annotations

import asyncio
import io
import os
import select
import selectors
import socket
import socketserver as std_socketserver
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import Reactor
from reactor import socketserver as rsocketserver
from reactor._platform import available_selectors
from support import wait_for

POLLABLE = [cls for cls in available_selectors() if hasattr(cls, "fileno")]
UNPOLLABLE = [cls for cls in (getattr(selectors, "SelectSelector", None), getattr(selectors, "PollSelector", None))
              if cls is not None and cls in available_selectors()]


@pytest.fixture(params=POLLABLE or [None], ids=lambda cls: getattr(cls, "__name__", "none"))
def reactor(request: pytest.FixtureRequest) -> Iterator[Reactor]:
    if request.param is None:
        pytest.skip("no selector with a pollable descriptor on this platform")
    r = Reactor(selector=request.param())
    try:
        yield r
    finally:
        r.close()


class EchoHandler(std_socketserver.StreamRequestHandler):
    timeout = 5

    def handle(self) -> None:
        line = self.rfile.readline()
        self.server.threads.add(threading.get_ident())  # type: ignore[attr-defined]
        self.wfile.write(b"echo:" + line)


class GreetingHandler(std_socketserver.BaseRequestHandler):
    """Never reads, so it cannot block the host loop waiting for a client."""

    def handle(self) -> None:
        self.request.sendall(b"hello %d\n" % self.client_address[1])


def echo_server() -> Any:
    server = rsocketserver.TCPServer(("127.0.0.1", 0), EchoHandler)
    server.threads = set()
    return server


def echo_request(address: Any, payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as client:
        client.sendall(payload)
        chunks = []
        while True:
            data = client.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


class SelectHost:
    """A foreign loop built on ``select.select()`` with its own pipe, driving a Reactor."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.pipe_r, self.pipe_w = os.pipe()
        self.messages: list[bytes] = []
        self.error: BaseException | None = None
        self.sleeping_without_timeout = False
        self.thread = threading.Thread(target=self._run, name="select-host", daemon=True)

    def _run(self) -> None:
        try:
            reactor_fd = self.reactor.fileno()
            while True:
                timeout = self.reactor.time_until_next()
                self.sleeping_without_timeout = timeout is None
                readable, _, _ = select.select([reactor_fd, self.pipe_r], [], [], timeout)
                self.sleeping_without_timeout = False
                if self.pipe_r in readable:
                    data = os.read(self.pipe_r, 1024)
                    self.messages.extend(data.split())
                    if b"quit" in data.split():
                        return
                if reactor_fd in readable or not readable:  # I/O, or the next timer is due
                    self.reactor.run_once(0)
        except BaseException as exc:
            self.error = exc

    def send(self, message: bytes) -> None:
        os.write(self.pipe_w, message + b"\n")

    def __enter__(self) -> SelectHost:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.send(b"quit")
            self.thread.join(10)
            if exc_info[0] is None:
                assert not self.thread.is_alive(), "host loop did not quit"
                assert self.error is None, f"host loop raised {self.error!r}"
        finally:
            os.close(self.pipe_r)
            os.close(self.pipe_w)


# ---------------------------------------------------------------- select.select() host

def test_select_host_serves_a_hosted_tcp_server(reactor: Reactor) -> None:
    server = echo_server()
    reactor.add_server(server)
    with SelectHost(reactor) as host:
        for i in range(5):
            assert echo_request(server.server_address, b"n%d\n" % i) == b"echo:n%d\n" % i
    assert server.threads == {host.thread.ident}


def test_select_host_fires_reactor_timers_without_any_io(reactor: Reactor) -> None:
    fired = threading.Event()
    fired_in: list[int] = []

    def on_timer() -> None:
        fired_in.append(threading.get_ident())
        fired.set()

    reactor.call_later(0.05, on_timer)
    with SelectHost(reactor) as host:
        assert fired.wait(5), "the host never woke up for the reactor's timer"
    assert fired_in == [host.thread.ident]


def test_select_host_fires_a_timer_scheduled_while_it_sleeps(reactor: Reactor) -> None:
    fired = threading.Event()
    with SelectHost(reactor) as host:
        # The host sleeps with no timeout; the waker wakes it, the callback
        # schedules a timer, and the host must then honour time_until_next().
        wait_for(lambda: host.sleeping_without_timeout)
        reactor.call_soon_threadsafe(lambda: reactor.call_later(0.05, fired.set))
        assert fired.wait(5)


def test_select_host_still_handles_its_own_pipe(reactor: Reactor) -> None:
    server = echo_server()
    reactor.add_server(server)
    with SelectHost(reactor) as host:
        host.send(b"first")
        assert echo_request(server.server_address, b"between\n") == b"echo:between\n"
        host.send(b"second")
        wait_for(lambda: host.messages == [b"first", b"second"], message=lambda: repr(host.messages))


# ---------------------------------------------------------------- reactor.fileno() contract

def test_fileno_becomes_readable_when_io_is_pending(reactor: Reactor) -> None:
    a, b = socket.socketpair()
    try:
        got: list[bytes] = []
        reactor.add_reader(b, lambda: got.append(b.recv(16)))
        assert not select.select([reactor.fileno()], [], [], 0)[0]
        a.send(b"x")
        assert select.select([reactor.fileno()], [], [], 5)[0]
        reactor.run_once(0)
        assert got == [b"x"]
        assert not select.select([reactor.fileno()], [], [], 0)[0]
        reactor.remove_reader(b)
    finally:
        a.close()
        b.close()


def test_fileno_becomes_readable_on_call_soon_threadsafe(reactor: Reactor) -> None:
    ran: list[str] = []
    thread = threading.Thread(target=reactor.call_soon_threadsafe, args=(ran.append, "woken"))
    thread.start()
    thread.join(5)
    assert select.select([reactor.fileno()], [], [], 5)[0]
    reactor.run_once(0)
    assert ran == ["woken"]


@pytest.mark.parametrize("selector_class", UNPOLLABLE, ids=lambda cls: cls.__name__)
def test_fileno_without_a_pollable_selector_raises_unsupported_operation(
        selector_class: type[selectors.BaseSelector]) -> None:
    with Reactor(selector=selector_class()) as reactor:
        with pytest.raises(io.UnsupportedOperation):
            reactor.fileno()


# ---------------------------------------------------------------- asyncio host

async def _drive_from_asyncio(reactor: Reactor, body: Any) -> Any:
    """Run coroutine function ``body()`` while the running asyncio loop drives ``reactor``."""
    loop = asyncio.get_running_loop()
    timer: asyncio.TimerHandle | None = None

    def reschedule() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
        delay = reactor.time_until_next()
        timer = None if delay is None else loop.call_later(delay, tick)

    def tick() -> None:
        reactor.run_once(0)
        reschedule()

    loop.add_reader(reactor.fileno(), tick)
    reschedule()
    try:
        return await body(reschedule)
    finally:
        loop.remove_reader(reactor.fileno())
        if timer is not None:
            timer.cancel()


def test_asyncio_client_talks_to_a_server_hosted_on_an_embedded_reactor(reactor: Reactor) -> None:
    server = rsocketserver.TCPServer(("127.0.0.1", 0), GreetingHandler)
    reactor.add_server(server)

    async def clients(reschedule: Any) -> list[tuple[bytes, int]]:
        replies = []
        for _ in range(3):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*server.server_address), 5)
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
                replies.append((line, writer.get_extra_info("sockname")[1]))
            finally:
                writer.close()
                await writer.wait_closed()
        return replies

    replies = asyncio.run(asyncio.wait_for(_drive_from_asyncio(reactor, clients), 20))
    assert len(replies) == 3
    for line, port in replies:
        assert line == b"hello %d\n" % port


def test_reactor_timers_fire_inside_asyncio(reactor: Reactor) -> None:
    async def wait_for_timers(reschedule: Any) -> list[str]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        fired: list[str] = []

        def record(label: str) -> None:
            fired.append(label)
            if len(fired) == 2:
                done.set_result(None)

        reactor.call_later(0.06, record, "second")
        reactor.call_later(0.03, record, "first")
        reschedule()  # the host learns about timers added outside a tick
        await asyncio.wait_for(done, 5)
        return fired

    fired = asyncio.run(asyncio.wait_for(_drive_from_asyncio(reactor, wait_for_timers), 20))
    assert fired == ["first", "second"]
