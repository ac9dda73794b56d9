"""The Reactor core: timers, callbacks, readers and writers, stop/close, hosting many servers.

Everything that touches the selector runs once per selector class that works
here (``available_selectors()``), and once more with no selector given: on
Linux the loop then polls an epoll object of its own instead of ``selectors``.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import socket
import socketserver as std_socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reactor import Reactor
from reactor import loop as reactor_loop
from reactor import socketserver as rsocketserver
from reactor.accept import DEFAULT_ACCEPT_BATCH
from reactor._platform import available_selectors
from support import ipv6_available, take_snapshot, wait_for

SelectorFactory = Callable[[], "selectors.BaseSelector | None"]


def default_selector() -> None:
    """No selector: the loop's own choice (its own epoll object where there is one)."""
    return None


default_selector.__name__ = "default"
SELECTORS: tuple[SelectorFactory, ...] = (*available_selectors(), default_selector)


# ---------------------------------------------------------------- helpers

class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=SELECTORS, ids=lambda cls: cls.__name__)
def selector_class(request: pytest.FixtureRequest) -> SelectorFactory:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def reactor(selector_class: SelectorFactory) -> Iterator[Reactor]:
    r = Reactor(selector=selector_class())
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_reactor(selector_class: SelectorFactory, clock: FakeClock) -> Iterator[Reactor]:
    r = Reactor(selector=selector_class(), clock=clock)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def pair2() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def run_until(reactor: Reactor, predicate: Callable[[], object], timeout: float = 5.0) -> int:
    """Run ticks (each waiting at most 50 ms) until ``predicate()``; return the number of ticks."""
    ticks = 0

    def step() -> object:
        nonlocal ticks
        if predicate():
            return True
        reactor.run_once(0.05)
        ticks += 1
        return predicate()

    wait_for(step, timeout=timeout, interval=0)
    return ticks


def blocked_in_select(thread: threading.Thread) -> bool:
    """True while ``thread`` sits inside a ``selectors`` ``select()`` call, or the loop's own epoll wait."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return False
    code = frame.f_code
    return ((code.co_name == "select" and code.co_filename == selectors.__file__)
            or (code.co_name == "_poll" and code.co_filename == reactor_loop.__file__))


class Serving:
    """Run ``reactor.serve_forever()`` in a thread; on exit stop it and join."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor
        self.returned = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="serving", daemon=True)

    def _run(self) -> None:
        try:
            self.reactor.serve_forever()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.returned.set()

    def __enter__(self) -> Serving:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.returned.is_set():
            # A stop() after serve_forever() returned would make the next one return at once.
            self.reactor.stop()
        self.thread.join(10)
        if exc_info[0] is None:
            assert not self.thread.is_alive(), "serve_forever() did not return after stop()"
            assert self.error is None, f"serve_forever() raised {self.error!r}"


class EchoHandler(std_socketserver.StreamRequestHandler):
    """Replies with the server's tag followed by the line it received."""

    timeout = 5

    def handle(self) -> None:
        line = self.rfile.readline()
        self.server.threads.add(threading.get_ident())  # type: ignore[attr-defined]
        self.wfile.write(self.server.tag + line)  # type: ignore[attr-defined]


