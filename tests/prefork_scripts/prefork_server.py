"""One server on a Prefork pool, run in a fresh interpreter by tests/test_prefork.py.

stdout carries machine-readable lines only:

* ``ready <address> <master pid>`` once every worker has reported ready
  (``<address>`` is a port, or a path for Unix sockets);
* ``worker-started <pid> <time>`` from each worker, with ``--crash-after-start``;
* ``stats <json>`` in answer to a ``stats`` line on stdin (``Prefork.stats()``);
* ``error <json>`` (exit status 2) if ``serve_forever()`` raised
  ``PreforkError`` (or its subclass ``WorkerBootError``);
* ``stopping`` when ``serve_forever()`` returned, ``children <json>`` (this
  process's child pids) and ``socket-file <bool>`` after ``Reactor.close()``.

Logs go to stderr. EOF on stdin stops the server: if the test dies, so does
the whole tree.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from handlers import PidDatagramHandler, PidStreamHandler, emit, on_stdin_lines, setup_process
from reactor import Prefork, PreforkError, Reactor, socketserver
from support import child_pids

SERVERS = {
    "tcp4": (socketserver.TCPServer, ("127.0.0.1", 0), PidStreamHandler),
    "tcp6": (socketserver.TCPServer, ("::1", 0), PidStreamHandler),
    "udp4": (socketserver.UDPServer, ("127.0.0.1", 0), PidDatagramHandler),
    "unix": (socketserver.UnixStreamServer, None, PidStreamHandler),
    "unix-dgram": (socketserver.UnixDatagramServer, None, PidDatagramHandler),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="tcp4", choices=sorted(SERVERS))
    parser.add_argument("--path", help="socket path for the Unix families")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--max-requests", type=int, default=0)
    parser.add_argument("--max-requests-jitter", type=int, default=0)
    parser.add_argument("--heartbeat-timeout", type=float, default=30.0)
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    parser.add_argument("--fail-boot", action="store_true", help="on_worker_start raises")
    parser.add_argument("--boot-gate", help="on_worker_start connects to this Unix socket path and waits for a "
                                            "byte there (EOF: it raises)")
    parser.add_argument("--crash-after-start", action="store_true",
                        help="each worker prints worker-started <pid> <monotonic time>, then exits 1 in its first tick")
    args = parser.parse_args()
    setup_process()

    server_class, address, handler = SERVERS[args.family]
    if args.crash_after_start:
        class CrashingServer(server_class):  # type: ignore[valid-type,misc]
            def hosting_started(self, hosted: Any) -> None:
                emit("worker-started", os.getpid(), time.monotonic())
                hosted.reactor.call_soon(os._exit, 1)

        server_class = CrashingServer
    server = server_class(address if address is not None else args.path, handler)

    def fail_boot() -> None:
        raise RuntimeError("boom: the worker cannot open its resources")

    def wait_at_the_gate() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gate:
            gate.settimeout(30)
            gate.connect(args.boot_gate)
            if not gate.recv(1):
                raise RuntimeError("the boot gate closed")

    on_worker_start = fail_boot if args.fail_boot else wait_at_the_gate if args.boot_gate else None
    prefork = Prefork(args.workers, args.threads, args.max_requests, args.max_requests_jitter,
                      args.heartbeat_timeout, args.graceful_timeout,
                      on_worker_start=on_worker_start, handle_signals=True)
    reactor = Reactor()
    reactor.add_server(server, prefork)

    bound = server.server_address
    shown = bound[1] if isinstance(bound, tuple) else bound

    def announce_when_ready() -> None:
        if len(prefork.stats()["ready"]) >= args.workers:
            emit("ready", shown, os.getpid())
        else:
            reactor.call_later(0.01, announce_when_ready)

    on_stdin_lines(reactor, {b"stats": lambda: emit("stats", json.dumps(prefork.stats()))})
    reactor.call_soon(announce_when_ready)
    status = 0
    try:
        reactor.serve_forever()
    except PreforkError as exc:  # WorkerBootError included
        emit("error", json.dumps({"type": type(exc).__name__, "error": str(exc), "stats": prefork.stats()}))
        status = 2
    emit("stopping")
    reactor.close()
    emit("children", json.dumps(sorted(child_pids())))
    if args.path:
        emit("socket-file", json.dumps(os.path.exists(args.path)))
    return status


if __name__ == "__main__":
    sys.exit(main())
