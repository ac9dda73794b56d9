#!/usr/bin/env python3
"""One Reactor, three dispatch strategies: Prefork TCP echo, ThreadPool UDP echo, an inline admin socket.

What it shows
-------------
* Each server picks where its requests run with ``add_server(server, dispatch=...)``:

  - a TCP echo server on ``Prefork(workers=2)``: its requests run in worker
    processes that accept from the shared socket; this process (the master)
    only supervises them;
  - a UDP echo server on ``ThreadPool(max_workers=4)``: its requests run on
    reused worker threads of this process;
  - an admin server on a Unix socket, ``Inline`` (the default): its handler
    runs in the reactor's own thread. That is why it may read the reactor's
    state (``Prefork.worker_pids``) without a lock; it is also why it must be
    quick, so it answers one command per connection and gives a silent
    client 2 seconds.

* Order matters: the Prefork server is added FIRST. Adding it forks the
  arbiter, which refuses to fork while other threads run (the ThreadPool
  starts its threads with its first request, ``--once`` starts a client
  thread). Forking first also means the workers do not inherit the other
  servers' sockets.
* Counting requests across processes: each prefork worker writes one byte
  per request into a pipe created before the fork; the master reads it in
  its loop (``add_reader``). The pool and the admin count in-process.

The admin protocol is one line in, one line out, then the server closes:

* ``stats``   -> ``requests tcp-echo=N udp-echo=N admin=N; pool threads=N idle=N running=N queued=N done=N``
  (the ``pool`` part is the ThreadPool's ``stats()``);
* ``workers`` -> ``workers <pid> <pid> ...`` (the prefork worker pids);
* anything else -> ``error: unknown command '<it>'``.

Run it
------
::

    python examples/mixed.py --once         # talk to all three servers, print the admin's answers, exit
    python examples/mixed.py --port 8000 --udp-port 8001 --path /tmp/admin.sock
                                            # serve until Ctrl-C or SIGTERM, then:
    echo hello | nc 127.0.0.1 8000          # -> worker <pid> echoes: hello
    echo -n hello | nc -u -w1 127.0.0.1 8001
    echo stats | nc -U /tmp/admin.sock

The master handles the Prefork signals (opted in with
``Prefork(..., handle_signals=True)``: SIGHUP rolling restart, SIGTTIN /
SIGTTOU one worker more / fewer, SIGTERM / SIGINT graceful stop: the workers
finish their requests and exit, the socket file is removed, ``stopped`` is
printed, exit status 0).

Exit status: 0 on success, 1 if a server did not answer as expected or the
prefork pool failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from typing import Any, Callable

try:
    from reactor import Prefork, PreforkError, Reactor, ThreadPool, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Prefork, PreforkError, Reactor, ThreadPool, socketserver
from reactor.binding import describe_address

#: Every client socket gives up after this many seconds without an answer.
CLIENT_TIMEOUT = 5.0
#: How long the master waits for its workers to report ready.
BOOT_TIMEOUT = 30.0


# -- request counting -----------------------------------------------------------


class RequestCounts:
    """Requests served per server, as seen by the master.

    The prefork workers are other processes: each request they serve writes
    one byte into ``pipe``'s write end (inherited across the fork: passed
    in ``Prefork(keep_fds=...)``, since a child closes every descriptor it
    is not asked to keep); the master reads the bytes in its loop. Create it
    before the fork.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the pool's threads count too
        self._counts = {"tcp-echo": 0, "udp-echo": 0, "admin": 0}
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)  # a worker never blocks on a full pipe (it loses a count)

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def collect_from_workers(self) -> None:
        """Read what the workers reported so far (in the master's loop)."""
        while True:
            try:
                data = os.read(self.read_fd, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            with self._lock:
                self._counts["tcp-echo"] += len(data)

    def snapshot(self) -> dict[str, int]:
        self.collect_from_workers()  # what a worker wrote before it answered is counted
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


# -- the servers ------------------------------------------------------------------


class PreforkEchoServer(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address: Any, counts: RequestCounts) -> None:
        self.counts = counts
        super().__init__(address, TCPEchoHandler)


class TCPEchoHandler(socketserver.StreamRequestHandler):
    """Runs in a prefork worker process: ``worker <pid> echoes: <line>``."""

    timeout = 10.0
    server: PreforkEchoServer

    def handle(self) -> None:
        try:
            line = self.rfile.readline()
        except TimeoutError:
            return
        try:
            os.write(self.server.counts.write_fd, b"+")  # tell the master: one request more
        except BlockingIOError:
            pass  # the master is behind on reading: skip this count rather than block
        self.wfile.write(f"worker {os.getpid()} echoes: ".encode() + line)


class PoolEchoServer(socketserver.UDPServer):
    def __init__(self, address: Any, counts: RequestCounts) -> None:
        self.counts = counts
        super().__init__(address, UDPEchoHandler)


class UDPEchoHandler(socketserver.DatagramRequestHandler):
    """Runs on a ThreadPool thread: ``<thread name> echoes: <datagram>``."""

    server: PoolEchoServer

    def handle(self) -> None:
        data = self.rfile.read()
        self.server.counts.add("udp-echo")
        self.wfile.write(f"{threading.current_thread().name} echoes: ".encode() + data)


class AdminServer(socketserver.UnixStreamServer):
    def __init__(self, path: str, counts: RequestCounts, pool: ThreadPool, prefork: Prefork) -> None:
        self.counts = counts
        self.pool = pool
        self.prefork = prefork
        super().__init__(path, AdminHandler)


class AdminHandler(socketserver.StreamRequestHandler):
    """Runs inline, in the reactor's thread: one command, one answer."""

    timeout = 2.0  # inline: a silent client holds the whole loop, so not for long
    server: AdminServer

    def handle(self) -> None:
        server = self.server
        server.counts.add("admin")
        try:
            command = self.rfile.readline(256).strip().decode("utf-8", "replace")
        except TimeoutError:
            return
        if command == "stats":
            requests = " ".join(f"{name}={count}" for name, count in server.counts.snapshot().items())
            pool = " ".join(f"{name}={value}" for name, value in server.pool.stats().items())
            answer = f"requests {requests}; pool {pool}"
        elif command == "workers":
            answer = "workers " + " ".join(str(pid) for pid in server.prefork.worker_pids)
        else:
            answer = f"error: unknown command {command!r}"
        self.wfile.write(answer.encode() + b"\n")


def describe(server: Any) -> str:
    return describe_address(server.socket.family, server.socket.type, server.server_address)


def wait_for_workers(reactor: Reactor, prefork: Prefork) -> bool:
    """Run the master's loop until every worker reported ready (True) or a stop signal came (False).

    Raises:
        PreforkError: the workers did not get ready within BOOT_TIMEOUT.
    """
    deadline = time.monotonic() + BOOT_TIMEOUT
    while len(prefork.stats()["ready"]) < prefork.workers:
        if reactor.stopping:
            return False
        if time.monotonic() > deadline:
            raise PreforkError(f"the workers were not ready within {BOOT_TIMEOUT:g}s: {prefork.stats()}")
        reactor.run_once(0.1)  # the arbiter's reports arrive through the master's loop
    return True


# -- the --once clients -------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Check ``predicate`` every few milliseconds until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # polling a condition, with a deadline: not sequencing by sleeping
    return True


def stream_exchange(family: int, address: Any, line: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(address)
        sock.sendall(line)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def datagram_exchange(address: Any, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.sendto(data, address)
        return sock.recvfrom(65535)[0]


def run_clients(tcp: Any, udp: Any, admin: Any, pool: ThreadPool) -> bool:
    """Talk to the three servers; True when each answered as expected."""
    def check(label: str, sent: bytes, answer: bytes, ok: bool) -> bool:
        print(f"{label}: sent {sent!r}, received {answer!r}", flush=True)
        if not ok:
            print(f"error: {label}: unexpected answer {answer!r}", file=sys.stderr, flush=True)
        return ok

    try:
        sent = b"hello prefork\n"
        answer = stream_exchange(socket.AF_INET, tcp.server_address, sent)
        served_by, _, echoed = answer.partition(b" echoes: ")
        if not check("tcp echo (Prefork)", sent, answer,
                     echoed == sent and served_by.startswith(b"worker ")
                     and served_by[7:] != str(os.getpid()).encode()):
            return False
        sent = b"hello pool"
        answer = datagram_exchange(udp.server_address, sent)
        if not check("udp echo (ThreadPool)", sent, answer, answer == b"udp-pool-worker-1 echoes: " + sent):
            return False
        # The answer leaves before the worker's bookkeeping: wait for it, so the stats below are exact.
        if not wait_until(lambda: pool.stats()["idle"] == 1, CLIENT_TIMEOUT):
            print(f"error: the pool did not settle: {pool.stats()}", file=sys.stderr, flush=True)
            return False
        for command, expected_start in [(b"stats\n", b"requests tcp-echo=1 udp-echo=1 admin=1; pool "),
                                        (b"workers\n", b"workers "),
                                        (b"restart\n", b"error: unknown command 'restart'\n")]:
            answer = stream_exchange(socket.AF_UNIX, admin.server_address, command)
            if not check("admin (Inline)", command, answer, answer.startswith(expected_start)):
                return False
    except OSError as exc:
        print(f"error: client: {exc!r}", file=sys.stderr, flush=True)
        return False
    return True


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address of the echo servers (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="TCP echo (Prefork) port (default: 0, any free port)")
    parser.add_argument("--udp-port", type=int, default=0, help="UDP echo (ThreadPool) port (default: 0)")
    parser.add_argument("--path", help="admin Unix socket path (default: admin.sock in a fresh temp dir)")
    parser.add_argument("--workers", type=int, default=2, help="prefork worker processes (default: 2)")
    parser.add_argument("--once", action="store_true", help="talk to each server, print the answers, exit")
    return parser.parse_args(argv)


def host_servers(reactor: Reactor, options: argparse.Namespace, counts: RequestCounts, prefork: Prefork,
                 pool: ThreadPool) -> tuple[Any, Any, Any]:
    """Create the three servers and add them to ``reactor``, the Prefork one first; print where they listen."""
    tcp = PreforkEchoServer((options.host, options.port), counts)
    try:
        reactor.add_server(tcp, dispatch=prefork)  # FIRST: forks the arbiter while this process has one thread
    except BaseException:
        tcp.server_close()
        raise
    udp = PoolEchoServer((options.host, options.udp_port), counts)
    reactor.add_server(udp, dispatch=pool)
    admin = AdminServer(options.path, counts, pool, prefork)
    reactor.add_server(admin)  # Inline, the default
    print(f"listening on {describe(tcp)}  (echo, {prefork!r})", flush=True)
    print(f"listening on {describe(udp)}  (echo, {pool!r})", flush=True)
    print(f"listening on {describe(admin)}  (admin, Inline)", flush=True)
    return tcp, udp, admin


def demonstrate(reactor: Reactor, tcp: Any, udp: Any, admin: Any, pool: ThreadPool) -> bool:
    """The --once run: the clients in a thread, the reactor here until they are done."""
    outcome: list[bool] = []

    def clients() -> None:
        try:
            outcome.append(run_clients(tcp, udp, admin, pool))
        finally:
            reactor.stop()  # thread-safe

    thread = threading.Thread(target=clients, name="clients")
    thread.start()  # after the fork
    reactor.serve_forever()
    thread.join()
    if outcome != [True]:
        return False
    print("ok: three servers, three dispatch strategies, one reactor", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    temp_dir = None
    if options.path is None:
        temp_dir = tempfile.mkdtemp(prefix="rx-mixed-", dir="/tmp")  # short: Unix paths max out near 108 bytes
        options.path = os.path.join(temp_dir, "admin.sock")
    counts = RequestCounts()  # its pipe must exist before the fork
    # A child keeps only what it needs: the workers' end of the counting pipe is asked for.
    prefork = Prefork(workers=options.workers, handle_signals=True, keep_fds=[counts.write_fd])
    pool = ThreadPool(max_workers=4, name="udp-pool")
    status = 1
    try:
        with Reactor() as reactor:  # leaving the block stops the workers and closes every server
            tcp, udp, admin = host_servers(reactor, options, counts, prefork, pool)
            reactor.add_reader(counts.read_fd, counts.collect_from_workers)
            try:
                if not wait_for_workers(reactor, prefork):
                    status = 0  # SIGTERM or Ctrl-C while the workers were starting
                else:
                    print(f"master {os.getpid()}, workers {' '.join(map(str, prefork.worker_pids))}", flush=True)
                    if options.once:
                        status = 0 if demonstrate(reactor, tcp, udp, admin, pool) else 1
                    else:
                        reactor.serve_forever()  # until SIGTERM or SIGINT (handlers installed by Prefork)
                        status = 0
            except PreforkError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                status = 1
            finally:
                reactor.remove_reader(counts.read_fd)
        # The Reactor is closed: the workers and the arbiter have exited, every socket is closed.
        if os.path.exists(options.path):
            print(f"error: the socket file {options.path} was left behind", file=sys.stderr, flush=True)
            return 1
    finally:
        counts.close()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    print("stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
