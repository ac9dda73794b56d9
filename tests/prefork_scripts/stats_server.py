"""One TCP server under a chosen strategy, for the ``server_stats`` tests in tests/test_prefork.py.

stdout carries machine-readable lines only:

* ``ready <port> <master pid>`` once the server serves (under Prefork: every
  worker has reported ready);
* ``stats <json>`` in answer to a ``stats`` line on stdin
  (``Reactor.server_stats(server)``, read in the reactor's thread);
* ``stopping`` when ``serve_forever()`` returned, ``children <json>`` after
  ``Reactor.close()``.

With ``--admission``, the server has connection options: it refuses
127.0.0.2 (``deny``) and allows 8 connections per client IP. Logs go to
stderr. EOF on stdin stops the server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from handlers import PidStreamHandler, emit, on_stdin_lines, setup_process
from reactor import Prefork, Reactor, ThreadPool, socketserver
from support import child_pids


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="prefork", choices=["inline", "threadpool", "prefork"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--heartbeat-timeout", type=float, default=4.0)
    parser.add_argument("--admission", action="store_true")
    args = parser.parse_args()
    setup_process()

    server = socketserver.TCPServer(("127.0.0.1", 0), PidStreamHandler)
    options: dict[str, Any] = {}
    if args.admission:
        options.update(deny=["127.0.0.2/32"], max_connections_per_ip=8)
    reactor = Reactor()
    prefork = None
    if args.strategy == "prefork":
        prefork = Prefork(args.workers, heartbeat_timeout=args.heartbeat_timeout, graceful_timeout=5.0)
        reactor.add_server(server, prefork, **options)
    else:
        reactor.add_server(server, ThreadPool(2) if args.strategy == "threadpool" else None, **options)

    def announce_when_ready() -> None:
        if prefork is None or len(prefork.stats()["ready"]) >= args.workers:
            emit("ready", server.server_address[1], os.getpid())
        else:
            reactor.call_later(0.01, announce_when_ready)

    on_stdin_lines(reactor, {b"stats": lambda: emit("stats", json.dumps(reactor.server_stats(server)))})
    reactor.call_soon(announce_when_ready)
    reactor.serve_forever()
    emit("stopping")
    reactor.close()
    emit("children", json.dumps(sorted(child_pids())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
