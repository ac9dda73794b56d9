"""The drop-in socketserver with a Prefork strategy, run by tests/test_prefork.py.

``socketserver.TCPServer(address, Handler, dispatch=Prefork(2, handle_signals=True)).serve_forever()``,
stopped by SIGTERM. stdout: ``ready <port> <master pid>`` before serving (the
workers start inside serve_forever(); clients wait in the backlog meanwhile),
then ``stopped`` and ``children <json>`` after server_close().
"""

from __future__ import annotations

import json
import os
import sys

from handlers import PidStreamHandler, emit, setup_process
from reactor import Prefork, socketserver
from support import child_pids


def main() -> int:
    setup_process()
    server = socketserver.TCPServer(("127.0.0.1", 0), PidStreamHandler, dispatch=Prefork(2, handle_signals=True))
    emit("ready", server.server_address[1], os.getpid())
    try:
        server.serve_forever()
    finally:
        server.server_close()
    emit("stopped")
    emit("children", json.dumps(sorted(child_pids())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
