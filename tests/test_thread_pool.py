"""The ThreadPool dispatch strategy (reactor/dispatch.py).

Covers, over TCP (v4/v6), UDP (v4/v6), Unix stream and Unix datagram where
it means something: round trips through a Reactor and through the compat
``serve_forever()``; the bound on worker threads and their reuse; backpressure
(a full pool takes the listener out of the selector, so clients wait in the
kernel backlog or the socket buffer); saturation by a few hundred clients;
handler semantics identical to Inline; graceful stop (``Reactor.stop``,
``shutdown()``, ``close()``) and ``drain_timeout``; one pool per server;
argument checks; a pool beside an Inline server.

Everything is observed from the outside (``pool.stats()``, thread names,
replies, what the listener still has pending); the only hook into the pool is
``DrainWatchedPool``, a subclass that says when ``unbind`` starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import os
import select
import socket
import socketserver as std_socketserver
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from reactor import Inline, Reactor, ThreadPool
from reactor import socketserver as rx_socketserver
from reactor._platform import available_selectors
from support import ipv6_available, wait_for

SELECTORS = available_selectors()
SELECTOR_IDS = [cls.__name__ for cls in SELECTORS]
JOIN_TIMEOUT = 10
#: Longest a test handler blocks on a gate; gates are always released before that.
GATE_TIMEOUT = 20

_names = itertools.count()


# ---------------------------------------------------------------- families

class StdTCP6Server(std_socketserver.TCPServer):
    address_family = socket.AF_INET6


class StdUDP6Server(std_socketserver.UDPServer):
    address_family = socket.AF_INET6


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    stream: bool
    host: str | None  # None: a Unix socket path

    @property
    def needs_ipv6(self) -> bool:
        return self.host == "::1"

    def address(self, unix_dir: str) -> Any:
        if self.host is None:
            return os.path.join(unix_dir, f"s{next(_names)}.sock")
        return (self.host, 0)

    def compat_class(self) -> type:
        if self.host is None:
            return rx_socketserver.UnixStreamServer if self.stream else rx_socketserver.UnixDatagramServer
        return rx_socketserver.TCPServer if self.stream else rx_socketserver.UDPServer

    def stdlib_class(self) -> type:
        if self.host is None:
            return std_socketserver.UnixStreamServer if self.stream else std_socketserver.UnixDatagramServer
        if self.needs_ipv6:
            return StdTCP6Server if self.stream else StdUDP6Server
        return std_socketserver.TCPServer if self.stream else std_socketserver.UDPServer


FAMILIES = [
    Family("tcp4", stream=True, host="127.0.0.1"),
    Family("tcp6", stream=True, host="::1"),
    Family("udp4", stream=False, host="127.0.0.1"),
    Family("udp6", stream=False, host="::1"),
    Family("unix_stream", stream=True, host=None),
    Family("unix_dgram", stream=False, host=None),
]
FAMILY_IDS = [family.name for family in FAMILIES]
STREAM_FAMILIES = [family for family in FAMILIES if family.stream]
STREAM_FAMILY_IDS = [family.name for family in STREAM_FAMILIES]


# ---------------------------------------------------------------- servers and handlers

def read_line(sock: socket.socket) -> bytes:
    """Read up to and including a newline; b"" (or what came) on EOF or reset."""
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def echo(payload: bytes) -> bytes:
    return payload


class Handler(std_socketserver.BaseRequestHandler):
    """Takes one request (a line, or a datagram) and replies ``server.on_request(payload)``."""

    def handle(self) -> None:
        if isinstance(self.request, tuple):
            payload, sock = self.request
            sock.sendto(self.server.on_request(payload), self.client_address)
        else:
            self.request.settimeout(GATE_TIMEOUT)  # a lost client must not pin a worker forever
            payload = read_line(self.request).rstrip(b"\n")
            self.request.sendall(self.server.on_request(payload) + b"\n")


class RecordingHandler(Handler):
    def setup(self) -> None:
        self.server.record("setup")
        super().setup()

    def handle(self) -> None:
        self.server.record("handle")
        super().handle()

    def finish(self) -> None:
        self.server.record("finish")
        super().finish()


class RecordingServerMixin:
    """Records every request hook as ``(hook, thread name)`` in ``self.hooks``."""

    hooks: list[tuple[str, str]]
    reject: bool = False

    def record(self, hook: str) -> None:
        self.hooks.append((hook, threading.current_thread().name))

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.record("verify_request")
        return not self.reject

    def process_request(self, request: Any, client_address: Any) -> None:
        self.record("process_request")
        super().process_request(request, client_address)  # type: ignore[misc]

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.record("finish_request")
        super().finish_request(request, client_address)  # type: ignore[misc]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.record("handle_error")  # and no traceback on stderr

    def shutdown_request(self, request: Any) -> None:
        self.record("shutdown_request")
        super().shutdown_request(request)  # type: ignore[misc]

    def close_request(self, request: Any) -> None:
        self.record("close_request")
        super().close_request(request)  # type: ignore[misc]


def make_server(family: Family, unix_dir: str, *, stdlib: bool = False, dispatch: Any = None,
                queue_size: int | None = None, mixins: tuple[type, ...] = (),
                handler: type = Handler, **attrs: Any) -> Any:
    """A server of ``family`` answering with ``server.on_request`` (echo by default).

    ``stdlib`` picks the unmodified stdlib class (only hostable in a Reactor),
    otherwise reactor's compat class (which takes ``dispatch``).
    """
    if family.needs_ipv6 and not ipv6_available():
        pytest.skip("IPv6 loopback not available")
    base = family.stdlib_class() if stdlib else family.compat_class()
    if queue_size is not None:
        attrs["request_queue_size"] = queue_size
    cls = type(f"{base.__name__}UnderTest", (*mixins, base), attrs) if (mixins or attrs) else base
    kwargs = {} if stdlib else {"dispatch": dispatch}
    server = cls(family.address(unix_dir), handler, **kwargs)
    server.on_request = echo
    server.hooks = []
    return server


class Client:
    """One client of a server of any family; a datagram client binds so it can be answered."""

    def __init__(self, server: Any, unix_dir: str) -> None:
        kind = socket.SOCK_STREAM if server.socket_type == socket.SOCK_STREAM else socket.SOCK_DGRAM
        self.stream = kind == socket.SOCK_STREAM
        self.sock = socket.socket(server.address_family, kind)
        try:
            self.sock.settimeout(JOIN_TIMEOUT)
            if not self.stream and server.address_family == socket.AF_UNIX:
                self.sock.bind(os.path.join(unix_dir, f"c{next(_names)}.sock"))
            self.sock.connect(server.server_address)
        except BaseException:
            self.sock.close()
            raise

    def send(self, payload: bytes) -> None:
        if self.stream:
            self.sock.sendall(payload + b"\n")
        else:
            self.sock.send(payload)

    def reply(self) -> bytes:
        """The answer, without the newline; b"" when a stream connection ends unanswered."""
        if self.stream:
            return read_line(self.sock).rstrip(b"\n")
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def request(server: Any, unix_dir: str, payload: bytes) -> bytes:
    with Client(server, unix_dir) as client:
        client.send(payload)
        return client.reply()


def open_clients(stack: contextlib.ExitStack, server: Any, unix_dir: str, count: int,
                 prefix: bytes = b"req") -> list[tuple[Client, bytes]]:
    """``count`` clients that have each sent one request; returns (client, payload) pairs."""
    sent = []
    for i in range(count):
        client = stack.enter_context(Client(server, unix_dir))
        payload = b"%s%d" % (prefix, i)
        client.send(payload)
        sent.append((client, payload))
    return sent


# ---------------------------------------------------------------- pools and observation

def pool_name() -> str:
    return f"tp{next(_names)}"


def pool_threads(name: str) -> list[threading.Thread]:
    """Live threads of the pool whose ``name=`` is ``name``."""
    return [t for t in threading.enumerate() if t.name.startswith(f"{name}-worker-")]


def in_flight(pool: ThreadPool) -> int:
    stats = pool.stats()
    return stats["running"] + stats["queued"]


def has_pending(server: Any) -> bool:
    """True when the listening socket has a connection or datagram nobody took yet."""
    readable, _, _ = select.select([server.fileno()], [], [], 0)
    return bool(readable)


def reactor_has_io(r: Reactor) -> bool | None:
    """Whether the reactor's own descriptor is readable; None for selectors without one."""
    try:
        fd = r.fileno()
    except io.UnsupportedOperation:
        return None
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def waiting_on(gate: threading.Event, reply: Callable[[bytes], bytes] = echo) -> Callable[[bytes], bytes]:
    """An ``on_request`` that blocks until ``gate`` is set, then answers ``reply(payload)``."""
    def on_request(payload: bytes) -> bytes:
        assert gate.wait(GATE_TIMEOUT), "test gate never released"
        return reply(payload)

    return on_request


