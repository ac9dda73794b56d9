"""One behavioural scenario, for one dispatch strategy and one address family, in a fresh interpreter.

Run by tests/test_strategies.py (DESIGN.md §4.12, "one behavioural suite, many
implementations")::

    python tests/strategy_scenarios.py --strategy prefork --family unix_stream --scenario round_trip

(with the repository and tests/ on PYTHONPATH, as ``support.run_python`` sets).

Every case needs its own interpreter because ``Prefork`` forks, and it must
fork from a single-threaded process: the script builds the server, adds it to
a Reactor in the main thread, and only then starts the client thread. The
main thread runs ``serve_forever()``; the client thread plays the scenario and
stops the reactor; the main thread closes the reactor, runs the after-close
checks and prints ONE JSON line on stdout with what was observed. Any failure
(the client raised, serving raised) exits 1 with the reason on stderr.

What the handlers saw comes back two ways, because under ``Prefork`` they run
in other processes:

* through the wire: every reply is a JSON line naming the serving process
  (pid, parent pid), thread, the hooks the handler went through so far
  (``["setup", "handle"]``) and the number of ``handle_error`` calls its
  process has seen; ``finish()`` then appends a ``finish`` line (the stream
  reply is buffered and leaves when ``finish()`` flushes it, the datagram
  reply is sent by ``finish()``), so a client that reads both saw the hooks
  in order;
* a journal: a file every process appends JSON lines to (one ``write`` with
  ``O_APPEND`` each, so lines never interleave), for what leaves no trace on
  the wire: ``verify_request`` decisions, ``handle_error`` calls, served
  request ids, worker starts, ``hosting_started``/``hosting_stopped`` (a
  process killed rather than stopped never writes the second), the master's
  ``closed`` once ``close()`` returned, and every log record of WARNING or
  above in any process (a crashed worker, a respawn, an abandoned handler).
  The script reads it after ``close()``, when every worker has exited.

After ``close()`` (while the reactor, server and strategy objects are still
referenced, so the garbage collector cannot hide a leak) the script lists the
socket/pipe/anon-inode fds, threads and child processes it holds beyond those
it held before building the server; it is a child subreaper, so a worker that
outlives its arbiter shows up among its children.

The protocol is one request per connection (or datagram): ``echo ID`` ->
the reply; ``boom ID`` -> the handler raises; ``slow ID`` -> the handler
writes ``started`` and waits for another line before replying (for datagrams,
``slow ID PORT``: the handler connects to the client's TCP port PORT and waits
for a line there). Nothing sleeps: waits are on data, events or ``wait_for``.

Besides the scenarios named in ``SCENARIOS``, ``compat_serve_forever`` runs a
round trip through ``Server(address, Handler, dispatch=...).serve_forever()``
stopped by ``shutdown()`` from the client thread, and ``stop_at_once`` adds the
server and closes the reactor at once, ten times over.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import itertools
import json
import logging
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from typing import Any

from reactor import Inline, Prefork, Reactor, ThreadPool, socketserver
from support import child_pids, take_snapshot, wait_for

#: Client sockets' timeout, and the longest any client or handler waits for anything.
IO_TIMEOUT = 5.0
#: A handler's connection timeout: a lost client never pins a worker for long.
HANDLER_TIMEOUT = 10.0
ROUND_TRIPS = 20
CONCURRENT_CLIENTS = 50
VERIFY_CLIENTS = 10
VANISH_ROUNDS = 3
STOP_AT_ONCE_CYCLES = 10


# ---------------------------------------------------------------- journal

class Journal:
    """JSON lines appended by every process of the tree (master, arbiter, workers)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"ev": event, "pid": os.getpid(), **fields}) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path) as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []


JOURNAL: Journal  # set in main(), before any fork, so every process writes the same file


