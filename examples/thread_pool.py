#!/usr/bin/env python3
"""A ThreadPool server under load: at most 4 worker threads, a queue of 2, the rest in the kernel backlog.

What it shows
-------------
* ``reactor.add_server(server, dispatch=ThreadPool(max_workers=4, max_pending=2))``:
  the reactor's thread only takes connections; each request's handler runs on
  one of at most 4 reused worker threads (never a thread per request).
* Backpressure. When 4 handlers are running and 2 taken requests wait in the
  pool's queue, the pool is full: the reactor stops reading the listening
  socket, so further clients wait in the kernel's accept backlog (up to
  ``request_queue_size``, here 128), not in this process's memory. As soon as
  a worker frees up, the reactor takes connections again.
* A slow handler without ``sleep()``: it reads a job line, then waits for the
  client's second line (``go``) and answers with the name of the worker thread
  that ran it. The client decides how long the handler stays busy.

``--once`` starts 12 clients at once. Each sends its job line and holds back
its ``go`` line, which fills the pool: the example prints ``pool.stats()``
(4 running, 2 queued; the other 6 clients are still in the backlog). Then the
clients send ``go``, every one of them gets its answer, and the answers name
4 distinct worker threads.

Run it
------
::

    python examples/thread_pool.py --once          # the 12-client demonstration, then exit
    python examples/thread_pool.py --port 8000     # serve until Ctrl-C or SIGTERM, then:
    printf 'job 1\\ngo\\n' | nc 127.0.0.1 8000     # -> job 1 done by pool-worker-1

Exit status: 0 on success (``--once``: every client got its answer), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

try:
    from reactor import Reactor, ThreadPool, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Reactor, ThreadPool, socketserver
from reactor.binding import describe_address

MAX_WORKERS = 4
MAX_PENDING = 2
#: How many clients ``--once`` starts at once: more than the pool takes.
CLIENTS = 12
#: Every client socket gives up after this many seconds without an answer.
CLIENT_TIMEOUT = 5.0
#: How long ``--once`` waits for the pool to reach a state it expects.
STATE_TIMEOUT = 10.0


# -- the server ---------------------------------------------------------------


class JobServer(socketserver.TCPServer):
    allow_reuse_address = True
    request_queue_size = 128  # the kernel backlog: where clients wait while the pool is full


class JobHandler(socketserver.StreamRequestHandler):
    """Read ``<job>``, wait for the client's ``go`` line, answer ``<job> done by <worker thread>``."""

    timeout = 30.0  # a client that never says "go" frees its worker after this long

    def handle(self) -> None:
        try:
            job = self.rfile.readline().strip().decode("utf-8", "replace")
            self.rfile.readline()  # the slow part: the worker is busy until the client says "go"
        except TimeoutError:
            return  # the client went quiet: close without an answer
        worker = threading.current_thread().name
        self.wfile.write(f"{job} done by {worker}\n".encode())


# -- the --once clients -----------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Check ``predicate`` every few milliseconds until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # polling a condition, with a deadline: not sequencing by sleeping
    return True


def read_line(sock: socket.socket) -> bytes:
    """One line from ``sock`` (b"" if the server closed first); the socket's timeout applies."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def fail(message: str) -> bool:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return False


def run_clients(address: Any, pool: ThreadPool) -> bool:
    """The --once demonstration; True when every client got its answer from at most MAX_WORKERS threads."""
    clients: list[socket.socket] = []
    try:
        for n in range(1, CLIENTS + 1):
            sock = socket.create_connection(address, timeout=CLIENT_TIMEOUT)
            clients.append(sock)
            sock.sendall(f"job {n}\n".encode())
        print(f"{CLIENTS} clients connected; each sent 'job N' and holds back its 'go' line", flush=True)

        full = {"threads": MAX_WORKERS, "idle": 0, "running": MAX_WORKERS, "queued": MAX_PENDING, "done": 0}
        if not wait_until(lambda: pool.stats() == full, STATE_TIMEOUT):
            return fail(f"the pool never filled up: {pool.stats()}, expected {full}")
        taken = MAX_WORKERS + MAX_PENDING
        print(f"pool full: pool.stats() = {pool.stats()}", flush=True)
        print(f"taken: {taken} ({MAX_WORKERS} running, {MAX_PENDING} queued); "
              f"waiting in the kernel backlog: {CLIENTS - taken}", flush=True)

        for sock in clients:
            sock.sendall(b"go\n")
        print(f"all {CLIENTS} clients sent 'go'", flush=True)
        workers = set()
        for n, sock in enumerate(clients, 1):
            answer = read_line(sock).decode("utf-8", "replace").strip()
            print(f"client {n}: {answer!r}", flush=True)
            job, _, worker = answer.partition(" done by ")
            if job != f"job {n}" or not worker:
                return fail(f"client {n}: unexpected answer {answer!r}")
            workers.add(worker)

        idle = {"threads": MAX_WORKERS, "idle": MAX_WORKERS, "running": 0, "queued": 0, "done": CLIENTS}
        if not wait_until(lambda: pool.stats() == idle, STATE_TIMEOUT):
            return fail(f"the pool did not settle: {pool.stats()}, expected {idle}")
        print(f"pool idle: pool.stats() = {pool.stats()}", flush=True)
        print(f"worker threads seen: {', '.join(sorted(workers))}", flush=True)
        if len(workers) > MAX_WORKERS:
            return fail(f"{len(workers)} worker threads served the clients; max_workers={MAX_WORKERS}")
        print(f"ok: {CLIENTS} clients served by {len(workers)} worker threads "
              f"(max_workers={MAX_WORKERS}, max_pending={MAX_PENDING})", flush=True)
        return True
    except OSError as exc:
        return fail(f"client: {exc!r}")
    finally:
        for sock in clients:
            sock.close()


# -- main -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    parser.add_argument("--once", action="store_true",
                        help=f"run {CLIENTS} clients against the server, print what happened, exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    pool = ThreadPool(max_workers=MAX_WORKERS, max_pending=MAX_PENDING, drain_timeout=5.0, name="pool")
    with Reactor() as reactor:  # leaving the block closes the server and stops the pool's threads
        server = JobServer((options.host, options.port), JobHandler)
        reactor.add_server(server, dispatch=pool)
        where = describe_address(server.socket.family, server.socket.type, server.server_address)
        print(f"listening on {where}", flush=True)

        stopped_by: list[int] = []

        def on_signal(signum: int) -> None:  # runs in the reactor's loop, not in a signal handler
            stopped_by.append(signum)
            reactor.stop()

        reactor.add_signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
        reactor.add_signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)

        if not options.once:
            print(f"serving with ThreadPool(max_workers={MAX_WORKERS}, max_pending={MAX_PENDING}) "
                  "until Ctrl-C or SIGTERM", flush=True)
            reactor.serve_forever()
            print(f"stopped by {signal.Signals(stopped_by[0]).name}" if stopped_by else "stopped", flush=True)
            return 0

        outcome: list[bool] = []

        def clients() -> None:
            try:
                outcome.append(run_clients(server.server_address, pool))
            finally:
                reactor.stop()  # thread-safe: serve_forever() below returns

        thread = threading.Thread(target=clients, name="clients")
        thread.start()
        reactor.serve_forever()
        thread.join()
    return 0 if outcome == [True] else 1


if __name__ == "__main__":
    sys.exit(main())
