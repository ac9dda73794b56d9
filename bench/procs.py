"""Processes the benchmark starts: CPU pinning, readiness, resource sampling, and stopping them.

Everything here reads Linux's /proc. A server is measured as its whole
process tree (pre-fork workers, forked request children), and every process
the benchmark starts is stopped by it, by pid.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A process of the benchmark did not behave (no READY line, a crash, no exit)."""


# -- CPU placement --------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the load generator may run on."""

    server: frozenset[int]
    client: frozenset[int]

    def describe(self) -> str:
        def cpus(s: frozenset[int]) -> str:
            return ",".join(map(str, sorted(s)))
        if self.server == self.client:
            return f"not pinned (server and load generator share CPUs {cpus(self.server)})"
        return f"server on CPU {cpus(self.server)}, load generator on CPU {cpus(self.client)}"


def plan_placement(spread_server: bool = False) -> Placement:
    """Split this process's CPUs between server and load generator.

    Half each (the server gets the first half) when there are at least two
    CPUs; with ``spread_server`` the server may use every CPU but the load
    generator's, or all of them on a 2-CPU machine, where the server's
    strategy is what is measured (the CPU-bound workload).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        everything = frozenset(cpus)
        return Placement(everything, everything)
    half = len(cpus) // 2
    client = frozenset(cpus[half:]) if len(cpus) >= 4 else frozenset(cpus[-1:])
    if spread_server:
        server = frozenset(cpus) if len(cpus) < 4 else frozenset(cpus) - client
    else:
        server = frozenset(cpus[:half])
    return Placement(server, client)


def pinned(cpus: frozenset[int]) -> dict[str, object]:
    """Popen arguments that start the child on ``cpus`` (inherited by everything it forks)."""
    # preexec_fn is fine: the benchmark driver is single-threaded.
    return {"preexec_fn": lambda: os.sched_setaffinity(0, cpus)}


# -- starting and stopping ------------------------------------------------------


def spawn(command: list[str], cpus: frozenset[int], log: Path, stdin: int | None = subprocess.DEVNULL) -> LineReader:
    """Start ``command`` on ``cpus`` with stdout piped to us and stderr to the file ``log``.

    stderr goes to a file because nobody reads it during a run: a server
    logging a burst of client resets must not block on a full pipe.
    """
    with open(log, "wb") as err:
        proc = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=err,
                                **pinned(cpus))  # type: ignore[call-overload]
    return LineReader(proc, log)


class LineReader:
    """Lines from a child's stdout pipe with a timeout (select on the raw fd, no hidden buffer)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path | None = None) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.log = log
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line without its newline; None at EOF.

        Raises:
            TimeoutError: no complete line within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer and not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                raise TimeoutError(f"pid {self.proc.pid} ({describe_command(self.proc)}): "
                                   f"no output line within {timeout:.0f} s")
            chunk = os.read(self.fd, 65536)
            self.buffer += chunk
            self.eof = not chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    def expect(self, prefix: str, timeout: float) -> str:
        """The rest of the first line starting with ``prefix``; other lines are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.readline(max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                raise BenchError(f"{exc} (waiting for {prefix.strip()})") from None
            if line is None:
                self.proc.wait(timeout=5)
                raise BenchError(f"pid {self.proc.pid} ({describe_command(self.proc)}) exited with "
                                 f"{self.proc.returncode} before printing {prefix.strip()}{self.stderr_tail()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def stderr_tail(self) -> str:
        """The end of the child's stderr, for an error message."""
        if self.log is None or not self.log.exists():
            return ""
        text = self.log.read_bytes()[-800:].decode(errors="replace").strip()
        return f": {text}" if text else ""


def describe_command(proc: subprocess.Popen[bytes]) -> str:
    args = proc.args if isinstance(proc.args, Sequence) and not isinstance(proc.args, str) else [proc.args]
    return " ".join(os.path.basename(str(a)) if i == 0 else str(a) for i, a in enumerate(args))[:160]