class DrainWatchedPool(ThreadPool):
    """A ThreadPool that tells (``draining``) when its server is being removed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = threading.Event()

    def begin_drain(self, hosted: Any, on_drained: Any) -> float:
        self.draining.set()
        return super().begin_drain(hosted, on_drained)


# ---------------------------------------------------------------- running things

@pytest.fixture
def reactor_() -> Iterator[Reactor]:
    r = Reactor()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(params=SELECTORS, ids=SELECTOR_IDS)
def selector_reactor(request: pytest.FixtureRequest) -> Iterator[Reactor]:
    r = Reactor(selector=request.param())
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def serving(r: Reactor) -> Iterator[threading.Thread]:
    """``r.serve_forever()`` in a thread for the duration of the block."""
    thread = threading.Thread(target=r.serve_forever, name="reactor-under-test")
    thread.start()
    try:
        yield thread
    finally:
        r.stop()
        thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "Reactor.serve_forever() did not return after stop()"


@contextlib.contextmanager
def running(server: Any, poll_interval: float = 0.5) -> Iterator[threading.Thread]:
    """A compat server's ``serve_forever()`` in a thread; shut down and closed afterwards."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, name="serve-forever-under-test")
    thread.start()
    try:
        yield thread
    finally:
        server.shutdown()
        thread.join(JOIN_TIMEOUT)
        server.server_close()
    assert not thread.is_alive(), "serve_forever() did not return after shutdown()"
    assert errors == []


@contextlib.contextmanager
def releasing(*gates: threading.Event) -> Iterator[None]:
    """Set ``gates`` when the block ends, however it ends, so no handler stays blocked."""
    try:
        yield
    finally:
        for gate in gates:
            gate.set()