class JournalLogHandler(logging.Handler):
    """Journals every WARNING+ record, whichever process logs it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            JOURNAL.write("log", level=record.levelname, logger=record.name, msg=record.getMessage())
        except Exception:
            self.handleError(record)


PR_SET_CHILD_SUBREAPER = 36


def setup_process() -> None:
    """Logs to stderr and the journal; no core files; a child subreaper (Linux).

    As a subreaper, this process adopts any worker orphaned by the arbiter's
    exit, so an unreaped worker shows among its children after ``close()``
    instead of vanishing into init.
    """
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    journal_handler = JournalLogHandler(logging.WARNING)
    logging.getLogger().addHandler(journal_handler)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


# ---------------------------------------------------------------- server side

#: Per-process counters (each worker has its own copy after fork); guarded by _LOCK
#: because ThreadPool workers run the hooks concurrently.
_LOCK = threading.Lock()
_COUNTS = {"errors": 0, "verified": 0}


def address_key(address: Any) -> Any:
    """What identifies a client: its port (TCP/UDP) or its socket path (Unix)."""
    if isinstance(address, tuple):
        return address[1]
    if isinstance(address, bytes):
        return address.decode()
    return address


class ObservedServer:
    """Server hooks that leave evidence: ``verify_request`` (optionally rejecting) and ``handle_error``."""

    request_queue_size = 128  # 50 concurrent connects must not overflow the backlog (SYN retries take 1 s)
    #: Reject every other request, counted per process: requests 0, 2, 4... are accepted.
    reject_odd = False

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self.reject_odd:
            return True
        with _LOCK:
            number = _COUNTS["verified"]
            _COUNTS["verified"] += 1
            accepted = number % 2 == 0
            JOURNAL.write("verify", addr=address_key(client_address), number=number, ok=accepted)
        return accepted

    def hosting_started(self, hosted: Any) -> None:
        # Called where the server is served: the master (Inline, ThreadPool)
        # or each Prefork worker, which calls hosting_stopped() only when it
        # stops gracefully (not when it is killed).
        JOURNAL.write("hosting_started")

    def hosting_stopped(self, hosted: Any) -> None:
        JOURNAL.write("hosting_stopped")

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        with _LOCK:
            _COUNTS["errors"] += 1
            JOURNAL.write("error", exc=repr(error), thread=threading.current_thread().name)


class TCPServer(ObservedServer, socketserver.TCPServer):
    pass


class UDPServer(ObservedServer, socketserver.UDPServer):
    pass


class UnixStreamServer(ObservedServer, socketserver.UnixStreamServer):
    pass


class UnixDatagramServer(ObservedServer, socketserver.UnixDatagramServer):
    pass


def split_command(data: bytes) -> tuple[str, str, list[str]]:
    """``b"verb id arg..."`` -> (verb, id, args); missing words are empty."""
    words = data.decode(errors="replace").split()
    return (words[0] if words else ""), (words[1] if len(words) > 1 else ""), words[2:]


def describe(verb: str, request_id: str, hooks: list[str]) -> bytes:
    """The reply to a served request, journaled as served; what the handler saw."""
    thread = threading.current_thread()
    with _LOCK:
        errors = _COUNTS["errors"]
        JOURNAL.write("handle", id=request_id, verb=verb)
    reply = {"id": request_id, "verb": verb, "pid": os.getpid(), "ppid": os.getppid(),
             "thread": thread.name, "main": thread is threading.main_thread(),
             "hooks": list(hooks), "errors": errors}
    return json.dumps(reply).encode() + b"\n"


class StreamHandler(socketserver.StreamRequestHandler):
    """One line in, one JSON line out (then ``finish``); ``boom`` raises; ``slow`` waits for a second line."""

    timeout = HANDLER_TIMEOUT
    wbufsize = -1  # buffered: the reply leaves only when finish() flushes it

    def setup(self) -> None:
        super().setup()
        self.hooks = ["setup"]
        self.replied = False

    def handle(self) -> None:
        self.hooks.append("handle")
        line = self.rfile.readline()
        if not line.endswith(b"\n"):
            JOURNAL.write("incomplete", data=line.decode(errors="replace"))
            return
        verb, request_id, _ = split_command(line)
        if verb == "boom":
            raise RuntimeError(f"boom {request_id}")
        if verb == "slow":
            self.wfile.write(b"started\n")
            self.wfile.flush()
            self.rfile.readline()
        self.wfile.write(describe(verb, request_id, self.hooks))
        self.replied = True

    def finish(self) -> None:
        if self.replied:
            self.wfile.write(b"finish\n")
        super().finish()


class DatagramHandler(socketserver.DatagramRequestHandler):
    """As StreamHandler, for datagrams; ``finish()`` sends the reply (an empty one after ``boom``)."""

    def setup(self) -> None:
        super().setup()
        self.hooks = ["setup"]
        self.replied = False

    def handle(self) -> None:
        self.hooks.append("handle")
        verb, request_id, args = split_command(self.rfile.read())
        if verb == "boom":
            raise RuntimeError(f"boom {request_id}")
        if verb == "slow":
            with socket.create_connection(("127.0.0.1", int(args[0])), timeout=HANDLER_TIMEOUT) as side:
                side.sendall(b"started\n")
                read_line(side)
        self.wfile.write(describe(verb, request_id, self.hooks))
        self.replied = True

    def finish(self) -> None:
        if self.replied:
            self.wfile.write(b"finish\n")
        super().finish()


def journal_worker_start() -> None:
    JOURNAL.write("worker_start")


STRATEGIES: dict[str, Callable[[], Any]] = {
    "inline": lambda: Inline(),
    "threadpool": lambda: ThreadPool(4),
    "prefork": lambda: Prefork(workers=2, graceful_timeout=5, on_worker_start=journal_worker_start),
    "prefork-threads": lambda: Prefork(workers=2, threads=2, graceful_timeout=5,
                                       on_worker_start=journal_worker_start),
}


@dataclasses.dataclass(frozen=True)
class Family:
    server_class: type
    stream: bool
    host: str | None  # None: a Unix socket path

    def bind_address(self, tmpdir: str) -> Any:
        return os.path.join(tmpdir, "server.sock") if self.host is None else (self.host, 0)


FAMILIES = {
    "tcp4": Family(TCPServer, True, "127.0.0.1"),
    "tcp6": Family(TCPServer, True, "::1"),
    "udp4": Family(UDPServer, False, "127.0.0.1"),
    "unix_stream": Family(UnixStreamServer, True, None),
    "unix_dgram": Family(UnixDatagramServer, False, None),
}


# ---------------------------------------------------------------- client side

def read_line(sock: socket.socket) -> bytes:
    """Read up to and including a newline (one byte at a time: nothing after it is consumed)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def parse(data: bytes, end: str) -> dict[str, Any]:
    """A reply as the client saw it: the JSON line (or None), the lines after it, how it ended."""
    lines = data.decode(errors="replace").splitlines()
    reply = json.loads(lines[0]) if lines and lines[0].startswith("{") else None
    return {"reply": reply, "rest": lines[1:] if reply is not None else lines, "end": end}