def stop_process(proc: subprocess.Popen[bytes], signum: int | None = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal ``proc`` (unless ``signum`` is None), wait for it, and make sure nothing it forked outlives it.

    Returns its exit status. Descendants still alive after it exits (they
    should not be) are killed by pid, and the fact is raised.
    """
    family = descendants(proc.pid)
    if signum is not None and proc.poll() is None:
        proc.send_signal(signum)
    try:
        status = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        family |= descendants(proc.pid)
        proc.kill()
        proc.wait()
        kill_pids(family)
        raise BenchError(f"pid {proc.pid} ({describe_command(proc)}) ignored signal {signum} for {timeout:.0f} s; killed")
    left = {pid for pid in family if alive(pid)}
    if left:
        kill_pids(left)
        raise BenchError(f"pid {proc.pid} ({describe_command(proc)}) left processes behind: {sorted(left)}; killed")
    return status


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


# -- the process tree -------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def descendants(root: int) -> set[int]:
    """Every living process below ``root`` (not ``root`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def tree(root: int) -> set[int]:
    """``root`` and its descendants."""
    return {root} | descendants(root)


def cpu_seconds(pids: set[int]) -> float:
    """User+system CPU of the processes, including their reaped children's."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of stat (11-14 here).
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / CLOCK_TICKS


def rss_bytes(pids: set[int]) -> int:
    """Sum of the processes' resident set sizes (shared pages counted in each)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def pss_bytes(pids: set[int]) -> int | None:
    """Sum of the processes' proportional set sizes (shared pages split), None where unsupported."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except FileNotFoundError:
            if not os.path.exists("/proc/self/smaps_rollup"):
                return None
        except ProcessLookupError:
            pass
    return total


def wait_until_settled(root: int, processes: int, timeout: float = 10.0, interval: float = 0.1) -> None:
    """Wait until ``root``'s tree has ``processes`` processes and its RSS stopped growing.

    Raises:
        BenchError: not settled within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    previous = -1
    while time.monotonic() < deadline:
        members = tree(root)
        rss = rss_bytes(members)
        if len(members) >= processes and rss == previous:
            return
        previous = rss
        time.sleep(interval)  # sampling /proc: nothing to wait on
    raise BenchError(f"pid {root}: tree not settled at {processes} processes within {timeout:.0f} s")


@dataclass
class Usage:
    """A server tree's resource use over a window."""

    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_rss: int = 0
    samples: list[int] = field(default_factory=list)

    @property
    def cpu_percent(self) -> float:
        """CPU used in the window, 100 = one core busy."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def watch_until_exit(client: LineReader, server_pid: int, interval: float = 0.1,
                     limit: float = 120.0) -> tuple[list[str], Usage]:
    """Wait for the client to exit while sampling the server tree; return its output lines and the usage."""
    usage = Usage()
    started = time.monotonic()
    cpu_before = cpu_seconds(tree(server_pid))
    lines: list[str] = []
    deadline = started + limit
    while True:
        usage.peak_rss = max(usage.peak_rss, rss_bytes(tree(server_pid)))
        try:
            line = client.readline(interval)
        except TimeoutError:
            line = ""  # nothing yet: sample again
        if line is None:
            break
        if line:
            lines.append(line)
        if time.monotonic() > deadline:
            client.proc.kill()
            client.proc.wait()
            raise BenchError(f"load generator pid {client.proc.pid} ran past {limit:.0f} s; killed")
    usage.wall_s = time.monotonic() - started
    usage.cpu_s = cpu_seconds(tree(server_pid)) - cpu_before
    client.proc.wait(timeout=10)
    return lines, usage


def fd_count(pids: set[int]) -> int:
    """Open file descriptors of the processes, summed."""
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def wait_until_fds_at_most(root: int, limit: int, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Wait until ``root``'s tree has at most ``limit`` descriptors open (it closed what its clients closed).

    Raises:
        BenchError: still more after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = fd_count(tree(root))
        if count <= limit:
            return
        if time.monotonic() >= deadline:
            raise BenchError(f"pid {root}: {count} descriptors still open {timeout:.0f} s after its clients "
                             f"closed their connections (expected at most {limit})")
        time.sleep(interval)  # sampling /proc: nothing to wait on
