"""What the benchmark runs: the workloads, the full and quick plans, and which contender runs where."""

from __future__ import annotations

from dataclasses import dataclass

from servers import CONTENDERS, STREAM_TRANSPORTS, Contender


@dataclass(frozen=True)
class Workload:
    """One column of the benchmark: a traffic shape on a transport."""

    name: str
    #: "throughput" (paired with the C reference), "shutdown" or "memory".
    kind: str
    #: The load generator's mode (see LOADGEN.md); for "shutdown-idle", no load at all.
    mode: str
    transport: str
    concurrency: int
    handler: str = "echo"
    #: The server may use every CPU (the CPU-bound workload measures how a strategy uses cores).
    spread_server: bool = False

    @property
    def key(self) -> str:
        """A short unique name, e.g. ``rr-tcp-c50``."""
        return f"{self.name}-{self.transport}-c{self.concurrency}"

    @property
    def persistent(self) -> bool:
        """Connections stay open for the whole run, so a server must hold them all at once."""
        return self.mode in ("rr", "idle")

    def describe(self) -> str:
        what = {
            "crr": "connect, request, reply, close",
            "rr": "request/reply on persistent connections",
            "dgram": "datagram request/reply",
            "idle": "idle connections held open",
            "none": "no load",
        }[self.mode]
        extra = ", ~1 ms of CPU per request" if self.handler == "cpu" else ""
        return f"{self.name}: {what} over {self.transport}, concurrency {self.concurrency}{extra}"


CRR_TCP = Workload("crr", "throughput", "crr", "tcp", 50)
CPU_TCP = Workload("cpu", "throughput", "crr", "tcp", 8, handler="cpu", spread_server=True)

FULL = [
    CRR_TCP,
    Workload("rr", "throughput", "rr", "tcp", 1),
    Workload("rr", "throughput", "rr", "tcp", 50),
    Workload("rr", "throughput", "rr", "tcp", 500),
    Workload("crr", "throughput", "crr", "unix", 50),
    Workload("rr", "throughput", "rr", "unix", 50),
    Workload("dgram", "throughput", "dgram", "udp", 50),
    # The kernel queues only max_dgram_qlen (10) datagrams per Unix datagram socket.
    Workload("dgram", "throughput", "dgram", "unixdgram", 8),
    CPU_TCP,
    Workload("shutdown-idle", "shutdown", "none", "tcp", 1),
    Workload("shutdown-load", "shutdown", "crr", "tcp", 50),
    Workload("memory", "memory", "idle", "tcp", 1000),
]

QUICK = [
    CRR_TCP,
    Workload("shutdown-idle", "shutdown", "none", "tcp", 1),
]
QUICK_CONTENDERS = ["stdlib-inline", "stdlib-threading", "asyncio", "reactor-inline", "reactor-threadpool"]


def why_not(contender: Contender, workload: Workload, server_cpus: int) -> str | None:
    """Why ``contender`` cannot run ``workload`` on ``server_cpus`` CPUs (None if it can)."""
    if not contender.available():
        return f"{contender.requires} is not installed (pip install -e '.[bench]')"
    if workload.transport not in contender.transports:
        return f"no {workload.transport} server in this contender"
    if workload.mode == "dgram" and workload.transport in STREAM_TRANSPORTS:
        return "stream transport"
    if workload.persistent:
        capacity = contender.capacity(workload.concurrency, server_cpus)
        if capacity < workload.concurrency:
            return (f"serves {capacity} connection{'s' if capacity > 1 else ''} at a time; "
                    f"the other {workload.concurrency - capacity} would starve")
    if workload.kind == "memory" and contender.name == "stdlib-forking":
        return "one process per connection: 1000 interpreters"
    return None


def contenders_for(names: list[str] | None) -> list[Contender]:
    """The named contenders in table order, or all of them."""
    if names is None:
        return list(CONTENDERS.values())
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        raise ValueError(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    return [c for c in CONTENDERS.values() if c.name in names]
