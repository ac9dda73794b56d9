"""Two Prefork pools beside a ThreadPool and an Inline server on one Reactor; run by tests/test_prefork.py.

argv: ``<unix dir> [--graceful-timeout S] [--workers N]``. The servers, added
in this order (the Prefork pools last, before any thread starts):

* ``pooled``: TCP on a ``ThreadPool(2)``, replies with this process's pid;
* ``udp``: UDP, inline, replies ``<pid> <thread name>``;
* ``a``: TCP on ``Prefork(N, keep_fds=[<unix dir>/kept.txt])``;
* ``b``: a Unix stream socket ``<unix dir>/b.sock`` on ``Prefork(N)``.

The root logger also writes to ``<unix dir>/log.txt`` (a FileHandler opened
before the forks: the children must keep its descriptor).

stdout: ``ready <json>`` once both pools are ready (master pid, addresses,
the listeners' socket inodes, the log and kept files' paths); ``stats <json>``
(``{"a": ..., "b": ...}``) for a ``stats`` line on stdin; ``closed-pooled``
after a ``close-pooled`` line (remove_server + server_close of the ThreadPool
server); after SIGTERM ``stopping``, then ``children <json>``. EOF on stdin
stops the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from handlers import PidDatagramHandler, PidStreamHandler, emit, on_stdin_lines, setup_process
from reactor import Prefork, Reactor, ThreadPool, socketserver
from support import child_pids


class ReusableTCPServer(socketserver.TCPServer):
    # Its connections then carry SO_REUSEADDR too, so one left in TIME_WAIT
    # (or FIN_WAIT) by the test's request does not hold the port: only a
    # socket still LISTENing on it (a child that kept the listener) does.
    allow_reuse_address = True


def inode(server: socketserver.BaseServer) -> str:
    return os.readlink(f"/proc/self/fd/{server.fileno()}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--graceful-timeout", type=float, default=30.0)
    args = parser.parse_args()
    setup_process()
    log_path = os.path.join(args.dir, "log.txt")
    kept_path = os.path.join(args.dir, "kept.txt")
    file_handler = logging.FileHandler(log_path)
    file_handler.setFormatter(logging.Formatter("%(process)d %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(file_handler)
    kept = open(kept_path, "w")

    pooled = ReusableTCPServer(("127.0.0.1", 0), PidStreamHandler)
    udp = socketserver.UDPServer(("127.0.0.1", 0), PidDatagramHandler)
    a = socketserver.TCPServer(("127.0.0.1", 0), PidStreamHandler)
    b = socketserver.UnixStreamServer(os.path.join(args.dir, "b.sock"), PidStreamHandler)
    pools = {
        "a": Prefork(args.workers, graceful_timeout=args.graceful_timeout, handle_signals=True, keep_fds=[kept]),
        "b": Prefork(args.workers, graceful_timeout=args.graceful_timeout, handle_signals=True),
    }
    reactor = Reactor()
    reactor.add_server(pooled, ThreadPool(2))
    reactor.add_server(udp)
    reactor.add_server(a, pools["a"])
    reactor.add_server(b, pools["b"])

    def stats() -> dict[str, object]:
        return {name: pool.stats() for name, pool in pools.items()}

    def announce_when_ready() -> None:
        if all(len(pool.stats()["ready"]) >= args.workers for pool in pools.values()):
            emit("ready", json.dumps({
                "master": os.getpid(),
                "pooled": pooled.server_address[1], "udp": udp.server_address[1],
                "a": a.server_address[1], "b": b.server_address,
                "inodes": {"pooled": inode(pooled), "udp": inode(udp), "a": inode(a), "b": inode(b)},
                "log": log_path, "kept": kept_path,
            }))
        else:
            reactor.call_later(0.01, announce_when_ready)

    def close_pooled() -> None:
        # From a callback, the pool finishes its requests in the background first.
        reactor.remove_server(pooled, on_removed=lambda: (pooled.server_close(), emit("closed-pooled")))

    on_stdin_lines(reactor, {b"stats": lambda: emit("stats", json.dumps(stats())), b"close-pooled": close_pooled})
    reactor.call_soon(announce_when_ready)
    reactor.serve_forever()
    emit("stopping")
    reactor.close()
    if pooled.fileno() >= 0:
        pooled.server_close()
    kept.close()
    emit("children", json.dumps(sorted(child_pids())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