def read_to_end(sock: socket.socket) -> dict[str, Any]:
    """Read until the server closes: ``end`` is ``eof``, or ``reset`` if it closed with our data unread."""
    data = b""
    end = "eof"
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        end = "reset"
    return parse(data, end)


@dataclasses.dataclass
class Target:
    """How clients reach the server under test."""

    family: Family
    address: Any
    tmpdir: str
    _names: Any = dataclasses.field(default_factory=itertools.count)

    @property
    def socket_family(self) -> int:
        if self.family.host is None:
            return socket.AF_UNIX
        return socket.AF_INET6 if ":" in self.family.host else socket.AF_INET

    def client_path(self, prefix: str) -> str:
        return os.path.join(self.tmpdir, f"{prefix}{next(self._names)}")

    def connect(self, *, bind: bool = False) -> socket.socket:
        """A connected stream client; ``bind`` gives a Unix client a path the server sees as its address."""
        sock = socket.socket(self.socket_family, socket.SOCK_STREAM)
        try:
            sock.settimeout(IO_TIMEOUT)
            if bind and self.family.host is None:
                sock.bind(self.client_path("c"))
            sock.connect(self.address)
        except BaseException:
            sock.close()
            raise
        return sock

    def datagram_socket(self) -> socket.socket:
        """A bound datagram client (a Unix one needs a path to be answered)."""
        sock = socket.socket(self.socket_family, socket.SOCK_DGRAM)
        try:
            sock.settimeout(IO_TIMEOUT)
            sock.bind(self.client_path("d") if self.family.host is None else (self.family.host, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    def exchange(self, command: str, *, bind: bool = False) -> dict[str, Any]:
        """One request on a fresh connection (stream families) or socket (datagram families)."""
        if self.family.stream:
            with self.connect(bind=bind) as sock:
                try:
                    sock.sendall(command.encode() + b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    # Closed before our line was even sent (a rejected Unix
                    # client can be that quick): no reply can follow.
                    result = parse(b"", "closed-before-send")
                else:
                    result = read_to_end(sock)
                result["client"] = address_key(sock.getsockname())
                return result
        with self.datagram_socket() as sock:
            return self.datagram_exchange(sock, command)

    def datagram_exchange(self, sock: socket.socket, command: str) -> dict[str, Any]:
        sock.sendto(command.encode(), self.address)
        result = parse(sock.recv(65536), "datagram")
        result["client"] = address_key(sock.getsockname())
        return result


def receive_now(sock: socket.socket) -> bytes | None:
    """A datagram already waiting on ``sock``, or None (never blocks)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return None
    finally:
        sock.settimeout(timeout)


def pending_datagrams(sock: socket.socket) -> int:
    """How many datagrams wait on ``sock`` right now (without blocking)."""
    count = 0
    while receive_now(sock) is not None:
        count += 1
    return count


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


@dataclasses.dataclass
class Context:
    """What a scenario's client side works with."""

    strategy: str
    target: Target
    stop: Callable[[], None]
    closing: threading.Event  # set by the main thread just before Reactor.close()
    after_close: list[Callable[[], dict[str, Any]]] = dataclasses.field(default_factory=list)
    cleanup: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def keep_until_closed(self, sockets: list[socket.socket]) -> None:
        """Keep datagram clients open until after close(), then count replies that came late.

        By then every worker has exited, so a duplicate (or a reply to a
        rejected request) would already be queued on its socket.
        """
        self.cleanup.append(lambda: close_all(sockets))
        self.after_close.append(lambda: {"late": sum(pending_datagrams(sock) for sock in sockets)})


# ---------------------------------------------------------------- scenarios

def round_trip(ctx: Context) -> dict[str, Any]:
    ids = [f"r{i}" for i in range(ROUND_TRIPS)]
    return {"ids": ids, "exchanges": [ctx.target.exchange(f"echo {i}") for i in ids],
            "serving_children": sorted(child_pids())}


def run_concurrently(ctx: Context, count: int, prefix: str) -> dict[str, Any]:
    """``count`` clients at once; stream clients are threads released together by a barrier,
    datagram clients are ``count`` sockets that all send before any reply is read."""
    ids = [f"{prefix}{i}" for i in range(count)]
    target = ctx.target
    if target.family.stream:
        results: list[Any] = [None] * count
        barrier = threading.Barrier(count)

        def client(index: int) -> None:
            try:
                barrier.wait(IO_TIMEOUT)
                results[index] = target.exchange(f"echo {ids[index]}")
            except Exception as exc:
                results[index] = {"error": repr(exc)}

        threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(IO_TIMEOUT * 3)
        return {"ids": ids, "exchanges": results}
    sockets: list[socket.socket] = []
    ctx.keep_until_closed(sockets)
    for request_id in ids:
        sock = target.datagram_socket()
        sockets.append(sock)
        sock.sendto(f"echo {request_id}".encode(), target.address)
    exchanges = [parse(sock.recv(65536), "datagram") for sock in sockets]
    return {"ids": ids, "exchanges": exchanges}


def concurrent(ctx: Context) -> dict[str, Any]:
    return run_concurrently(ctx, CONCURRENT_CLIENTS, "c")


def handler_error(ctx: Context) -> dict[str, Any]:
    commands = ["echo e0", "boom b0", "echo e1", "boom b1", "echo e2", "boom b2", "echo e3"]
    return {"commands": commands, "exchanges": [ctx.target.exchange(command) for command in commands]}


def verify_reject(ctx: Context) -> dict[str, Any]:
    target = ctx.target
    ids = [f"v{i}" for i in range(VERIFY_CLIENTS)]
    if target.family.stream:
        return {"ids": ids, "exchanges": [target.exchange(f"echo {i}", bind=True) for i in ids]}
    # A rejected datagram gets no answer at all: wait for the reply or for the
    # journal to show that verify_request turned this client down.
    sockets: list[socket.socket] = []
    ctx.keep_until_closed(sockets)
    exchanges = []
    for request_id in ids:
        sock = target.datagram_socket()
        sockets.append(sock)
        key = address_key(sock.getsockname())
        sock.sendto(f"echo {request_id}".encode(), target.address)

        def outcome() -> dict[str, Any] | None:
            data = receive_now(sock)  # noqa: B023
            if data is not None:
                return parse(data, "datagram")
            if any(e["ev"] == "verify" and e["addr"] == key and not e["ok"] for e in JOURNAL.read()):  # noqa: B023
                return {"reply": None, "rest": [], "end": "rejected"}
            return None

        result = wait_for(outcome, timeout=IO_TIMEOUT, message=f"no reply and no rejection for {request_id}")
        assert result is not None  # wait_for returns only a truthy outcome
        exchanges.append({**result, "client": key})
    return {"ids": ids, "exchanges": exchanges}


def vanish(ctx: Context) -> dict[str, Any]:
    target = ctx.target
    exchanges = []
    for round_number in range(VANISH_ROUNDS):
        with target.connect() as sock:  # half a line, then a clean close
            sock.sendall(b"echo half-a-li")
        with target.connect() as sock:  # half a line, then a reset (TCP) or an abrupt close (Unix)
            sock.sendall(b"echo cut")
            if target.family.host is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        exchanges.append(target.exchange(f"echo n{round_number}"))
    return {"ids": [f"n{i}" for i in range(VANISH_ROUNDS)], "exchanges": exchanges}


def graceful_stop(ctx: Context) -> dict[str, Any]:
    target = ctx.target
    stream = target.family.stream
    inline = ctx.strategy == "inline"
    with contextlib.ExitStack() as stack:
        if stream:
            sock = stack.enter_context(target.connect())
            sock.sendall(b"slow g0\n")
            gate = sock
        else:
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            listener.settimeout(IO_TIMEOUT)
            sock = stack.enter_context(target.datagram_socket())
            sock.sendto(f"slow g0 {listener.getsockname()[1]}".encode(), target.address)
            gate, _ = listener.accept()
            stack.enter_context(gate)
            gate.settimeout(IO_TIMEOUT)
        started = read_line(gate)
        ctx.stop()  # reactor.call_soon_threadsafe(reactor.stop) while the request is in flight
        # Inline runs the handler in the reactor's thread: nothing closes until it
        # returns. Elsewhere serve_forever() returns at once; let close() begin
        # while the handler still waits for our line.
        closing_seen = True if inline else ctx.closing.wait(IO_TIMEOUT)
        gate.sendall(b"go\n")
        result = read_to_end(sock) if stream else parse(sock.recv(65536), "datagram")
    ctx.after_close.append(lambda: {"after_close": try_after_close(target)})
    return {"started": started.decode(), "closing_seen": closing_seen, "exchanges": [result], "ids": ["g0"]}


def try_after_close(target: Target) -> str:
    """What a new client gets once the server is closed: the exception's name, or ``served``."""
    try:
        if target.family.stream:
            with target.connect() as sock:
                sock.sendall(b"echo late\n")
                return "served" if read_to_end(sock)["reply"] else "accepted"
        with target.datagram_socket() as sock:
            if target.family.host is not None:
                sock.connect(target.address)  # so the ICMP port-unreachable comes back as an error
                sock.send(b"echo late")
            else:
                sock.sendto(b"echo late", target.address)
            sock.recv(65536)
            return "served"
    except OSError as exc:
        return type(exc).__name__


def no_leaks(ctx: Context) -> dict[str, Any]:
    target = ctx.target
    exchanges = [target.exchange(command) for command in ["echo k0", "boom k1", "echo k2"]]
    burst = run_concurrently(ctx, 10, "kc")
    return {"exchanges": exchanges, "burst": burst}


SCENARIOS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "round_trip": round_trip,
    "concurrent": concurrent,
    "handler_error": handler_error,
    "verify_reject": verify_reject,
    "vanish": vanish,
    "graceful_stop": graceful_stop,
    "no_leaks": no_leaks,
}


# ---------------------------------------------------------------- drivers

class ClientThread(threading.Thread):
    """Runs the client side; always stops the server at the end, even if the scenario raised."""

    def __init__(self, play: Callable[[], dict[str, Any]], stop: Callable[[], None],
                 after_stop: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__(name="client")
        self.play = play
        self.stop_server = stop
        self.after_stop = after_stop
        self.observed: dict[str, Any] = {}
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.observed = self.play()
        except BaseException:
            self.error = traceback.format_exc()
        finally:
            self.stop_server()
        if self.after_stop is not None:
            self.observed.update(self.after_stop())


def run_on_reactor(args: argparse.Namespace, family: Family, tmpdir: str, before: Any) -> dict[str, Any]:
    """Server on a Reactor in the main thread; the client thread starts after add_server."""
    server = family.server_class(family.bind_address(tmpdir), StreamHandler if family.stream else DatagramHandler)
    server.reject_odd = args.scenario == "verify_reject"
    strategy = STRATEGIES[args.strategy]()
    reactor = Reactor()
    closing = threading.Event()
    try:
        reactor.add_server(server, strategy)
    except BaseException:
        server.server_close()
        reactor.close()
        raise
    target = Target(family, server.server_address, tmpdir)

    def stop() -> None:
        reactor.call_soon_threadsafe(reactor.stop)

    def stop_unless_closing() -> None:
        # Once serve_forever() has returned, close() is draining: a second
        # stop() would mean "abort now", which is not what a finished client means.
        if not closing.is_set():
            reactor.stop()

    ctx = Context(args.strategy, target, stop, closing)
    client = ClientThread(lambda: SCENARIOS[args.scenario](ctx), stop_unless_closing)
    client.start()
    try:
        reactor.serve_forever()
    finally:
        closing.set()
        reactor.close()
        JOURNAL.write("closed")  # a handler that finished during close() is journaled before this
        client.join(IO_TIMEOUT * 4)
    try:
        if client.is_alive():
            raise RuntimeError("the client thread did not finish")
        if client.error:
            raise RuntimeError(f"the client failed:\n{client.error}")
        observed = dict(client.observed)
        for check in ctx.after_close:
            observed.update(check())
    finally:
        for cleanup in ctx.cleanup:
            cleanup()
    # Checked while the reactor, the server and the strategy are still
    # referenced: close() must release what they hold, not the garbage collector.
    observed["leaks"] = leaks_since(before)
    return observed


def run_compat(args: argparse.Namespace, family: Family, tmpdir: str, before: Any) -> dict[str, Any]:
    """The standalone compat path: ``Server(address, Handler, dispatch=...)``, ``serve_forever()``
    in the main thread, ``shutdown()`` from the client thread."""
    strategy = STRATEGIES[args.strategy]()
    server = family.server_class(family.bind_address(tmpdir), StreamHandler if family.stream else DatagramHandler,
                                 dispatch=strategy)
    target = Target(family, server.server_address, tmpdir)
    ctx = Context(args.strategy, target, server.shutdown, threading.Event())

    def after_shutdown() -> dict[str, Any]:
        # shutdown() from another thread returns once serve_forever() is done
        # with its strategy: no pool thread, arbiter or worker is left.
        others = [t.name for t in threading.enumerate() if t not in (threading.main_thread(), client)]
        return {"after_shutdown": {"threads": sorted(others), "children": sorted(child_pids())}}

    client = ClientThread(lambda: round_trip(ctx), server.shutdown, after_shutdown)
    if isinstance(strategy, Prefork):
        # Prefork forks inside serve_forever() and refuses to while another
        # thread runs: start the client right after that fork, in the master.
        master = os.getpid()

        def start_client() -> None:
            if os.getpid() == master and client.ident is None:
                client.start()

        os.register_at_fork(after_in_parent=start_client)
    else:
        client.start()  # its connections wait in the backlog until serve_forever() runs
    try:
        server.serve_forever()
    finally:
        server.server_close()
        JOURNAL.write("closed")
        if client.ident is not None:
            client.join(IO_TIMEOUT * 4)
    if client.ident is None:
        raise RuntimeError("the client thread never started (no fork happened?)")
    if client.is_alive():
        raise RuntimeError("the client thread did not finish")
    if client.error:
        raise RuntimeError(f"the client failed:\n{client.error}")
    return {**client.observed, "leaks": leaks_since(before)}  # the server and strategy still referenced


def stop_at_once(args: argparse.Namespace, family: Family, tmpdir: str, before: Any) -> dict[str, Any]:
    """Up to STOP_AT_ONCE_CYCLES times: add the server, stop and close the reactor at once.

    Closing may come while Prefork workers are still booting; each must stop
    gracefully all the same. Ends at the first cycle where a process started
    hosting the server and never stopped hosting it (it was killed).
    """
    cycles = 0
    for cycles in range(1, STOP_AT_ONCE_CYCLES + 1):
        server = family.server_class(family.bind_address(tmpdir),
                                     StreamHandler if family.stream else DatagramHandler)
        reactor = Reactor()
        try:
            reactor.add_server(server, STRATEGIES[args.strategy]())
        except BaseException:
            server.server_close()
            reactor.close()
            raise
        reactor.call_soon(reactor.stop)
        try:
            reactor.serve_forever()
        finally:
            reactor.close()
            JOURNAL.write("closed", cycle=cycles)
        journal = JOURNAL.read()
        started = {e["pid"] for e in journal if e["ev"] == "hosting_started"}
        stopped = {e["pid"] for e in journal if e["ev"] == "hosting_stopped"}
        if started != stopped:
            break
    return {"cycles": cycles, "leaks": leaks_since(before)}  # the last reactor still referenced


def leaks_since(before: Any) -> dict[str, list[Any]]:
    """What this process holds now and did not before the servers were built."""
    gc.collect()
    now = take_snapshot()
    return {
        "fds": [f"{fd} -> {target}" for fd, target in sorted(now.fds - before.fds)],
        "threads": sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()),
        "children": sorted(child_pids()),
    }


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", required=True, choices=sorted(STRATEGIES))
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES))
    parser.add_argument("--scenario", required=True,
                        choices=sorted([*SCENARIOS, "compat_serve_forever", "stop_at_once"]))
    args = parser.parse_args()
    family = FAMILIES[args.family]
    if args.scenario == "vanish" and not family.stream:
        parser.error("vanish is for stream families only")

    global JOURNAL
    tmpdir = tempfile.mkdtemp(prefix="rx", dir="/tmp")
    try:
        JOURNAL = Journal(os.path.join(tmpdir, "journal"))
        setup_process()
        before = take_snapshot()
        try:
            if args.scenario == "compat_serve_forever":
                observed = run_compat(args, family, tmpdir, before)
            elif args.scenario == "stop_at_once":
                observed = stop_at_once(args, family, tmpdir, before)
            else:
                observed = run_on_reactor(args, family, tmpdir, before)
        except Exception:
            print(f"strategy_scenarios: {args.strategy}/{args.family}/{args.scenario} failed:\n"
                  f"{traceback.format_exc()}", file=sys.stderr)
            return 1
        journal = JOURNAL.read()
        served_by = {e["pid"] for e in journal if e["ev"] in ("handle", "worker_start")}
        result = {
            "strategy": args.strategy, "family": args.family, "scenario": args.scenario,
            "master_pid": os.getpid(),
            "observed": observed,
            "journal": journal,
            "leaks": observed.pop("leaks"),
            "alive_after_close": sorted(pid for pid in served_by if pid != os.getpid() and alive(pid)),
        }
        print(json.dumps(result), flush=True)
        return 0
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