class DatagramEchoHandler(std_socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        data = self.rfile.read()
        self.server.threads.add(threading.get_ident())  # type: ignore[attr-defined]
        self.wfile.write(self.server.tag + data)  # type: ignore[attr-defined]


def tagged(server: Any, tag: bytes) -> Any:
    server.tag = tag
    server.threads = set()
    return server


def tcp_echo_server(tag: bytes = b"", address: Any = ("127.0.0.1", 0),
                    cls: type = rsocketserver.TCPServer) -> Any:
    return tagged(cls(address, EchoHandler), tag)


def stream_request(family: int, address: Any, payload: bytes = b"ping\n") -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(payload)
        return recv_until_eof(client)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(4096)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def datagram_request(family: int, address: Any, payload: bytes = b"ping",
                     bind: Any = None) -> bytes:
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        if bind is not None:
            client.bind(bind)
        client.sendto(payload, address)
        data, _ = client.recvfrom(65536)
        return data


def noop(*args: object) -> None:
    pass


# ---------------------------------------------------------------- timers

def test_call_later_runs_in_deadline_order_with_a_fake_clock(fake_reactor: Reactor, clock: FakeClock) -> None:
    ran: list[str] = []
    fake_reactor.call_later(3, ran.append, "c")
    fake_reactor.call_later(1, ran.append, "a")
    fake_reactor.call_later(2, ran.append, "b")
    fake_reactor.run_once(0)
    assert ran == []
    clock.advance(1.5)
    fake_reactor.run_once(0)
    assert ran == ["a"]
    clock.advance(10)
    fake_reactor.run_once(0)
    assert ran == ["a", "b", "c"]


def test_call_at_uses_the_injected_clock(fake_reactor: Reactor, clock: FakeClock) -> None:
    ran: list[str] = []
    assert fake_reactor.time() == clock.now
    handle = fake_reactor.call_at(clock.now + 5, ran.append, "at")
    fake_reactor.call_at(clock.now + 2, ran.append, "earlier")
    assert handle.when == clock.now + 5
    clock.advance(4.999)
    fake_reactor.run_once(0)
    assert ran == ["earlier"]
    clock.advance(0.001)
    fake_reactor.run_once(0)
    assert ran == ["earlier", "at"]


def test_timers_due_together_run_in_scheduling_order(fake_reactor: Reactor, clock: FakeClock) -> None:
    ran: list[int] = []
    for i in range(20):
        fake_reactor.call_at(clock.now + 1, ran.append, i)
    clock.advance(1)
    fake_reactor.run_once(0)
    assert ran == list(range(20))


def test_cancelled_timer_does_not_run(fake_reactor: Reactor, clock: FakeClock) -> None:
    ran: list[str] = []
    keep = fake_reactor.call_later(1, ran.append, "kept")
    drop = fake_reactor.call_later(1, ran.append, "dropped")
    drop.cancel()
    clock.advance(2)
    fake_reactor.run_once(0)
    assert ran == ["kept"]
    assert not keep.cancelled()


def test_timer_cancelled_by_an_earlier_callback_of_the_same_tick_does_not_run(
        fake_reactor: Reactor, clock: FakeClock) -> None:
    ran: list[str] = []
    later = fake_reactor.call_later(2, ran.append, "later")
    fake_reactor.call_later(1, later.cancel)
    clock.advance(5)
    fake_reactor.run_once(0)
    assert ran == []


def test_call_later_runs_in_deadline_order_with_the_real_clock(reactor: Reactor) -> None:
    ran: list[tuple[str, float, float]] = []

    def record(label: str) -> None:
        ran.append((label, reactor.time(), handles[label].when))

    handles = {
        label: reactor.call_later(delay, record, label)
        for label, delay in (("c", 0.06), ("a", 0.02), ("b", 0.04))
    }
    run_until(reactor, lambda: len(ran) == 3)
    assert [label for label, _, _ in ran] == ["a", "b", "c"]
    for label, ran_at, deadline in ran:
        assert ran_at >= deadline, f"timer {label} ran before its deadline"


@pytest.mark.timeout(20)
def test_run_once_without_timeout_sleeps_until_the_next_timer(reactor: Reactor) -> None:
    fired: list[bool] = []
    reactor.call_later(0.02, fired.append, True)
    for _ in range(10):
        reactor.run_once()  # no I/O will come: only the timer can end the wait
        if fired:
            break
    assert fired == [True]


# ---------------------------------------------------------------- call_soon

def test_call_soon_runs_in_the_next_tick_with_its_args(reactor: Reactor) -> None:
    ran: list[tuple[object, ...]] = []
    reactor.call_soon(lambda *args: ran.append(args), 1, "two")
    assert ran == []
    reactor.run_once(0)
    assert ran == [(1, "two")]
    reactor.run_once(0)
    assert ran == [(1, "two")]


def test_call_soon_callbacks_run_in_order(reactor: Reactor) -> None:
    ran: list[int] = []
    for i in range(10):
        reactor.call_soon(ran.append, i)
    reactor.run_once(0)
    assert ran == list(range(10))


def test_call_soon_from_a_callback_runs_in_the_following_tick(reactor: Reactor) -> None:
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        reactor.call_soon(ran.append, "second")

    reactor.call_soon(first)
    reactor.run_once(0)
    assert ran == ["first"]
    reactor.run_once(0)
    assert ran == ["first", "second"]


def test_cancelled_call_soon_does_not_run(reactor: Reactor) -> None:
    ran: list[str] = []
    handle = reactor.call_soon(ran.append, "x")
    handle.cancel()
    reactor.run_once(0)
    assert ran == []


def test_self_rescheduling_callback_does_not_starve_io(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    spins: list[int] = []
    reads: list[bytes] = []

    def spin() -> None:
        spins.append(1)
        if len(spins) == 1:
            a.send(b"x")  # the reader becomes ready while the loop is busy
        if len(spins) < 1000:  # bounded, so a broken loop ends instead of hanging
            reactor.call_soon(spin)

    reactor.add_reader(b, lambda: reads.append(b.recv(16)))
    reactor.call_soon(spin)
    reactor.run_once(0)
    assert len(spins) == 1, "a tick ran callbacks scheduled during that tick"
    assert reads == []
    reactor.run_once(0)
    assert reads == [b"x"]
    assert len(spins) == 2


# ---------------------------------------------------------------- readers and writers

def test_reader_callback_gets_its_args(reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    got: list[tuple[object, ...]] = []
    reactor.add_reader(b, lambda *args: got.append(args + (b.recv(16),)), "arg", 2)
    reactor.run_once(0)
    assert got == []
    a.send(b"hello")
    run_until(reactor, lambda: got)
    assert got == [("arg", 2, b"hello")]


def test_reader_accepts_a_file_object_or_a_descriptor(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    got: list[bytes] = []
    reactor.add_reader(b.fileno(), lambda: got.append(b.recv(16)))
    a.send(b"1")
    run_until(reactor, lambda: got)
    assert reactor.remove_reader(b) is True  # same descriptor, given as the socket
    assert reactor.remove_reader(b.fileno()) is False


def test_add_reader_rejects_a_closed_socket(reactor: Reactor) -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError):
        reactor.add_reader(sock, noop)


def test_writer_callback_fires_when_writable(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    got: list[str] = []
    reactor.add_writer(a, got.append, "writable")
    reactor.run_once(0)
    assert got == ["writable"]
    assert reactor.remove_writer(a) is True
    reactor.run_once(0)
    assert got == ["writable"]


def test_add_reader_replaces_the_previous_reader(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    got: list[str] = []
    reactor.add_reader(b, got.append, "old")
    reactor.add_reader(b, lambda: got.append("new") or b.recv(16))
    a.send(b"x")
    run_until(reactor, lambda: got)
    assert got == ["new"]


def test_add_writer_replaces_the_previous_writer(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    got: list[str] = []
    reactor.add_writer(a, got.append, "old")
    reactor.add_writer(a, got.append, "new")
    reactor.run_once(0)
    assert got == ["new"]
    reactor.remove_writer(a)


def test_remove_reader_and_writer_return_whether_they_were_watched(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    assert reactor.remove_reader(a) is False
    assert reactor.remove_writer(a) is False
    reactor.add_reader(a, noop)
    assert reactor.remove_writer(a) is False
    assert reactor.remove_reader(a) is True
    assert reactor.remove_reader(a) is False
    reactor.add_writer(a, noop)
    assert reactor.remove_reader(a) is False
    assert reactor.remove_writer(a) is True
    assert reactor.remove_writer(a) is False


def test_reader_and_writer_on_one_descriptor_are_independent(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    got: list[str] = []
    reactor.add_reader(a, lambda: got.append("read:" + a.recv(16).decode()))
    reactor.add_writer(a, got.append, "write")
    b.send(b"x")
    run_until(reactor, lambda: len(got) >= 2)
    assert sorted(got) == ["read:x", "write"]
    got.clear()
    assert reactor.remove_reader(a) is True
    b.send(b"y")  # a is readable again, but nobody reads it any more
    reactor.run_once(0)
    assert got == ["write"]
    assert reactor.remove_writer(a) is True
    reactor.run_once(0)
    assert got == ["write"]


def test_removing_a_reader_cancels_its_event_queued_in_the_same_tick(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket],
        pair2: tuple[socket.socket, socket.socket]) -> None:
    (a1, b1), (a2, b2) = pair, pair2
    ran: list[str] = []

    def on_b1() -> None:
        ran.append("b1")
        b1.recv(16)
        reactor.remove_reader(b2)

    def on_b2() -> None:
        ran.append("b2")
        b2.recv(16)
        reactor.remove_reader(b1)

    reactor.add_reader(b1, on_b1)
    reactor.add_reader(b2, on_b2)
    a1.send(b"x")
    a2.send(b"x")
    # Both are readable before the tick: both events are queued, whichever
    # runs first removes the other, whose queued event must then not run.
    wait_for(lambda: all(_readable_now(s) for s in (b1, b2)))
    reactor.run_once(0)
    assert len(ran) == 1
    reactor.run_once(0)
    assert len(ran) == 1


def _readable_now(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_replacing_a_reader_cancels_the_old_callback_queued_in_the_same_tick(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket],
        pair2: tuple[socket.socket, socket.socket]) -> None:
    (a1, b1), (a2, b2) = pair, pair2
    ran: list[str] = []

    def on_b1() -> None:
        ran.append("b1")
        b1.recv(16)
        reactor.add_reader(b2, ran.append, "b2-new")

    def on_b2() -> None:
        ran.append("b2-old")
        b2.recv(16)
        reactor.add_reader(b1, ran.append, "b1-new")

    reactor.add_reader(b1, on_b1)
    reactor.add_reader(b2, on_b2)
    a1.send(b"x")
    a2.send(b"x")
    wait_for(lambda: all(_readable_now(s) for s in (b1, b2)))
    reactor.run_once(0)
    assert len(ran) == 1
    assert ran[0] in ("b1", "b2-old")
    reactor.remove_reader(b1)
    reactor.remove_reader(b2)


def test_a_descriptor_closed_and_reused_in_a_tick_gets_none_of_the_old_ones_events(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket],
        pair2: tuple[socket.socket, socket.socket]) -> None:
    (a1, b1), (a2, b2) = pair, pair2
    ran: list[str] = []
    spares: list[socket.socket] = []

    def replace(other: socket.socket) -> None:
        # As a server does: unwatch, close, and a new connection gets the same number.
        number = other.fileno()
        reactor.remove_reader(other)
        other.close()
        fresh, spare = socket.socketpair()
        spares.extend((fresh, spare))
        if fresh.fileno() != number:
            os.dup2(fresh.fileno(), number)
            spares.append(socket.socket(fileno=number))
        reactor.add_reader(number, ran.append, "reused")  # not readable: only a stale event would run it

    def on_b1() -> None:
        ran.append("b1")
        b1.recv(16)
        replace(b2)

    def on_b2() -> None:
        ran.append("b2")
        b2.recv(16)
        replace(b1)

    reactor.add_reader(b1, on_b1)
    reactor.add_reader(b2, on_b2)
    a1.send(b"x")
    a2.send(b"x")
    wait_for(lambda: all(_readable_now(s) for s in (b1, b2)))
    try:
        reactor.run_once(0)
        assert ran in (["b1"], ["b2"])
        reactor.run_once(0)
        assert len(ran) == 1
    finally:
        for sock in (b1, b2, *spares):
            if sock.fileno() >= 0 and reactor.is_watched(sock):
                reactor.remove_reader(sock)
        for sock in spares:
            sock.close()


def test_hosted_server_descriptor_cannot_be_taken_by_readers_or_writers(reactor: Reactor) -> None:
    server = tcp_echo_server(b"srv:")
    reactor.add_server(server)
    fd = server.fileno()
    with pytest.raises(ValueError):
        reactor.add_reader(fd, noop)
    with pytest.raises(ValueError):
        reactor.add_reader(server.socket, noop)
    with pytest.raises(ValueError):
        reactor.add_writer(fd, noop)
    with pytest.raises(ValueError):
        reactor.remove_reader(fd)
    # The refused calls did not disturb the server's registration.
    with socket.create_connection(server.server_address, timeout=5) as client:
        client.sendall(b"still here\n")
        run_until(reactor, lambda: server.threads)
        assert recv_until_eof(client) == b"srv:still here\n"


# ---------------------------------------------------------------- run_once

@pytest.mark.timeout(15)
def test_run_once_zero_polls_and_returns(reactor: Reactor) -> None:
    ran: list[str] = []
    reactor.call_later(3600, ran.append, "far away")
    for _ in range(3):
        reactor.run_once(0)
    assert ran == []


def test_run_once_zero_dispatches_ready_io(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    got: list[bytes] = []
    reactor.add_reader(b, lambda: got.append(b.recv(16)))
    a.send(b"now")
    wait_for(lambda: _readable_now(b))
    reactor.run_once(0)
    assert got == [b"now"]


def test_run_once_reentered_from_a_callback_raises(reactor: Reactor) -> None:
    errors: list[BaseException] = []

    def reenter() -> None:
        try:
            reactor.run_once(0)
        except RuntimeError as exc:
            errors.append(exc)

    reactor.call_soon(reenter)
    reactor.run_once(0)
    assert len(errors) == 1
    reactor.run_once(0)  # still usable afterwards


def test_run_once_from_a_second_thread_raises(reactor: Reactor) -> None:
    thread = threading.Thread(target=reactor.run_once, args=(None,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: blocked_in_select(thread), message="loop thread never blocked")
        with pytest.raises(RuntimeError):
            reactor.run_once(0)
    finally:
        reactor.call_soon_threadsafe(noop)
        thread.join(10)
    assert not thread.is_alive()


def test_call_soon_threadsafe_wakes_a_reactor_blocked_in_run_once(reactor: Reactor) -> None:
    ran_in: list[int] = []
    thread = threading.Thread(target=reactor.run_once, args=(None,), daemon=True)
    thread.start()
    wait_for(lambda: blocked_in_select(thread), message="loop thread never blocked")
    reactor.call_soon_threadsafe(lambda: ran_in.append(threading.get_ident()))
    thread.join(5)
    stuck = thread.is_alive()
    if stuck:  # unblock it so the reactor can be closed
        reactor.stop()
        thread.join(5)
    assert not stuck, "call_soon_threadsafe() did not wake run_once(None)"
    assert ran_in == [thread.ident]


def test_call_soon_threadsafe_args_reach_the_callback(reactor: Reactor) -> None:
    got: list[tuple[object, ...]] = []
    with Serving(reactor):
        reactor.call_soon_threadsafe(lambda *args: got.append(args), "a", 1)
        wait_for(lambda: got)
    assert got == [("a", 1)]


# ---------------------------------------------------------------- stop and serve_forever

@pytest.fixture
def fallback(reactor: Reactor) -> list[str]:
    """A timer that stops the reactor after 5 s, so a broken stop cannot hang the test."""
    fired: list[str] = []

    def expire() -> None:
        fired.append("fallback fired: serve_forever() did not return by itself")
        reactor.stop()

    reactor.call_later(5, expire)
    return fired


def test_stop_from_a_callback_ends_serve_forever(reactor: Reactor, fallback: list[str]) -> None:
    reactor.call_soon(reactor.stop)
    reactor.serve_forever()
    assert fallback == []


def test_stop_from_a_timer_ends_serve_forever(reactor: Reactor, fallback: list[str]) -> None:
    reactor.call_later(0.01, reactor.stop)
    reactor.serve_forever()
    assert fallback == []


def test_stop_before_serve_forever_makes_it_return_at_once(reactor: Reactor, fallback: list[str]) -> None:
    ran: list[str] = []
    reactor.call_later(1, ran.append, "tick")
    reactor.stop()
    reactor.serve_forever()
    assert fallback == []
    assert ran == []


def test_stop_is_idempotent(reactor: Reactor, fallback: list[str]) -> None:
    reactor.stop()
    reactor.stop()
    reactor.serve_forever()
    ran: list[str] = []

    def work_then_stop() -> None:
        ran.append("ran")
        reactor.stop()
        reactor.stop()

    reactor.call_soon(work_then_stop)
    reactor.serve_forever()
    assert ran == ["ran"]
    assert fallback == []


def test_stop_from_another_thread_ends_a_blocked_serve_forever(reactor: Reactor) -> None:
    with Serving(reactor) as serving:
        wait_for(lambda: blocked_in_select(serving.thread), message="serve_forever never blocked")
        reactor.stop()
        assert serving.returned.wait(5), "serve_forever() did not return after stop() from another thread"


def test_stop_from_many_threads_at_once(reactor: Reactor) -> None:
    with Serving(reactor) as serving:
        wait_for(lambda: blocked_in_select(serving.thread))
        barrier = threading.Barrier(8)

        def stop() -> None:
            barrier.wait(5)
            reactor.stop()

        stoppers = [threading.Thread(target=stop) for _ in range(8)]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(5)
        assert serving.returned.wait(5)


def test_serve_forever_can_run_again_after_stop(reactor: Reactor, fallback: list[str]) -> None:
    reactor.call_soon(reactor.stop)
    reactor.serve_forever()
    ran: list[str] = []

    def second_run() -> None:
        ran.append("second run")
        reactor.stop()

    reactor.call_soon(second_run)
    reactor.serve_forever()
    assert ran == ["second run"]
    assert fallback == []


def test_serve_forever_can_run_again_in_another_thread(reactor: Reactor) -> None:
    for _ in range(2):
        ran = threading.Event()
        with Serving(reactor) as serving:
            reactor.call_soon_threadsafe(ran.set)
            assert ran.wait(5)
            reactor.stop()
            assert serving.returned.wait(5)


def test_stopping_is_true_from_stop_until_serve_forever_returns(reactor: Reactor, fallback: list[str]) -> None:
    assert reactor.stopping is False
    seen: list[bool] = []

    def stop_and_look() -> None:
        seen.append(reactor.stopping)
        reactor.stop()
        seen.append(reactor.stopping)

    reactor.call_soon(stop_and_look)
    reactor.serve_forever()
    assert seen == [False, True]
    assert reactor.stopping is False
    reactor.stop()
    assert reactor.stopping is True
    reactor.serve_forever()
    assert reactor.stopping is False


# ---------------------------------------------------------------- errors in callbacks

def test_callback_exception_is_logged_and_the_loop_goes_on(
        reactor: Reactor, caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise ZeroDivisionError("callback bug")

    caplog.set_level(logging.ERROR, logger="reactor")
    reactor.call_soon(broken)
    reactor.call_soon(ran.append, "after")
    reactor.run_once(0)
    assert ran == ["after"]
    logged = [r for r in caplog.records
              if r.exc_info is not None and r.exc_info[0] is ZeroDivisionError]
    assert len(logged) == 1
    assert logged[0].levelno >= logging.ERROR
    reactor.call_soon(ran.append, "next tick")
    reactor.run_once(0)
    assert ran == ["after", "next tick"]


def test_reader_exception_is_logged_and_the_loop_goes_on(
        reactor: Reactor, pair: tuple[socket.socket, socket.socket],
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = pair
    reads: list[bytes] = []

    def broken_reader() -> None:
        reads.append(b.recv(16))
        raise ValueError("reader bug")

    caplog.set_level(logging.ERROR, logger="reactor")
    reactor.add_reader(b, broken_reader)
    a.send(b"1")
    run_until(reactor, lambda: reads)
    a.send(b"2")
    run_until(reactor, lambda: len(reads) == 2)
    assert reads == [b"1", b"2"]
    assert sum(1 for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError) == 2


def test_keyboard_interrupt_in_a_callback_propagates_out_of_run_once(reactor: Reactor) -> None:
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    reactor.call_soon(interrupt)
    reactor.call_soon(ran.append, "queued behind it")
    with pytest.raises(KeyboardInterrupt):
        reactor.run_once(0)
    # The reactor is not left "running", and the rest of the tick is not lost.
    reactor.run_once(0)
    assert ran == ["queued behind it"]


def test_system_exit_in_a_callback_propagates_out_of_serve_forever(reactor: Reactor) -> None:
    def exit_now() -> None:
        raise SystemExit(3)

    reactor.call_soon(exit_now)
    with pytest.raises(SystemExit):
        reactor.serve_forever()
    assert reactor.stopping is False


# ---------------------------------------------------------------- close

def test_closed_reactor_refuses_work(selector_class: SelectorFactory) -> None:
    reactor = Reactor(selector=selector_class())
    reactor.close()
    assert reactor.closed
    with pytest.raises(RuntimeError):
        reactor.run_once(0)
    with pytest.raises(RuntimeError):
        reactor.serve_forever()
    with pytest.raises(RuntimeError):
        reactor.call_later(1, noop)
    with pytest.raises(RuntimeError):
        reactor.call_at(1, noop)
    with pytest.raises(RuntimeError):
        reactor.call_soon(noop)
    with pytest.raises(RuntimeError):
        reactor.call_soon_threadsafe(noop)
    a, b = socket.socketpair()
    try:
        with pytest.raises(RuntimeError):
            reactor.add_reader(a, noop)
        with pytest.raises(RuntimeError):
            reactor.add_writer(a, noop)
        assert reactor.remove_reader(a) is False
    finally:
        a.close()
        b.close()
    server = tcp_echo_server()
    try:
        with pytest.raises(RuntimeError):
            reactor.add_server(server)
    finally:
        server.server_close()
    reactor.stop()  # harmless


def test_close_is_idempotent(selector_class: SelectorFactory) -> None:
    reactor = Reactor(selector=selector_class())
    reactor.close()
    reactor.close()
    assert reactor.closed


def test_close_releases_every_descriptor(selector_class: SelectorFactory) -> None:
    before = take_snapshot().fds
    reactor = Reactor(selector=selector_class())
    reactor.call_later(10, noop)
    assert take_snapshot().fds - before  # at least the waker's socketpair
    reactor.close()
    assert take_snapshot().fds - before == frozenset()


def test_close_from_a_callback_raises(reactor: Reactor) -> None:
    errors: list[BaseException] = []

    def close_now() -> None:
        try:
            reactor.close()
        except RuntimeError as exc:
            errors.append(exc)

    reactor.call_soon(close_now)
    reactor.run_once(0)
    assert len(errors) == 1
    assert not reactor.closed
    reactor.run_once(0)


def test_close_from_another_thread_while_serving_raises(reactor: Reactor) -> None:
    with Serving(reactor) as serving:
        wait_for(lambda: blocked_in_select(serving.thread))
        with pytest.raises(RuntimeError):
            reactor.close()
        assert not reactor.closed


def _unix_stream_server(unix_dir: str) -> Any:
    return tcp_echo_server(address=os.path.join(unix_dir, "s.sock"), cls=rsocketserver.UnixStreamServer)


SERVER_FACTORIES: dict[str, Callable[[str], Any]] = {
    "reactor-tcp": lambda _: tcp_echo_server(),
    "reactor-udp": lambda _: tagged(rsocketserver.UDPServer(("127.0.0.1", 0), DatagramEchoHandler), b""),
    "reactor-unix": _unix_stream_server,
    "stdlib-tcp": lambda _: tcp_echo_server(cls=std_socketserver.TCPServer),
}


@pytest.mark.parametrize("kind", SERVER_FACTORIES)
def test_close_calls_server_close_on_hosted_servers(
        selector_class: SelectorFactory, kind: str, unix_dir: str) -> None:
    server = SERVER_FACTORIES[kind](unix_dir)
    closed: list[bool] = []
    original = server.server_close

    def server_close() -> None:
        closed.append(True)
        original()

    server.server_close = server_close
    reactor = Reactor(selector=selector_class())
    try:
        reactor.add_server(server)
    finally:
        reactor.close()
    assert closed == [True]
    assert server.socket.fileno() == -1
    if kind == "reactor-unix":
        assert not os.path.exists(server.server_address)


@pytest.mark.parametrize("timeout", [None, 2.5], ids=["blocking", "timeout"])
@pytest.mark.parametrize("cls", [rsocketserver.TCPServer, std_socketserver.TCPServer],
                         ids=["reactor-tcp", "stdlib-tcp"])
def test_remove_server_hands_it_back_open_with_its_mode_restored(
        reactor: Reactor, cls: type, timeout: float | None) -> None:
    server = tcp_echo_server(b"back:", cls=cls)
    try:
        server.socket.settimeout(timeout)
        reactor.add_server(server)
        assert server.socket.getblocking() is False
        assert reactor.servers == [server]
        reactor.remove_server(server)
        assert reactor.servers == []
        assert server.socket.fileno() >= 0
        assert server.socket.gettimeout() == timeout
        # Handed back in working order: it can serve on its own.
        with socket.create_connection(server.server_address, timeout=5) as client:
            client.sendall(b"alone\n")
            server.handle_request()
            assert recv_until_eof(client) == b"back:alone\n"
    finally:
        server.server_close()


def test_removed_server_is_not_closed_by_close(selector_class: SelectorFactory) -> None:
    server = tcp_echo_server()
    try:
        with Reactor(selector=selector_class()) as reactor:
            reactor.add_server(server)
            reactor.remove_server(server)
        assert server.socket.fileno() >= 0
    finally:
        server.server_close()


def test_add_server_twice_raises_value_error(reactor: Reactor) -> None:
    server = tcp_echo_server()
    reactor.add_server(server)
    with pytest.raises(ValueError):
        reactor.add_server(server)
    assert reactor.servers == [server]


def test_add_server_whose_descriptor_is_watched_raises_value_error(reactor: Reactor) -> None:
    server = tcp_echo_server()
    try:
        reactor.add_reader(server.fileno(), noop)
        with pytest.raises(ValueError):
            reactor.add_server(server)
        assert reactor.servers == []
        reactor.remove_reader(server.fileno())
    finally:
        server.server_close()


def test_remove_unknown_server_raises_key_error(reactor: Reactor) -> None:
    server = tcp_echo_server()
    try:
        with pytest.raises(KeyError):
            reactor.remove_server(server)
        reactor.add_server(server)
        reactor.remove_server(server)
        with pytest.raises(KeyError):
            reactor.remove_server(server)
    finally:
        server.server_close()


def test_reactor_is_a_context_manager(selector_class: SelectorFactory) -> None:
    server = tcp_echo_server()
    with Reactor(selector=selector_class()) as reactor:
        assert isinstance(reactor, Reactor)
        reactor.add_server(server)
        assert not reactor.closed
    assert reactor.closed
    assert server.socket.fileno() == -1


def test_context_manager_closes_on_error(selector_class: SelectorFactory) -> None:
    with pytest.raises(ZeroDivisionError):
        with Reactor(selector=selector_class()) as reactor:
            raise ZeroDivisionError
    assert reactor.closed


# ---------------------------------------------------------------- time_until_next

def test_time_until_next_is_none_without_timers(reactor: Reactor) -> None:
    assert reactor.time_until_next() is None


def test_time_until_next_is_the_delay_to_the_nearest_timer(fake_reactor: Reactor, clock: FakeClock) -> None:
    fake_reactor.call_later(7, noop)
    fake_reactor.call_later(2.5, noop)
    assert fake_reactor.time_until_next() == 2.5
    clock.advance(1)
    assert fake_reactor.time_until_next() == 1.5
    clock.advance(10)
    assert fake_reactor.time_until_next() == 0.0


def test_time_until_next_with_the_real_clock(reactor: Reactor) -> None:
    reactor.call_later(30, noop)
    remaining = reactor.time_until_next()
    assert remaining is not None
    assert 0 < remaining <= 30


def test_time_until_next_ignores_cancelled_timers(fake_reactor: Reactor) -> None:
    fake_reactor.call_later(1, noop).cancel()
    assert fake_reactor.time_until_next() is None
    fake_reactor.call_later(3, noop)
    fake_reactor.call_later(1, noop).cancel()
    assert fake_reactor.time_until_next() == 3


def test_time_until_next_is_zero_with_queued_callbacks(fake_reactor: Reactor) -> None:
    fake_reactor.call_later(100, noop)
    fake_reactor.call_soon(noop)
    assert fake_reactor.time_until_next() == 0
    fake_reactor.run_once(0)
    assert fake_reactor.time_until_next() == 100


# ---------------------------------------------------------------- many servers, many reactors

def test_many_servers_in_one_reactor_in_one_thread_all_answer(reactor: Reactor, unix_dir: str) -> None:
    servers: list[tuple[Any, int, int, Any]] = []  # (server, family, type, client bind address)
    hosts = [("127.0.0.1", socket.AF_INET)]
    if ipv6_available():
        hosts.append(("::1", socket.AF_INET6))
    for host, family in hosts:
        for i in range(10):
            tcp = tcp_echo_server(f"tcp-{host}-{i}:".encode(), (host, 0))
            udp = tagged(rsocketserver.UDPServer((host, 0), DatagramEchoHandler), f"udp-{host}-{i}:".encode())
            servers += [(tcp, family, socket.SOCK_STREAM, None), (udp, family, socket.SOCK_DGRAM, None)]
    unix_stream = tcp_echo_server(b"unix:", os.path.join(unix_dir, "stream"), rsocketserver.UnixStreamServer)
    unix_dgram = tagged(rsocketserver.UnixDatagramServer(os.path.join(unix_dir, "dgram"), DatagramEchoHandler),
                        b"unix-dgram:")
    servers += [(unix_stream, socket.AF_UNIX, socket.SOCK_STREAM, None),
                (unix_dgram, socket.AF_UNIX, socket.SOCK_DGRAM, os.path.join(unix_dir, "client"))]
    for server, *_ in servers:
        reactor.add_server(server)
    assert len(reactor.servers) == len(servers)
    with Serving(reactor) as serving:
        for server, family, sock_type, bind in servers:
            if sock_type == socket.SOCK_STREAM:
                reply = stream_request(family, server.server_address, b"hi\n")
                assert reply == server.tag + b"hi\n"
            else:
                reply = datagram_request(family, server.server_address, b"hi", bind)
                assert reply == server.tag + b"hi"
    assert {ident for server, *_ in servers for ident in server.threads} == {serving.thread.ident}


def test_two_reactors_in_two_threads_serve_independently(selector_class: SelectorFactory) -> None:
    gate = threading.Event()
    entered = threading.Event()

    class GatedEchoHandler(EchoHandler):
        def handle(self) -> None:
            if self.server.gated:  # type: ignore[attr-defined]
                entered.set()
                gate.wait(10)
            super().handle()

    first = tagged(rsocketserver.TCPServer(("127.0.0.1", 0), GatedEchoHandler), b"one:")
    second = tagged(rsocketserver.TCPServer(("127.0.0.1", 0), GatedEchoHandler), b"two:")
    first.gated, second.gated = True, False
    with Reactor(selector=selector_class()) as r1, Reactor(selector=selector_class()) as r2:
        r1.add_server(first)
        r2.add_server(second)
        with Serving(r1) as serving1, Serving(r2) as serving2:
            with socket.create_connection(first.server_address, timeout=5) as slow:
                slow.sendall(b"slow\n")
                try:
                    assert entered.wait(5)
                    # r1's thread is stuck in a handler; r2 does not care.
                    assert stream_request(socket.AF_INET, second.server_address) == b"two:ping\n"
                finally:
                    gate.set()
                assert recv_until_eof(slow) == b"one:slow\n"
            first.gated = False
            r1.stop()
            assert serving1.returned.wait(5)
            assert not serving2.returned.is_set()
            assert stream_request(socket.AF_INET, second.server_address, b"alone\n") == b"two:alone\n"
        assert first.threads == {serving1.thread.ident}
        assert second.threads == {serving2.thread.ident}


class _BurstHandler(std_socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.served += 1  # type: ignore[attr-defined]
        self.request.sendall(b"ok")


class _BurstServer(rsocketserver.TCPServer):
    request_queue_size = 512
    served = 0


def test_a_burst_larger_than_one_accept_batch_is_served_over_several_ticks(reactor: Reactor) -> None:
    burst = 2 * DEFAULT_ACCEPT_BATCH + 22
    server = _BurstServer(("127.0.0.1", 0), _BurstHandler)
    reactor.add_server(server)
    clients: list[socket.socket] = []
    try:
        for _ in range(burst):
            clients.append(socket.create_connection(server.server_address, timeout=5))
        # Every connection is now in the kernel backlog.
        reactor.run_once(0)
        assert server.served == DEFAULT_ACCEPT_BATCH
        ticks = 1 + run_until(reactor, lambda: server.served == burst)
        assert ticks >= 3
        for client in clients:
            assert recv_until_eof(client) == b"ok"
    finally:
        for client in clients:
            client.close()
