"""One Reactor, three strategies, run by tests/test_prefork.py.

* an inline admin server on a Unix socket (argv[1]): a line ``workers`` gets
  the Prefork pool's ready worker pids as JSON, ``stats`` gets the pool's
  stats, the ThreadPool's stats and this process's thread names;
* a ThreadPool UDP server: any datagram gets ``<pid> <thread name>``;
* a Prefork TCP server replying with the worker's pid.

The Prefork server is added last but before the ThreadPool has started a
thread (its threads start with its first request). stdout: ``ready <tcp port>
<udp port> <master pid>`` once the workers are ready; after SIGTERM,
``stopping``, then ``children <json>`` and ``socket-file <bool>``. EOF on
stdin stops the server.
"""

from __future__ import annotations

import json
import os
import sys
import threading

from handlers import PidDatagramHandler, PidStreamHandler, emit, setup_process
from reactor import Prefork, Reactor, ThreadPool, socketserver
from support import child_pids


def main() -> int:
    setup_process()
    admin_path = sys.argv[1]
    pool = ThreadPool(2)
    prefork = Prefork(2, handle_signals=True)

    class AdminHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            command = self.rfile.readline().strip()
            if command == b"workers":
                reply: object = prefork.stats()["ready"]
            elif command == b"stats":
                reply = {"prefork": prefork.stats(), "pool": pool.stats(),
                         "threads": [t.name for t in threading.enumerate()]}
            else:
                reply = {"error": command.decode()}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    admin = socketserver.UnixStreamServer(admin_path, AdminHandler)
    udp = socketserver.UDPServer(("127.0.0.1", 0), PidDatagramHandler)
    tcp = socketserver.TCPServer(("127.0.0.1", 0), PidStreamHandler)
    reactor = Reactor()
    reactor.add_server(admin)
    reactor.add_server(udp, pool)
    reactor.add_server(tcp, prefork)

    def announce_when_ready() -> None:
        if len(prefork.stats()["ready"]) >= prefork.workers:
            emit("ready", tcp.server_address[1], udp.server_address[1], os.getpid())
        else:
            reactor.call_later(0.01, announce_when_ready)

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):  # the test is gone: so are we
            reactor.remove_reader(sys.stdin.fileno())
            reactor.stop()

    reactor.add_reader(sys.stdin.fileno(), on_stdin)
    reactor.call_soon(announce_when_ready)
    reactor.serve_forever()
    emit("stopping")
    reactor.close()
    emit("children", json.dumps(sorted(child_pids())))
    emit("socket-file", json.dumps(os.path.exists(admin_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
