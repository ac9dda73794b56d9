"""Measure how long shutdown() takes to stop serve_forever(poll_interval=0.5): stdlib vs reactor.

Run: ``python bench/measure_shutdown.py [runs]`` (default 20 runs per module).
Not a test (pytest does not collect it): it prints one summary line, e.g.
``stdlib median 251.3 ms, reactor median 0.2 ms``.

Each run starts a TCPServer, confirms it serves a request, waits a random
fraction of poll_interval (so the stdlib's polling loop is at a random phase,
as it would be in real use), then times ``shutdown()`` from another thread
until it returns (which is when serve_forever() has returned).
"""

from __future__ import annotations

import random
import socket
import socketserver as std_socketserver
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reactor import socketserver as rx_socketserver  # noqa: E402

POLL_INTERVAL = 0.5


class EchoHandler(std_socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def one_run(module: Any, rng: random.Random) -> float:
    server = module.TCPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL})
    thread.start()
    try:
        with socket.create_connection(server.server_address, timeout=5) as client:
            client.sendall(b"ping\n")
            assert client.recv(64) == b"ping\n"
        time.sleep(rng.uniform(0, POLL_INTERVAL))  # random phase of the stdlib's poll loop
        started = time.perf_counter()
        server.shutdown()
        elapsed = time.perf_counter() - started
        thread.join(5)
        assert not thread.is_alive()
        return elapsed
    finally:
        server.server_close()


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rng = random.Random(1234)
    medians = {}
    for name, module in (("stdlib", std_socketserver), ("reactor", rx_socketserver)):
        samples = [one_run(module, rng) for _ in range(runs)]
        medians[name] = statistics.median(samples) * 1000
    print(f"stdlib median {medians['stdlib']:.1f} ms, reactor median {medians['reactor']:.1f} ms "
          f"({runs} runs each, poll_interval={POLL_INTERVAL}, Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