def tick_until(r: Reactor, predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Run ``r``'s ticks in this thread until ``predicate()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met while ticking the reactor"
        r.run_once(0.05)


def call_in_thread(function: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=function, name=name)
    thread.start()
    return thread


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_reactor_round_trips_run_in_pool_worker_threads(
        family: Family, selector_reactor: Reactor, unix_dir: str) -> None:
    server = make_server(family, unix_dir, stdlib=True)
    threads: list[threading.Thread] = []
    server.on_request = lambda payload: (threads.append(threading.current_thread()), payload)[1]
    selector_reactor.add_server(server, ThreadPool(4))
    with serving(selector_reactor) as reactor_thread:
        for i in range(5):
            payload = f"{family.name} {i}".encode()
            assert request(server, unix_dir, payload) == payload
    assert len(threads) == 5
    assert all("worker" in t.name for t in threads), [t.name for t in threads]
    assert reactor_thread not in threads
    assert threading.main_thread() not in threads


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_compat_serve_forever_round_trips_run_in_pool_worker_threads(family: Family, unix_dir: str) -> None:
    pool = ThreadPool(4)
    server = make_server(family, unix_dir, dispatch=pool)
    threads: list[threading.Thread] = []
    server.on_request = lambda payload: (threads.append(threading.current_thread()), payload)[1]
    with running(server) as serving_thread:
        for i in range(5):
            payload = f"{family.name} {i}".encode()
            assert request(server, unix_dir, payload) == payload
    assert len(threads) == 5
    assert all("worker" in t.name for t in threads), [t.name for t in threads]
    assert serving_thread not in threads


def test_default_worker_names_name_the_server(reactor_: Reactor, unix_dir: str) -> None:
    server = make_server(FAMILIES[0], unix_dir)
    names: list[str] = []
    server.on_request = lambda payload: (names.append(threading.current_thread().name), payload)[1]
    reactor_.add_server(server, ThreadPool(2))
    with serving(reactor_):
        assert request(server, unix_dir, b"name") == b"name"
    [name] = names
    assert type(server).__name__ in name and str(server.server_address[1]) in name
    assert "-worker-" in name


# ---------------------------------------------------------------- thread bound and reuse

def test_workers_start_only_as_load_needs_them(reactor_: Reactor, unix_dir: str) -> None:
    name = pool_name()
    pool = ThreadPool(4, name=name)
    server = make_server(FAMILIES[0], unix_dir)
    reactor_.add_server(server, pool)
    assert pool.stats()["threads"] == 0
    assert pool_threads(name) == []
    with serving(reactor_):
        assert request(server, unix_dir, b"one") == b"one"
        wait_for(lambda: pool.stats()["idle"] == 1, message=lambda: f"worker not idle: {pool.stats()}")
        assert pool.stats()["threads"] == 1
        assert len(pool_threads(name)) == 1


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_sequential_requests_reuse_at_most_max_workers_threads(
        family: Family, reactor_: Reactor, unix_dir: str) -> None:
    name = pool_name()
    pool = ThreadPool(3, name=name)
    server = make_server(family, unix_dir)
    idents: set[int] = set()
    server.on_request = lambda payload: (idents.add(threading.get_ident()), payload)[1]
    reactor_.add_server(server, pool)
    with serving(reactor_):
        for i in range(200):
            assert request(server, unix_dir, b"%d" % i) == b"%d" % i
        assert pool.stats()["threads"] <= 3
        assert len(pool_threads(name)) <= 3
    assert 1 <= len(idents) <= 3
    wait_for(lambda: pool.stats()["done"] == 200)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_concurrent_slow_clients_never_get_more_than_max_workers_threads(
        family: Family, reactor_: Reactor, unix_dir: str) -> None:
    name = pool_name()
    pool = ThreadPool(3, name=name)  # max_pending defaults to 3: 6 in flight at most
    gate = threading.Event()
    server = make_server(family, unix_dir, queue_size=64)
    thread_counts: list[int] = []

    def on_request(payload: bytes) -> bytes:
        thread_counts.append(len(pool_threads(name)))
        assert gate.wait(GATE_TIMEOUT)
        return payload

    server.on_request = on_request
    reactor_.add_server(server, pool)
    with serving(reactor_), contextlib.ExitStack() as stack, releasing(gate):
        clients = [stack.enter_context(Client(server, unix_dir)) for _ in range(30)]
        # Sent from a thread: a Unix datagram sender blocks once the server's
        # queue (net.unix.max_dgram_qlen, often 10) is full, as it should.
        sender = call_in_thread(lambda: [c.send(b"req%d" % i) for i, c in enumerate(clients)], "sender")
        stack.callback(sender.join, JOIN_TIMEOUT)  # before the clients close
        wait_for(lambda: pool.stats()["running"] == 3 and pool.stats()["queued"] == 3,
                 message=lambda: f"pool never filled: {pool.stats()}")
        assert len(pool_threads(name)) == 3
        assert pool.stats()["threads"] == 3
        gate.set()
        sender.join(JOIN_TIMEOUT)
        assert not sender.is_alive()
        for i, client in enumerate(clients):
            assert client.reply() == b"req%d" % i
        assert len(pool_threads(name)) <= 3
    assert len(thread_counts) == 30
    assert max(thread_counts) <= 3


# ---------------------------------------------------------------- backpressure

@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_full_pool_stops_taking_requests_until_a_worker_frees(
        family: Family, selector_reactor: Reactor, unix_dir: str) -> None:
    r = selector_reactor
    pool = ThreadPool(2, max_pending=1)
    gate = threading.Event()
    server = make_server(family, unix_dir, queue_size=256)
    server.on_request = waiting_on(gate)
    r.add_server(server, pool)
    with contextlib.ExitStack() as stack, releasing(gate):
        sent = open_clients(stack, server, unix_dir, 10)
        tick_until(r, lambda: in_flight(pool) == 3)
        seen = []
        for _ in range(6):
            r.run_once(0.05)
            seen.append(in_flight(pool))
        assert seen == [3] * 6
        stats = pool.stats()
        assert (stats["running"], stats["queued"], stats["done"]) == (2, 1, 0)
        assert has_pending(server), "the other clients should still wait in the kernel"
        # The listener left the selector: with the epoll selector the reactor's own
        # descriptor stays quiet although the listener is readable.
        assert reactor_has_io(r) in (None, False)
        gate.set()
        tick_until(r, lambda: pool.stats()["done"] == 10)
        for client, payload in sent:
            assert client.reply() == payload
    assert not has_pending(server)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_full_pool_stops_taking_requests_under_compat_serve_forever(family: Family, unix_dir: str) -> None:
    pool = ThreadPool(2, max_pending=1)
    gate = threading.Event()
    ticks = [0]
    most_in_flight = [0]

    class Counting:
        def service_actions(self) -> None:  # runs in the serving thread, once per poll_interval
            ticks[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight(pool))

    server = make_server(family, unix_dir, dispatch=pool, queue_size=256, mixins=(Counting,))
    server.on_request = waiting_on(gate)
    with running(server, poll_interval=0.02), contextlib.ExitStack() as stack, releasing(gate):
        sent = open_clients(stack, server, unix_dir, 10)
        wait_for(lambda: in_flight(pool) == 3, message=lambda: f"pool never filled: {pool.stats()}")
        ticks_then = ticks[0]

        def several_ticks_with_a_full_pool() -> bool:
            assert in_flight(pool) <= 3, pool.stats()
            return ticks[0] >= ticks_then + 5

        wait_for(several_ticks_with_a_full_pool, message="serve_forever made no progress")
        stats = pool.stats()
        assert (stats["running"], stats["queued"], stats["done"]) == (2, 1, 0)
        assert has_pending(server), "the other clients should still wait in the kernel"
        gate.set()
        for client, payload in sent:
            assert client.reply() == payload
    assert most_in_flight[0] <= 3


@pytest.mark.parametrize("family", STREAM_FAMILIES, ids=STREAM_FAMILY_IDS)
def test_max_pending_zero_takes_only_as_many_requests_as_workers(
        family: Family, reactor_: Reactor, unix_dir: str) -> None:
    pool = ThreadPool(2, max_pending=0)
    gate = threading.Event()
    server = make_server(family, unix_dir, queue_size=64)
    server.on_request = waiting_on(gate)
    reactor_.add_server(server, pool)
    with contextlib.ExitStack() as stack, releasing(gate):
        sent = open_clients(stack, server, unix_dir, 5)
        tick_until(reactor_, lambda: pool.stats()["running"] == 2)
        for _ in range(4):
            reactor_.run_once(0.05)
            assert (pool.stats()["running"], pool.stats()["queued"]) == (2, 0)
        gate.set()
        tick_until(reactor_, lambda: pool.stats()["done"] == 5)
        assert [client.reply() for client, _ in sent] == [payload for _, payload in sent]


# ---------------------------------------------------------------- saturation at scale

def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.linux
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", STREAM_FAMILIES, ids=STREAM_FAMILY_IDS)
def test_hundreds_of_clients_are_all_served_by_eight_threads_in_flat_memory(
        family: Family, reactor_: Reactor, unix_dir: str) -> None:
    clients_per_round = 300
    name = pool_name()
    pool = ThreadPool(max_workers=8, name=name)
    server = make_server(family, unix_dir, queue_size=1024)
    phase = {"gate": threading.Event()}
    thread_counts: list[int] = []
    in_flight_seen: list[int] = []

    def on_request(payload: bytes) -> bytes:
        thread_counts.append(len(pool_threads(name)))
        in_flight_seen.append(in_flight(pool))
        assert phase["gate"].wait(GATE_TIMEOUT)
        return payload

    server.on_request = on_request
    reactor_.add_server(server, pool)
    with serving(reactor_):
        rss_before = rss_bytes()
        for round_ in range(2):
            gate = phase["gate"] = threading.Event()
            with contextlib.ExitStack() as stack, releasing(gate):
                sent = open_clients(stack, server, unix_dir, clients_per_round, prefix=b"r%d-" % round_)
                wait_for(lambda: in_flight(pool) == 16, message=lambda: f"pool never filled: {pool.stats()}")
                assert has_pending(server)
                assert len(pool_threads(name)) == 8
                gate.set()
                for client, payload in sent:
                    assert client.reply() == payload
        rss_after = rss_bytes()
    wait_for(lambda: pool.stats()["done"] == 2 * clients_per_round, message=lambda: str(pool.stats()))
    assert len(thread_counts) == 2 * clients_per_round
    assert max(thread_counts) <= 8
    assert max(in_flight_seen) <= 16
    growth = rss_after - rss_before
    assert growth < 20 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB over two rounds"


# ---------------------------------------------------------------- handler semantics

STRATEGIES = {"inline": lambda: Inline(), "thread_pool": lambda: ThreadPool(2, name=pool_name())}

HOOKS_OF_ONE_REQUEST = ["verify_request", "process_request", "finish_request", "setup", "handle",
                        "finish", "shutdown_request", "close_request"]


def assert_threads_of(strategy: str, hooks: list[tuple[str, str]], reactor_thread: threading.Thread) -> None:
    threads = {thread for _, thread in hooks}
    if strategy == "inline":
        assert threads == {reactor_thread.name}
    else:
        assert len(threads) == 1, hooks  # one worker runs every hook of a request
        assert "-worker-" in threads.pop()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_hooks_run_in_the_same_order_as_inline(
        family: Family, strategy: str, reactor_: Reactor, unix_dir: str) -> None:
    server = make_server(family, unix_dir, mixins=(RecordingServerMixin,), handler=RecordingHandler)
    reactor_.add_server(server, STRATEGIES[strategy]())
    with serving(reactor_) as reactor_thread:
        assert request(server, unix_dir, b"order") == b"order"
        wait_for(lambda: len(server.hooks) == len(HOOKS_OF_ONE_REQUEST), message=lambda: str(server.hooks))
    assert [hook for hook, _ in server.hooks] == HOOKS_OF_ONE_REQUEST
    assert_threads_of(strategy, server.hooks, reactor_thread)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_handler_error_goes_to_handle_error_and_the_server_keeps_serving(
        family: Family, strategy: str, reactor_: Reactor, unix_dir: str) -> None:
    server = make_server(family, unix_dir, mixins=(RecordingServerMixin,), handler=RecordingHandler)

    def on_request(payload: bytes) -> bytes:
        if payload == b"boom":
            raise RuntimeError("boom")
        return payload

    server.on_request = on_request
    reactor_.add_server(server, STRATEGIES[strategy]())
    with serving(reactor_) as reactor_thread:
        with Client(server, unix_dir) as client:
            client.send(b"boom")
            wait_for(lambda: any(hook == "close_request" for hook, _ in server.hooks),
                     message=lambda: str(server.hooks))
            if family.stream:
                assert client.reply() == b"", "the failed request's connection must be closed"
        failed = list(server.hooks)
        server.hooks.clear()
        assert request(server, unix_dir, b"after") == b"after"
    assert [hook for hook, _ in failed] == [
        "verify_request", "process_request", "finish_request", "setup", "handle", "finish",
        "handle_error", "shutdown_request", "close_request"]
    assert_threads_of(strategy, failed, reactor_thread)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_rejected_request_is_shut_down_without_running_the_handler(
        family: Family, strategy: str, reactor_: Reactor, unix_dir: str) -> None:
    server = make_server(family, unix_dir, mixins=(RecordingServerMixin,), handler=RecordingHandler)
    server.reject = True
    reactor_.add_server(server, STRATEGIES[strategy]())
    with serving(reactor_) as reactor_thread:
        with Client(server, unix_dir) as client:
            if not family.stream:  # a stream is rejected on accept, maybe before it could send
                client.send(b"rejected")
            wait_for(lambda: len(server.hooks) == 3, message=lambda: str(server.hooks))
            if family.stream:
                assert client.reply() == b""
        rejected = list(server.hooks)
        server.reject = False
        server.hooks.clear()
        assert request(server, unix_dir, b"accepted") == b"accepted"
    assert [hook for hook, _ in rejected] == ["verify_request", "shutdown_request", "close_request"]
    assert_threads_of(strategy, rejected, reactor_thread)


def test_base_exception_in_a_worker_is_logged_and_the_worker_keeps_serving(
        reactor_: Reactor, unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    name = pool_name()
    pool = ThreadPool(1, name=name)
    server = make_server(FAMILIES[0], unix_dir)

    def on_request(payload: bytes) -> bytes:
        if payload == b"exit":
            raise SystemExit(3)
        return payload

    server.on_request = on_request
    reactor_.add_server(server, pool)
    with serving(reactor_), caplog.at_level(logging.ERROR, logger="reactor"):
        assert request(server, unix_dir, b"exit") == b""
        wait_for(lambda: pool.stats()["done"] == 1)
        assert request(server, unix_dir, b"still here") == b"still here"
        assert len(pool_threads(name)) == 1
    assert any("BaseException" in record.getMessage() for record in caplog.records)


# ---------------------------------------------------------------- graceful stop

@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_shutdown_waits_for_the_in_flight_request_to_finish(family: Family, unix_dir: str) -> None:
    name = pool_name()
    pool = DrainWatchedPool(2, name=name, drain_timeout=GATE_TIMEOUT)
    gate = threading.Event()
    server = make_server(family, unix_dir, dispatch=pool)
    # A reply larger than the socket buffers, so "full" means something for streams.
    big = 200_000 if family.stream else 1000
    server.on_request = waiting_on(gate, lambda payload: payload * (big // len(payload)))
    with running(server), releasing(gate), Client(server, unix_dir) as client:
        client.send(b"slow")
        wait_for(lambda: pool.stats()["running"] == 1)
        shutter = call_in_thread(server.shutdown, "shutdown-caller")
        assert pool.draining.wait(JOIN_TIMEOUT), "serve_forever() did not start draining"
        shutter.join(0.2)
        assert shutter.is_alive(), "shutdown() returned before the in-flight request finished"
        gate.set()
        expected = b"slow" * (big // 4)
        if family.stream:
            data = b""
            while chunk := client.sock.recv(65536):
                data += chunk
            assert data == expected + b"\n"
        else:
            assert client.reply() == expected
        shutter.join(JOIN_TIMEOUT)
        assert not shutter.is_alive(), "shutdown() did not return after the request finished"
        assert pool_threads(name) == [], "workers outlived shutdown()"
        assert pool.stats()["threads"] == 0


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_no_request_is_taken_after_shutdown(family: Family, unix_dir: str) -> None:
    pool = DrainWatchedPool(1, max_pending=0, drain_timeout=GATE_TIMEOUT)
    gate = threading.Event()
    server = make_server(family, unix_dir, dispatch=pool, queue_size=64)
    handled: list[bytes] = []
    server.on_request = waiting_on(gate, lambda payload: (handled.append(payload), payload)[1])
    with contextlib.ExitStack() as stack:
        with running(server), releasing(gate):
            first = stack.enter_context(Client(server, unix_dir))
            first.send(b"first")
            wait_for(lambda: pool.stats()["running"] == 1)
            # The pool is full: these wait in the kernel, and must stay there.
            late = open_clients(stack, server, unix_dir, 3, prefix=b"late")
            shutter = call_in_thread(server.shutdown, "shutdown-caller")
            assert pool.draining.wait(JOIN_TIMEOUT)
            gate.set()
            assert first.reply() == b"first"
            shutter.join(JOIN_TIMEOUT)
            assert not shutter.is_alive()
        assert handled == [b"first"]
        assert pool.stats()["done"] == 1
        if family.stream:  # the listener is closed now: the waiting clients are refused
            for client, _ in late:
                assert client.reply() == b""


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_no_request_is_taken_once_the_reactor_is_stopping(family: Family, reactor_: Reactor, unix_dir: str) -> None:
    pool = ThreadPool(2)
    server = make_server(family, unix_dir)
    reactor_.add_server(server, pool)
    with contextlib.ExitStack() as stack:
        open_clients(stack, server, unix_dir, 2)
        reactor_.stop()
        for _ in range(3):
            reactor_.run_once(0.05)
        assert pool.stats() == {"threads": 0, "idle": 0, "running": 0, "queued": 0, "done": 0}
        assert has_pending(server)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_queued_requests_are_served_after_shutdown_within_drain_timeout(family: Family, unix_dir: str) -> None:
    pool = DrainWatchedPool(1, max_pending=2, drain_timeout=GATE_TIMEOUT)
    gate = threading.Event()
    server = make_server(family, unix_dir, dispatch=pool, queue_size=64)
    server.on_request = waiting_on(gate)
    with contextlib.ExitStack() as stack, running(server), releasing(gate):
        sent = open_clients(stack, server, unix_dir, 3)
        wait_for(lambda: (pool.stats()["running"], pool.stats()["queued"]) == (1, 2),
                 message=lambda: f"pool never filled: {pool.stats()}")
        shutter = call_in_thread(server.shutdown, "shutdown-caller")
        assert pool.draining.wait(JOIN_TIMEOUT)
        gate.set()
        for client, payload in sent:  # taken before shutdown(): served, queued ones included
            assert client.reply() == payload
        shutter.join(JOIN_TIMEOUT)
        assert not shutter.is_alive()
    assert pool.stats()["done"] == 3


def test_reactor_stop_takes_no_more_requests_and_close_drains_the_pool(unix_dir: str) -> None:
    name = pool_name()
    pool = DrainWatchedPool(2, name=name, drain_timeout=GATE_TIMEOUT)
    gate = threading.Event()
    server = make_server(FAMILIES[0], unix_dir, queue_size=64)
    handled: list[bytes] = []
    server.on_request = waiting_on(gate, lambda payload: (handled.append(payload), payload)[1])
    r = Reactor()
    closer = None
    try:
        r.add_server(server, pool)
        with contextlib.ExitStack() as stack, releasing(gate):
            with serving(r):
                slow = stack.enter_context(Client(server, unix_dir))
                slow.send(b"slow")
                wait_for(lambda: pool.stats()["running"] == 1)
            # serve_forever() returned: what arrives now is not taken.
            late = stack.enter_context(Client(server, unix_dir))
            late.send(b"late")
            closer = call_in_thread(r.close, "reactor-closer")
            assert pool.draining.wait(JOIN_TIMEOUT)
            closer.join(0.2)
            assert closer.is_alive(), "Reactor.close() did not wait for the in-flight request"
            gate.set()
            assert slow.reply() == b"slow"
            closer.join(JOIN_TIMEOUT)
            assert not closer.is_alive()
            assert pool_threads(name) == []
            assert late.reply() == b""
        assert handled == [b"slow"]
        assert server.fileno() == -1  # close() also closed the server
    finally:
        gate.set()
        if closer is not None:
            closer.join(JOIN_TIMEOUT)
        r.close()


def test_shutdown_from_a_handler_in_a_pool_worker_does_not_deadlock(
        unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    # A drain_timeout longer than the client's timeout: a shutdown() that waited
    # for its own request would only end when the drain gives up.
    pool = ThreadPool(2, drain_timeout=2 * JOIN_TIMEOUT)
    server = make_server(FAMILIES[0], unix_dir, dispatch=pool)
    returned = threading.Event()

    def on_request(payload: bytes) -> bytes:
        server.shutdown()
        returned.set()
        return b"bye"

    server.on_request = on_request
    with running(server) as serving_thread:
        assert request(server, unix_dir, b"stop") == b"bye"
        assert returned.is_set()
        serving_thread.join(JOIN_TIMEOUT)
        assert not serving_thread.is_alive(), "serve_forever() did not return"
    assert pool.stats()["done"] == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_reactor_stop_from_a_handler_in_a_pool_worker_does_not_deadlock(reactor_: Reactor, unix_dir: str) -> None:
    server = make_server(FAMILIES[0], unix_dir)
    server.on_request = lambda payload: (reactor_.stop(), b"bye")[1]
    reactor_.add_server(server, ThreadPool(2))
    thread = threading.Thread(target=reactor_.serve_forever, name="reactor-under-test")
    thread.start()
    try:
        assert request(server, unix_dir, b"stop") == b"bye"
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive(), "serve_forever() did not return after stop() from a worker"
    finally:
        reactor_.stop()
        thread.join(JOIN_TIMEOUT)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_remove_server_abandons_a_stuck_handler_after_drain_timeout(
        family: Family, reactor_: Reactor, unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    name = pool_name()
    pool = ThreadPool(1, name=name, drain_timeout=0.2)
    gate = threading.Event()
    server = make_server(family, unix_dir)
    server.on_request = waiting_on(gate)
    reactor_.add_server(server, pool)
    try:
        with releasing(gate), Client(server, unix_dir) as client, caplog.at_level(logging.WARNING):
            client.send(b"stuck")
            tick_until(reactor_, lambda: pool.stats()["running"] == 1)
            [worker] = pool_threads(name)
            started = time.monotonic()
            remover = call_in_thread(lambda: reactor_.remove_server(server), "remover")
            remover.join(JOIN_TIMEOUT)
            assert not remover.is_alive(), "remove_server() waited for a stuck handler"
            assert time.monotonic() - started >= 0.2, "remove_server() did not wait drain_timeout"
            assert worker.is_alive() and not gate.is_set()
            abandoning = [rec.getMessage() for rec in caplog.records if "abandoning" in rec.getMessage()]
            assert len(abandoning) == 1 and worker.name in abandoning[0], caplog.text
            gate.set()
            assert client.reply() == b"stuck"  # the abandoned handler still finishes its request
            worker.join(JOIN_TIMEOUT)
            assert not worker.is_alive()
    finally:
        server.server_close()


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_queued_requests_are_closed_unserved_at_the_drain_deadline(
        family: Family, reactor_: Reactor, unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    name = pool_name()
    pool = ThreadPool(1, max_pending=2, name=name, drain_timeout=0.2)
    gate = threading.Event()
    server = make_server(family, unix_dir, queue_size=64, mixins=(RecordingServerMixin,))
    handled: list[bytes] = []
    server.on_request = waiting_on(gate, lambda payload: (handled.append(payload), payload)[1])
    reactor_.add_server(server, pool)
    try:
        with contextlib.ExitStack() as stack, releasing(gate), caplog.at_level(logging.WARNING):
            [(running_client, _)] = open_clients(stack, server, unix_dir, 1, prefix=b"running")
            tick_until(reactor_, lambda: pool.stats()["running"] == 1)
            queued = open_clients(stack, server, unix_dir, 2, prefix=b"queued")
            tick_until(reactor_, lambda: pool.stats()["queued"] == 2)
            [worker] = pool_threads(name)
            remover = call_in_thread(lambda: reactor_.remove_server(server), "remover")
            remover.join(JOIN_TIMEOUT)
            assert not remover.is_alive()
            assert "closing 2 queued requests unserved" in caplog.text
            assert [hook for hook, thread in server.hooks if thread == "remover"] == [
                "shutdown_request", "close_request"] * 2
            if family.stream:
                for client, _ in queued:
                    assert client.reply() == b"", "a queued request left at the deadline must be closed"
            gate.set()
            assert running_client.reply() == b"running0"
            worker.join(JOIN_TIMEOUT)
            assert not worker.is_alive()
        assert handled == [b"running0"]
    finally:
        server.server_close()


# ---------------------------------------------------------------- one pool, one server

def test_a_pool_bound_to_one_server_refuses_a_second(reactor_: Reactor, unix_dir: str) -> None:
    pool = ThreadPool(1, drain_timeout=1)
    first = make_server(FAMILIES[0], unix_dir)
    second = make_server(FAMILIES[0], unix_dir)
    third = make_server(FAMILIES[0], unix_dir)
    try:
        reactor_.add_server(first, pool)
        with pytest.raises(ValueError, match="already serves"):
            reactor_.add_server(second, pool)
        assert reactor_.servers == [first]
        # The refusal must leave the pool bound to ``first``, refusing others still.
        with pytest.raises(ValueError, match="already serves"):
            reactor_.add_server(third, pool)
        assert reactor_.servers == [first]
    finally:
        for server in (second, third):
            with contextlib.suppress(KeyError):
                reactor_.remove_server(server)
            server.server_close()


def test_a_refused_second_server_leaves_the_pool_serving_the_first(reactor_: Reactor, unix_dir: str) -> None:
    name = pool_name()
    pool = ThreadPool(1, name=name, drain_timeout=1)
    first = make_server(FAMILIES[0], unix_dir)
    second = make_server(FAMILIES[0], unix_dir)
    try:
        reactor_.add_server(first, pool)
        with pytest.raises(ValueError, match="already serves"):
            reactor_.add_server(second, pool)
        with serving(reactor_):
            for i in range(5):  # more requests than workers: the one worker is reused
                assert request(first, unix_dir, b"%d" % i) == b"%d" % i
            assert len(pool_threads(name)) == 1
        wait_for(lambda: pool.stats()["done"] == 5, message=lambda: str(pool.stats()))  # counted after the reply
    finally:
        second.server_close()


def test_a_pool_in_use_refuses_a_compat_server_too(reactor_: Reactor, unix_dir: str) -> None:
    pool = ThreadPool(1, drain_timeout=1)
    hosted = make_server(FAMILIES[0], unix_dir)
    standalone = make_server(FAMILIES[0], unix_dir, dispatch=pool)
    try:
        reactor_.add_server(hosted, pool)
        with pytest.raises(ValueError, match="already serves"):
            standalone.serve_forever()
        with serving(reactor_):
            for i in range(3):
                assert request(hosted, unix_dir, b"%d" % i) == b"%d" % i
    finally:
        standalone.server_close()


def test_a_pool_is_reusable_after_remove_server(reactor_: Reactor, unix_dir: str) -> None:
    name = pool_name()
    pool = ThreadPool(2, name=name)
    first = make_server(FAMILIES[0], unix_dir)
    second = make_server(FAMILIES[2], unix_dir)
    try:
        reactor_.add_server(first, pool)
        with serving(reactor_):
            assert request(first, unix_dir, b"first") == b"first"
        old_workers = pool_threads(name)
        assert len(old_workers) == 1
        reactor_.remove_server(first)
        assert pool_threads(name) == [] and pool.stats()["threads"] == 0
        reactor_.add_server(second, pool)
        with serving(reactor_):
            assert request(second, unix_dir, b"second") == b"second"
        assert len(pool_threads(name)) == 1 and pool_threads(name)[0] not in old_workers
        wait_for(lambda: pool.stats()["done"] == 2, message=lambda: str(pool.stats()))  # counted after the reply
    finally:
        first.server_close()


def test_compat_serve_forever_can_run_twice_with_the_same_pool(unix_dir: str) -> None:
    name = pool_name()
    pool = ThreadPool(2, name=name)
    server = make_server(FAMILIES[0], unix_dir, dispatch=pool)
    try:
        for round_ in range(2):
            thread = call_in_thread(server.serve_forever, "serve-forever-under-test")
            try:
                assert request(server, unix_dir, b"round%d" % round_) == b"round%d" % round_
            finally:
                server.shutdown()
                thread.join(JOIN_TIMEOUT)
            assert not thread.is_alive()
            assert pool_threads(name) == []
    finally:
        server.server_close()
    assert pool.stats()["done"] == 2


# ---------------------------------------------------------------- construction

@pytest.mark.parametrize("kwargs", [{"max_workers": 0}, {"max_workers": -1}, {"max_workers": 2, "max_pending": -1}],
                         ids=["zero_workers", "negative_workers", "negative_pending"])
def test_invalid_sizes_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ThreadPool(**kwargs)


def test_zero_as_first_positional_argument_is_refused() -> None:
    with pytest.raises(ValueError):
        ThreadPool(0)


def test_repr_capacity_and_stats_of_a_fresh_pool() -> None:
    pool = ThreadPool(3, max_pending=5)
    assert repr(pool) == "ThreadPool(max_workers=3, max_pending=5)"
    assert pool.capacity == 8
    assert pool.stats() == {"threads": 0, "idle": 0, "running": 0, "queued": 0, "done": 0}
    assert ThreadPool(4).max_pending == 4  # defaults to max_workers
    assert ThreadPool(4, 0).capacity == 4
    assert not pool.owns_current_thread()


def test_owns_current_thread_is_true_only_in_its_own_workers(reactor_: Reactor, unix_dir: str) -> None:
    pool = ThreadPool(1)
    other = ThreadPool(1)
    answers: list[tuple[bool, bool]] = []
    server = make_server(FAMILIES[0], unix_dir)
    server.on_request = lambda payload: (answers.append((pool.owns_current_thread(),
                                                         other.owns_current_thread())), payload)[1]
    reactor_.add_server(server, pool)
    with serving(reactor_):
        assert request(server, unix_dir, b"who") == b"who"
    assert answers == [(True, False)]


# ---------------------------------------------------------------- mixing strategies

def test_a_slow_pool_handler_does_not_block_an_inline_server(reactor_: Reactor, unix_dir: str) -> None:
    pool = ThreadPool(2)
    gate = threading.Event()
    slow = make_server(FAMILIES[0], unix_dir)
    slow.on_request = waiting_on(gate)
    fast = make_server(FAMILIES[4], unix_dir)
    fast_threads: list[str] = []
    fast.on_request = lambda payload: (fast_threads.append(threading.current_thread().name), payload)[1]
    reactor_.add_server(slow, pool)
    reactor_.add_server(fast, Inline())
    with serving(reactor_) as reactor_thread, releasing(gate), Client(slow, unix_dir) as client:
        client.send(b"slow")
        wait_for(lambda: pool.stats()["running"] == 1)
        for i in range(5):
            assert request(fast, unix_dir, b"fast%d" % i) == b"fast%d" % i
        assert not gate.is_set() and pool.stats()["running"] == 1  # still blocked meanwhile
        gate.set()
        assert client.reply() == b"slow"
    assert fast_threads == [reactor_thread.name] * 5
