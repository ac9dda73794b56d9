"""Add a Prefork server and close the Reactor at once, a few times; run by tests/test_prefork.py.

Closing right away sends the arbiter its ``stop`` while it is still forking
the workers, so each new worker is told to stop moments after its fork.
Nothing is in flight, so every close() should return promptly, well before
``graceful_timeout`` (argv[2] seconds) would have the workers killed.

stdout: ``arbiter <pid>`` before each close(), ``closed <attempt>`` after it,
``children <json>`` at the end.
"""

from __future__ import annotations

import json
import sys

from handlers import PidStreamHandler, emit, setup_process
from reactor import Prefork, Reactor, socketserver
from support import child_pids


def main() -> int:
    setup_process()
    attempts, graceful_timeout = int(sys.argv[1]), float(sys.argv[2])
    for attempt in range(attempts):
        server = socketserver.TCPServer(("127.0.0.1", 0), PidStreamHandler)
        reactor = Reactor()
        prefork = Prefork(2, graceful_timeout=graceful_timeout)
        reactor.add_server(server, prefork)
        emit("arbiter", prefork.arbiter_pid)
        reactor.close()
        emit("closed", attempt)
    emit("children", json.dumps(sorted(child_pids())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
