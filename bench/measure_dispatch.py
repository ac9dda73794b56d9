"""Measure reactor's dispatch strategies against their stdlib equivalents, same run, as ratios.

Run: ``python bench/measure_dispatch.py [--seconds 2] [--rounds 3]``

Pairs (server of the left over server of the right, short-connection echo
unless said):

* ``ThreadPool(8)`` vs ``ThreadingTCPServer``
* ``Prefork(2)`` vs ``ForkingTCPServer``
* ``Inline`` vs ``TCPServer``
* ``Prefork(2)`` vs ``Inline`` on a handler that burns ~1 ms of CPU

Each server runs in a fresh interpreter (listen backlog 1024 for all); the
load comes from a separate process running an asyncio client with 32
connections in flight. The pair is run A B A B ... ``--rounds`` times and the
report gives the median of the per-round ratios, plus each side's median
rate. This machine's speed drifts between phases, so only ratios mean much.

This is a quick Python-client measurement, and the client shares the two
cores with the server: it understates the fastest servers. ``make bench``
(issue 5) is the full benchmark with a C load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SERVER = r"""
import os, signal, sys, time
sys.path.insert(0, {repo!r})
import socketserver as std
from reactor import Inline, Prefork, ThreadPool, socketserver as rx

kind, workload = sys.argv[1], sys.argv[2]

class Echo(std.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        if workload == "cpu":
            deadline = time.process_time() + 0.001
            while time.process_time() < deadline:
                pass
        self.wfile.write(line)

def build(module, cls, **kw):
    class Server(getattr(module, cls)):
        request_queue_size = 1024
        allow_reuse_address = True
    return Server(("127.0.0.1", 0), Echo, **kw)

servers = {{
    "stdlib-TCPServer": lambda: build(std, "TCPServer"),
    "stdlib-ThreadingTCPServer": lambda: build(std, "ThreadingTCPServer"),
    "stdlib-ForkingTCPServer": lambda: build(std, "ForkingTCPServer"),
    "reactor-Inline": lambda: build(rx, "TCPServer", dispatch=Inline()),
    "reactor-ThreadPool(8)": lambda: build(rx, "TCPServer", dispatch=ThreadPool(8, 64)),
    "reactor-Prefork(2)": lambda: build(rx, "TCPServer", dispatch=Prefork(2, handle_signals=False)),
}}
server = servers[kind]()
if kind.startswith("stdlib-Forking"):
    server.max_children = 256
def stop(signum, frame):
    raise KeyboardInterrupt  # leave serve_forever() from the main thread, then server_close()
signal.signal(signal.SIGTERM, stop)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
finally:
    server.server_close()
"""

CLIENT = r"""
import asyncio, sys, time
port, seconds, concurrency = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])

async def one(deadline, counts):
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"Hello, world\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            counts[0 if reply == b"Hello, world\n" else 1] += 1
        except (OSError, asyncio.TimeoutError):
            counts[1] += 1

async def main():
    counts = [0, 0]
    warm = time.monotonic() + 0.3
    await asyncio.gather(*(one(warm, [0, 0]) for _ in range(concurrency)))
    start = time.monotonic()
    await asyncio.gather(*(one(start + seconds, counts) for _ in range(concurrency)))
    print(counts[0] / (time.monotonic() - start), counts[1])

asyncio.run(main())
"""


def run_one(kind: str, workload: str, seconds: float, concurrency: int) -> tuple[float, int]:
    """Start ``kind``, load it for ``seconds``, stop it; return (requests/s, errors)."""
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(repo=str(REPO)), kind, workload],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(seconds), str(concurrency)],
                                capture_output=True, text=True, timeout=seconds + 60, check=True)
        rate, errors = client.stdout.split()
        return float(rate), int(errors)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def compare(a: str, b: str, workload: str, args: argparse.Namespace) -> str:
    ratios, rates_a, rates_b, errors = [], [], [], 0
    for _ in range(args.rounds):
        rate_a, errors_a = run_one(a, workload, args.seconds, args.concurrency)
        rate_b, errors_b = run_one(b, workload, args.seconds, args.concurrency)
        rates_a.append(rate_a)
        rates_b.append(rate_b)
        ratios.append(rate_a / rate_b if rate_b else float("inf"))
        errors += errors_a + errors_b
    return (f"{workload:5} {a:24} vs {b:26} ratio {statistics.median(ratios):6.2f}x  "
            f"({statistics.median(rates_a):8.0f} vs {statistics.median(rates_b):8.0f} req/s, "
            f"errors {errors})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.rounds} rounds x {args.seconds}s, "
          f"{args.concurrency} connections in flight (Python asyncio client)")
    pairs = [
        ("reactor-ThreadPool(8)", "stdlib-ThreadingTCPServer", "crr"),
        ("reactor-Prefork(2)", "stdlib-ForkingTCPServer", "crr"),
        ("reactor-Inline", "stdlib-TCPServer", "crr"),
        ("reactor-Prefork(2)", "reactor-Inline", "cpu"),
    ]
    started = time.monotonic()
    for a, b, workload in pairs:
        print(compare(a, b, workload, args), flush=True)
    print(f"took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
