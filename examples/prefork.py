#!/usr/bin/env python3
"""A Prefork server: worker processes accept from one shared socket, a master supervises them.

What it shows
-------------
* ``reactor.add_server(server, dispatch=Prefork(workers=2, max_requests=0))``
  binds nothing new: the server's socket is bound in this process (the
  *master*) before any fork. Adding the server forks a single-threaded
  *arbiter*, which forks the *workers* (and a *standby*, ready to replace
  the arbiter should it die); each worker runs its own Reactor and accepts
  straight from the inherited socket. The master never touches a request. So add Prefork servers before starting any thread (``--once``
  starts its client thread afterwards).
* The handler answers with ``os.getpid()``: every answer names the worker
  process that served it, never the master.
* ``Prefork.worker_pids`` and ``Prefork.stats()`` are the master's view of its
  workers, as the arbiter reports them. ``reactor.server_stats(server)`` (the
  same as ``Prefork.stats()``) also sums the server's counters over the
  workers, in the same shape as for ``Inline`` or ``ThreadPool`` hosting; the
  workers report them with their heartbeats, so they arrive within a second.
* ``--max-requests N`` recycles a worker after N requests: it finishes the
  request, exits, and the arbiter starts a fresh one (new pid).

Signals (sent to the master; ``Prefork(..., handle_signals=True)`` installs
these handlers on the master's Reactor, when the server is added from the main
thread; without that opt-in a Prefork server leaves signals alone):

* ``SIGHUP``: rolling restart. A new set of workers starts; each old worker
  retires gracefully as a new one is ready, so the socket never goes unserved.
* ``SIGTTIN`` / ``SIGTTOU``: one worker more / one fewer (never below one).
* ``SIGTERM`` / ``SIGINT`` (Ctrl-C): graceful stop. The master's loop stops,
  and closing the Reactor lets the workers finish their requests, stops them
  and the arbiter, closes the socket (and removes a Unix socket file). The
  example then prints ``stopped`` and exits 0, leaving no process behind.

While serving, the example prints ``workers now <pids>`` whenever the set of
workers changes, so you can watch the signals work.

Run it
------
::

    python examples/prefork.py --once                   # 10 clients; who served each, then exit
    python examples/prefork.py --once --max-requests 3  # the same, workers recycled every 3 requests
    python examples/prefork.py --port 8000 --workers 4  # serve until SIGTERM or Ctrl-C; prints
                                                        # "master <pid>, workers <pids>"
    python examples/prefork.py --path /tmp/pf.sock      # the same on a Unix stream socket
    echo hi | nc 127.0.0.1 8000                         # -> served by worker <pid>
    kill -HUP <master pid>                              # rolling restart: new pids
    kill -TTIN <master pid>; kill -TTOU <master pid>    # one worker more, one fewer

Exit status: 0 on success; 1 if a client got no answer, the workers did not
start, or the pool failed (``PreforkError``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from typing import Any

try:
    from reactor import Prefork, PreforkError, Reactor, socketserver
except ImportError:  # run from a source checkout without `make bootstrap`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from reactor import Prefork, PreforkError, Reactor, socketserver
from reactor.binding import describe_address

#: How many requests ``--once`` makes, one after the other.
CLIENTS = 10
#: Every client socket gives up after this many seconds without an answer.
CLIENT_TIMEOUT = 5.0
#: How long the master waits for its first workers to report ready.
BOOT_TIMEOUT = 30.0
#: How long ``--once`` waits for the workers' counters to reach the master.
STATS_TIMEOUT = 10.0
#: The pool's own keys in ``Prefork.stats()``; the others are the server's counters.
POOL_KEYS = ("workers", "pids", "ready", "arbiter", "spawned")
#: How often the serving master looks for a change in its workers (to print it).
WATCH_INTERVAL = 0.1


# -- the server -----------------------------------------------------------------


class PidHandler(socketserver.StreamRequestHandler):
    """Read one line, answer ``served by worker <pid>``."""

    timeout = 10.0  # a silent client frees its worker after this long

    def handle(self) -> None:
        try:
            self.rfile.readline()
        except TimeoutError:
            return
        self.wfile.write(f"served by worker {os.getpid()}\n".encode())


class PidServer(socketserver.TCPServer):
    allow_reuse_address = True


def pids_text(pids: Any) -> str:
    return " ".join(str(pid) for pid in sorted(pids))


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


def processes_left(pids: list[int]) -> list[int]:
    """The pids in ``pids`` that still exist."""
    left = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        left.append(pid)
    return left


# -- the --once clients -----------------------------------------------------------


def ask(family: int, address: Any, message: bytes) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(address)
        sock.sendall(message)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


def run_clients(family: int, address: Any, served: list[int]) -> bool:
    """Make CLIENTS requests one after the other; record the pid that served each."""
    for n in range(1, CLIENTS + 1):
        message = f"hello {n}\n".encode()
        try:
            answer = ask(family, address, message)
        except OSError as exc:
            print(f"error: client {n}: no answer: {exc!r}", file=sys.stderr, flush=True)
            return False
        print(f"client {n}: sent {message!r}, received {answer!r}", flush=True)
        words = answer.split()
        if len(words) != 4 or words[:3] != [b"served", b"by", b"worker"] or not words[3].isdigit():
            print(f"error: client {n}: unexpected answer {answer!r}", file=sys.stderr, flush=True)
            return False
        served.append(int(words[3]))
    return True


def demonstrate(reactor: Reactor, prefork: Prefork, server: Any) -> bool:
    """The --once run: the clients in a thread, the master's loop here until they are done."""
    family = server.socket.family
    served: list[int] = []
    outcome: list[bool] = []

    def clients() -> None:
        try:
            outcome.append(run_clients(family, server.server_address, served))
        finally:
            reactor.stop()  # thread-safe

    thread = threading.Thread(target=clients, name="clients")
    thread.start()  # only now: the arbiter was forked while this process had one thread
    reactor.serve_forever()
    thread.join()
    print(f"Prefork.worker_pids: {prefork.worker_pids}", flush=True)
    stats = prefork.stats()
    print(f"Prefork.stats(), the pool's keys: { {key: stats[key] for key in POOL_KEYS} }", flush=True)
    if outcome != [True]:
        return False
    if os.getpid() in served:
        print("error: the master served a request", file=sys.stderr, flush=True)
        return False
    counts = {pid: served.count(pid) for pid in sorted(set(served))}
    shown = ", ".join(f"{pid} ({count})" for pid, count in counts.items())
    print(f"{len(served)} requests served by {len(counts)} worker processes: {shown}", flush=True)
    reactor.run_until(lambda: reactor.server_stats(server)["requests"] >= len(served), STATS_TIMEOUT)
    print(f"server_stats(server)['requests'], summed over the workers: "
          f"{reactor.server_stats(server)['requests']}", flush=True)
    return True


