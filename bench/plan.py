"""What the benchmark runs: the workloads, the full and quick plans, and which contender runs where."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from servers import CONTENDERS, LINE_CONTENDERS, MESSAGE_MODE_CONTENDERS, STREAM_TRANSPORTS, Contender


@dataclass(frozen=True)
class Workload:
    """One column of the benchmark: a traffic shape on a transport."""

    name: str
    #: "throughput" (paired with the C reference), "http" (paired with the stdlib's
    #: ThreadingHTTPServer), "shutdown", "memory", or "idle-load" (throughput with and without
    #: ``idle`` idle connections held open beside the load, paired with the C reference too).
    kind: str
    #: The load generator's mode (see LOADGEN.md); for "shutdown-idle", no load at all.
    mode: str
    transport: str
    concurrency: int
    handler: str = "echo"
    #: The server may use every CPU (the CPU-bound workload measures how a strategy uses cores).
    spread_server: bool = False
    #: http: requests sent per run, in all (the load generator's --requests), and the run's time
    #: limit in seconds (its --duration; a healthy server answers them all well within it).
    requests: int = 0
    limit_s: float = 0.0
    #: idle-load: idle connections held open (each served once) while the load runs.
    idle: int = 0
    #: slow-clients: slow connections attacking while the load runs (bench/slowclients.py).
    attackers: int = 0

    @property
    def key(self) -> str:
        """A short unique name, e.g. ``rr-tcp-c50``."""
        return f"{self.name}-{self.transport}-c{self.concurrency}"

    @property
    def persistent(self) -> bool:
        """Connections stay open for the whole run, so a server must hold them all at once."""
        return self.mode in ("rr", "idle")

    @property
    def connections(self) -> int:
        """Stream connections the server holds at once at the peak (persistent workloads)."""
        return self.concurrency + self.idle

    @property
    def descriptors(self) -> int:
        """File descriptors the server (and the load generators, together) need for this workload."""
        return self.connections + FD_SLACK if self.persistent else 0

    def describe(self) -> str:
        if self.kind == "slow-clients":
            return (f"{self.name}: {self.concurrency} keep-alive HTTP clients (GETs of a 1 KiB file) alone, then "
                    f"beside {self.attackers} slowloris connections; then {self.attackers} slow readers of "
                    f"a 256 KiB reply; reactor ThreadPool(8), ThreadingHTTPServer and waitress (8 threads)")
        what = {
            "crr": "connect, request, reply, close",
            "rr": "request/reply on persistent connections",
            "dgram": "datagram request/reply",
            "idle": "idle connections held open",
            "http": "HTTP/1.1 keep-alive GETs of a 1 KiB file (SimpleHTTPRequestHandler)",
            "none": "no load",
        }[self.mode]
        extra = ", ~1 ms of CPU per request" if self.handler == "cpu" else ""
        if self.handler == "lines":
            extra = ", each request a line, answered by a framed LineRequestHandler"
        if self.idle:
            extra = f", beside {self.idle:,} idle connections (each served once), in one server process"
        if self.mode == "http":
            extra = (f", {self.requests} requests within {self.limit_s:g} s, a fresh connection probing "
                     f"every {PROBE_INTERVAL_S * 1000:.0f} ms")
        return f"{self.name}: {what} over {self.transport}, concurrency {self.concurrency}{extra}"


#: http: a probe (a fresh connection, one request) every this many seconds while the load runs.
PROBE_INTERVAL_S = 0.1
#: The issue's keep-alive target: every request completes, and no probe waits longer than this.
PROBE_MAX_S = 1.0
#: The file the keep-alive workload requests, made by the driver in a scratch directory.
HTTP_FILE = "1k.bin"
HTTP_FILE_SIZE = 1024
#: Descriptors a server process needs beyond its connections (listener, selector, pipes, libraries).
FD_SLACK = 64
#: idle-load: the idle connections, and how long each may take to be served once (connecting 10,000
#: at once overflows the listen backlog: SYNs are retried after 1 s, 3 s, ...).
IDLE_CONNECTIONS = 10_000
IDLE_TIMEOUT_S = 15.0
#: slow-clients (issue 14): the attackers, and the one contender whose cell runs the three servers.
SLOW_ATTACKERS = 600
SLOW_CLIENTS_CONTENDER = "reactor-threadpool"

CRR_TCP = Workload("crr", "throughput", "crr", "tcp", 50)
CPU_TCP = Workload("cpu", "throughput", "crr", "tcp", 8, handler="cpu", spread_server=True)

FULL = [
    CRR_TCP,
    Workload("rr", "throughput", "rr", "tcp", 1),
    Workload("rr", "throughput", "rr", "tcp", 50),
    Workload("rr", "throughput", "rr", "tcp", 500),
    # Issue 11: C10K-class concurrency in one thread.
    Workload("rr", "throughput", "rr", "tcp", 1000),
    Workload("crr", "throughput", "crr", "unix", 50),
    Workload("rr", "throughput", "rr", "unix", 50),
    Workload("dgram", "throughput", "dgram", "udp", 50),
    # The kernel queues only max_dgram_qlen (10) datagrams per Unix datagram socket.
    Workload("dgram", "throughput", "dgram", "unixdgram", 8),
    CPU_TCP,
    Workload("shutdown-idle", "shutdown", "none", "tcp", 1),
    Workload("shutdown-load", "shutdown", "crr", "tcp", 50),
    Workload("memory", "memory", "idle", "tcp", 1000),
    # Issue 11: framed messages, the same request/reply as rr-tcp-c50 but each request a line
    # (the load generator's --line) and the echo a LineRequestHandler (servers.py's "lines").
    Workload("lines", "throughput", "rr", "tcp", 50, handler="lines"),
    # Issue 11: 50 active connections beside 10,000 idle ones, and what each idle one costs.
    Workload("idle-load", "idle-load", "rr", "tcp", 50, idle=IDLE_CONNECTIONS),
    # ab -k -c 200 -n 12000: 60 requests per connection on average; about 3.5 s for the stdlib's
    # ThreadingHTTPServer on one CPU, 2 s for ThreadPool(8) with parking.
    Workload("keepalive", "http", "http", "tcp", 200, handler="http", requests=12000, limit_s=10.0),
    # Issue 14: 50 keep-alive clients with and without 600 slow ones, three servers side by side.
    Workload("slow-clients", "slow-clients", "http", "tcp", 50, handler="http", attackers=SLOW_ATTACKERS),
]

QUICK = [
    CRR_TCP,
    Workload("shutdown-idle", "shutdown", "none", "tcp", 1),
    # Under a second for ThreadingHTTPServer; a stalled server costs the limit and the last probes' timeout.
    Workload("keepalive", "http", "http", "tcp", 50, handler="http", requests=5000, limit_s=2.5),
]
QUICK_CONTENDERS = ["stdlib-inline", "stdlib-threading", "asyncio", "reactor-inline", "reactor-threadpool"]


def why_not(contender: Contender, workload: Workload, server_cpus: int,
            fd_hard_limit: int | None = None) -> str | None:
    """Why ``contender`` cannot run ``workload`` on ``server_cpus`` CPUs (None if it can).

    ``fd_hard_limit``: the hard RLIMIT_NOFILE the servers and generators inherit (default: this
    process's); every process the bench starts raises its soft limit to it.
    """
    if workload.kind == "slow-clients" and contender.name != SLOW_CLIENTS_CONTENDER:
        return (f"run once, as {SLOW_CLIENTS_CONTENDER}'s cell, with the stdlib's ThreadingHTTPServer and "
                f"waitress beside it")
    if not contender.available():
        return f"{contender.requires} is not installed (pip install -e '.[bench]')"
    if workload.kind == "http" and contender.http is None:
        return "no HTTP server in this contender"
    if workload.transport not in contender.transports:
        return f"no {workload.transport} server in this contender"
    if workload.handler == "lines" and contender.name not in LINE_CONTENDERS:
        return "no framed message handler (socketserver's) in this contender"
    if workload.mode == "dgram" and workload.transport in STREAM_TRANSPORTS:
        return "stream transport"
    if workload.persistent:
        connections = workload.connections
        capacity = contender.capacity(connections, server_cpus)
        if workload.handler == "lines" and contender.name in MESSAGE_MODE_CONTENDERS:
            capacity = connections  # message mode: between messages a connection holds no handler
        if capacity < connections:
            return (f"serves {capacity} connection{'s' if capacity > 1 else ''} at a time; "
                    f"the other {connections - capacity} would starve")
        if workload.idle and not contender.event_driven:
            return f"a thread or process per connection: {connections:,} of them"
        if contender.name == "stdlib-forking" and connections >= 1000:
            return f"one process per connection: {connections} interpreters"
        hard = fd_hard_limit if fd_hard_limit is not None else fd_limit()
        if hard < workload.descriptors:
            return (f"needs {workload.descriptors:,} file descriptors in the server and the load generators, "
                    f"but the hard limit (ulimit -Hn) is {hard:,}")
    return None


def fd_limit() -> int:
    """The hard RLIMIT_NOFILE (what every process the bench starts raises its soft limit to)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (1 << 62) if hard == resource.RLIM_INFINITY else hard


def contenders_for(names: list[str] | None) -> list[Contender]:
    """The named contenders in table order, or all of them."""
    if names is None:
        return list(CONTENDERS.values())
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    return [c for c in CONTENDERS.values() if c.name in names]