def serve_until_stopped(reactor: Reactor, prefork: Prefork) -> None:
    """Serve until SIGTERM or SIGINT (handlers installed by Prefork); print each change of the workers."""
    shown = prefork.worker_pids

    def watch_workers() -> None:
        nonlocal shown
        if prefork.worker_pids != shown:
            shown = prefork.worker_pids
            print(f"workers now {pids_text(shown)}", flush=True)
        reactor.call_later(WATCH_INTERVAL, watch_workers)

    reactor.call_later(WATCH_INTERVAL, watch_workers)
    reactor.serve_forever()


# -- main -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: 0, any free port)")
    parser.add_argument("--path", help="listen on this Unix socket path instead of TCP")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--max-requests", type=int, default=0,
                        help="recycle a worker after this many requests (default: 0, never)")
    parser.add_argument("--once", action="store_true",
                        help=f"make {CLIENTS} requests, print which worker served each, exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    prefork = Prefork(workers=options.workers, max_requests=options.max_requests, handle_signals=True)
    server: socketserver.TCPServer
    if options.path:
        server = socketserver.UnixStreamServer(options.path, PidHandler)
    else:
        server = PidServer((options.host, options.port), PidHandler)
    last_known: list[int] = []  # the arbiter and the workers, for the final check
    status = 1
    with Reactor() as reactor:  # leaving the block stops the workers and closes the server
        try:
            reactor.add_server(server, dispatch=prefork)  # forks the arbiter: before any thread starts
        except BaseException:
            server.server_close()
            raise
        where = describe_address(server.socket.family, server.socket.type, server.server_address)
        print(f"listening on {where}", flush=True)
        try:
            if not wait_for_workers(reactor, prefork):
                status = 0  # SIGTERM or Ctrl-C while the workers were starting
            else:
                print(f"master {os.getpid()}, workers {pids_text(prefork.worker_pids)}", flush=True)
                if options.once:
                    status = 0 if demonstrate(reactor, prefork, server) else 1
                else:
                    serve_until_stopped(reactor, prefork)
                    status = 0
        except PreforkError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            status = 1
        finally:
            last_known = [pid for pid in [prefork.arbiter_pid, *prefork.worker_pids] if pid]
    # The Reactor is closed: the workers finished, the arbiter reaped them, the master reaped the arbiter.
    left = processes_left(last_known)
    if left:
        print(f"error: processes left behind: {pids_text(left)}", file=sys.stderr, flush=True)
        return 1
    if options.path and os.path.exists(options.path):
        print(f"error: the socket file {options.path} was left behind", file=sys.stderr, flush=True)
        return 1
    print("stopped: the workers and the arbiter have exited", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
