"""Benchmark reactor against the stdlib and asyncio, side by side in one run.

Run: ``python bench/run.py [--quick] [--pairs N] [--duration S] ...`` (``make bench``,
``make bench-quick``). Writes ``bench/results/<date>.json``, ``<date>.md`` and
``<date>.png`` (the chart needs matplotlib: ``pip install -e '.[bench]'``) and prints a
table.

Method: each throughput cell starts the contender and the C reference echo
server, both pinned to the server CPUs, then runs the load generator (pinned
to the other CPUs) against the reference and the contender in turn, ``--pairs``
times. The machine's speed drifts, so the cell's figure is the median of the
per-pair ratios contender / reference; comparisons between contenders divide
those medians. The keep-alive HTTP cells pair the same way, with the stdlib's
ThreadingHTTPServer in the reference's place (the C echo server speaks no
HTTP). An idle-load cell adds a third run to each pair: the contender again,
with 10,000 idle connections held open beside the load by a second load
generator (opened after the contender's run alone, closed after the run
beside them), so each pair gives the load's throughput with and without them, back to
back, and the memory the idle ones cost. Shutdown and memory cells are run on
their own (no pairing: their figures are times and bytes, not rates).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import plan as plans  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import slowclients  # noqa: E402
from plan import Workload  # noqa: E402
from procs import BenchError, LineReader, Placement  # noqa: E402
from servers import CONTENDERS, Contender, http_label  # noqa: E402

PY_LOADGEN = BENCH / "pyloadgen.py"
SERVERS = BENCH / "servers.py"
#: Source addresses 127.0.0.1..N for short TCP connections (see LOADGEN.md).
SOURCE_SPREAD = 200
START_TIMEOUT = 30.0
#: What each keep-alive HTTP contender is paired with.
HTTP_BASELINE = "stdlib-threading"


class Tools:
    """The load generator and reference server this run uses."""

    def __init__(self, build: Path, python_loadgen: bool) -> None:
        self.c_loadgen = build / "loadgen"
        self.c_echo = build / "echo_server"
        self.c_built = self.c_loadgen.exists() and self.c_echo.exists()
        self.generator = "python" if python_loadgen or not self.c_built else "c"
        self.reference = "c" if self.c_built else "asyncio"

    def loadgen_command(self) -> list[str]:
        return [str(self.c_loadgen)] if self.generator == "c" else [sys.executable, str(PY_LOADGEN)]

    def describe(self) -> dict[str, str]:
        return {
            "generator": "C (bench/loadgen.c)" if self.generator == "c"
            else "pure Python fallback (bench/pyloadgen.py): it may be the bottleneck",
            "reference": "C echo server (bench/echo_server.c)" if self.reference == "c"
            else "asyncio (no C compiler: bench/build is empty)",
        }


class Session:
    """One benchmark run: its settings, scratch directory and collected cells."""

    def __init__(self, args: argparse.Namespace, tools: Tools, scratch: Path) -> None:
        self.args = args
        self.tools = tools
        self.scratch = scratch
        self.serial = 0
        self._docroot: Path | None = None

    # -- addresses and processes ---------------------------------------------

    def log(self, name: str) -> Path:
        """A fresh file in the scratch directory for a child's stderr."""
        self.serial += 1
        return self.scratch / f"{name}-{self.serial}.log"

    def docroot(self) -> Path:
        """The directory the HTTP servers serve: one file of HTTP_FILE_SIZE bytes, made on first use."""
        if self._docroot is None:
            self._docroot = self.scratch / "www"
            self._docroot.mkdir()
            pattern = bytes(range(256))
            (self._docroot / plans.HTTP_FILE).write_bytes((pattern * (plans.HTTP_FILE_SIZE // 256 + 1))
                                                         [:plans.HTTP_FILE_SIZE])
        return self._docroot

    def fresh_address(self, transport: str) -> str:
        if transport in ("tcp", "udp"):
            return "127.0.0.1:0"
        self.serial += 1
        return str(self.scratch / f"s{self.serial}.sock")

    @contextmanager
    def server(self, contender: str, workload: Workload, cpus: frozenset[int]) -> Iterator[tuple[int, str]]:
        """Run a server for the workload; yields (pid, address) and stops it afterwards."""
        address = self.fresh_address(workload.transport)
        if contender == "c-reference":
            command = [str(self.tools.c_echo), "--transport", workload.transport, "--address", address]
        else:
            command = [sys.executable, str(SERVERS), "--contender", contender, "--transport", workload.transport,
                       "--address", address, "--handler", workload.handler,
                       "--concurrency", str(workload.concurrency)]
            if workload.handler == "http":
                command += ["--docroot", str(self.docroot())]
        server = procs.spawn(command, cpus, self.log(contender))
        try:
            bound = server.expect("READY ", START_TIMEOUT)
            yield server.proc.pid, bound
        finally:
            status = procs.stop_process(server.proc)
            if status != 0:
                raise BenchError(f"{contender} server exited with {status}{server.stderr_tail()}")

    def loadgen(self, mode: str, workload: Workload, address: str, *, duration: float,
                stdin: int | None = subprocess.DEVNULL, timeout: float = 2.0,
                hold: float | None = None) -> LineReader:
        """Start the load generator; the caller reads its output."""
        command = self.tools.loadgen_command() + [
            "--mode", mode, "--transport", workload.transport, "--address", address,
            "--concurrency", str(workload.concurrency), "--duration", str(duration),
            "--warmup", str(self.args.warmup), "--timeout", f"{timeout:g}",
        ]
        if hold is not None:
            command += ["--hold", f"{hold:g}"]
        # Line servers frame on the newline; the reference, which echoes bytes, is sent the same.
        if workload.handler == "lines":
            command += ["--line"]
        # Short connections, and the idle-load cell's 10,000 connections opened and closed again
        # each pair (the client closes first: its TIME_WAIT ports would otherwise run out).
        if workload.transport == "tcp" and (mode == "crr" or workload.kind == "idle-load"):
            command += ["--source-spread", str(SOURCE_SPREAD)]
        if mode == "http":
            command += ["--path", f"/{plans.HTTP_FILE}", "--requests", str(workload.requests),
                        "--probe-interval", str(plans.PROBE_INTERVAL_S)]
        return procs.spawn(command, self.placement(workload).client, self.log("loadgen"), stdin=stdin)

    def placement(self, workload: Workload) -> Placement:
        return procs.plan_placement(spread_server=workload.spread_server)

    # -- cells ---------------------------------------------------------------

    def throughput_cell(self, contender: str, workload: Workload) -> dict[str, Any]:
        """Pairs of (reference run, contender run), alternating."""
        cpus = self.placement(workload).server
        pairs = []
        reference = self.reference()
        ref_workload = Workload(workload.name, workload.kind, workload.mode, workload.transport,
                                workload.concurrency)  # the reference never burns CPU
        with self.server(reference, ref_workload, cpus) as (ref_pid, ref_address), \
                self.server(contender, workload, cpus) as (pid, address):
            for _ in range(self.args.pairs):
                ref = self.measure(ref_pid, ref_address, workload)
                run = self.measure(pid, address, workload)
                pairs.append({"reference": ref, "contender": run})
        return {"reference": reference, "pairs": pairs, "summary": report.summarise_throughput(pairs)}

    def reference(self) -> str:
        """The server every throughput run is paired with: the C echo server, or asyncio without it."""
        return "c-reference" if self.tools.reference == "c" else "asyncio"

    def idle_load_cell(self, contender: str, workload: Workload) -> dict[str, Any]:
        """Pairs of (reference run, contender run, contender run beside ``workload.idle`` idle
        connections): the load's throughput with and without them, and their memory."""
        cpus = self.placement(workload).server
        pairs = []
        reference = self.reference()
        load = Workload(workload.name, "throughput", workload.mode, workload.transport, workload.concurrency,
                        handler=workload.handler)
        with self.server(reference, load, cpus) as (ref_pid, ref_address), \
                self.server(contender, workload, cpus) as (pid, address):
            procs.wait_until_settled(pid, CONTENDERS[contender].processes(len(cpus)))
            for _ in range(self.args.pairs):
                ref = self.measure(ref_pid, ref_address, load)
                alone = self.measure(pid, address, load)
                pairs.append({"reference": ref, "contender": alone, **self.beside_idle(pid, address, workload)})
        return {"reference": reference, "pairs": pairs,
                "summary": report.summarise_idle_load(pairs, workload.idle)}

    def beside_idle(self, pid: int, address: str, workload: Workload) -> dict[str, Any]:
        """Open ``workload.idle`` connections (each served once), measure the server's memory and
        the load beside them, close them and wait until the server has closed its ends."""
        load = Workload(workload.name, "throughput", workload.mode, workload.transport, workload.concurrency,
                        handler=workload.handler)
        idle = Workload(workload.name, workload.kind, "idle", workload.transport, workload.idle)
        members = procs.tree(pid)
        base_rss, base_pss, base_fds = procs.rss_bytes(members), procs.pss_bytes(members), procs.fd_count(members)
        # Held until stdin's EOF; --hold only bounds a generator the bench would fail to stop.
        holder = self.loadgen("idle", idle, address, duration=0, stdin=subprocess.PIPE,
                              timeout=plans.IDLE_TIMEOUT_S, hold=self.args.warmup + self.args.duration + 120)
        try:
            held = int(holder.expect("HOLDING ", plans.IDLE_TIMEOUT_S + 60))
            members = procs.tree(pid)
            rss, pss = procs.rss_bytes(members), procs.pss_bytes(members)
            loaded = self.measure(pid, address, load)
            # Still open in the server after the loaded run (an idle deadline would have closed them).
            fds = procs.fd_count(procs.tree(pid))
        finally:
            assert holder.proc.stdin is not None
            holder.proc.stdin.close()  # the generator closes its connections and exits
        try:
            lines, _ = procs.watch_until_exit(holder, pid, limit=60)
        finally:
            if holder.proc.poll() is None:  # interrupted
                procs.stop_process(holder.proc)
        parse_result(holder, lines)
        # The server must be done closing 10,000 connections before the next pair's reference run,
        # which shares its CPU.
        procs.wait_until_fds_at_most(pid, base_fds + plans.FD_SLACK, timeout=60)
        return {"loaded": loaded, "idle": {"held": held, "base_rss": base_rss, "rss": rss, "base_pss": base_pss,
                                           "pss": pss, "base_fds": base_fds, "fds": fds}}

    def http_cell(self, contender: str, workload: Workload) -> dict[str, Any]:
        """Pairs of (stdlib ThreadingHTTPServer run, contender run), alternating; the stdlib's own
        cell runs alone."""
        cpus = self.placement(workload).server
        pairs = []
        with ExitStack() as servers:
            baseline = None
            if contender != HTTP_BASELINE:
                baseline = servers.enter_context(self.server(HTTP_BASELINE, workload, cpus))
            pid, address = servers.enter_context(self.server(contender, workload, cpus))
            for _ in range(self.args.pairs):
                pair: dict[str, Any] = {}
                if baseline is not None:
                    pair["baseline"] = self.measure(*baseline, workload)
                pair["contender"] = self.measure(pid, address, workload)
                pairs.append(pair)
        return {"label": http_label(contender, len(cpus)), "pairs": pairs,
                "summary": report.summarise_http(pairs, plans.PROBE_MAX_S)}

    def measure(self, server_pid: int, address: str, workload: Workload) -> dict[str, Any]:
        # An http run has its own time limit; it stops earlier once its requests are answered.
        duration = workload.limit_s if workload.mode == "http" else self.args.duration
        client = self.loadgen(workload.mode, workload, address, duration=duration)
        limit = self.args.warmup + duration + 30
        try:
            lines, usage = procs.watch_until_exit(client, server_pid, limit=limit)
        finally:
            if client.proc.poll() is None:  # interrupted
                procs.stop_process(client.proc)
        result = parse_result(client, lines)
        result["server_cpu_percent"] = round(usage.cpu_percent, 1)
        result["server_peak_rss"] = usage.peak_rss
        return result

    def shutdown_cell(self, contender: str, workload: Workload) -> dict[str, Any]:
        """Time SIGUSR1 -> serving loop returned -> everything closed, ``pairs`` times."""
        runs = []
        for _ in range(self.args.pairs):
            runs.append(self.one_shutdown(contender, workload))
        return {"runs": runs, "summary": report.summarise_shutdown(runs)}

    def one_shutdown(self, contender: str, workload: Workload) -> dict[str, Any]:
        address = self.fresh_address(workload.transport)
        command = [sys.executable, str(SERVERS), "--contender", contender, "--transport", workload.transport,
                   "--address", address, "--concurrency", str(workload.concurrency)]
        server = procs.spawn(command, self.placement(workload).server, self.log(contender))
        proc = server.proc
        client: LineReader | None = None
        try:
            bound = server.expect("READY ", START_TIMEOUT)
            if workload.mode != "none":
                client = self.loadgen(workload.mode, workload, bound, duration=self.args.duration)
                # The bench paces the load, it does not synchronise on it: stop mid-window.
                time.sleep(self.args.warmup + self.args.duration / 2)
            else:
                # Stop at a random phase of a poll_interval-based loop (0.5 s).
                time.sleep(random.uniform(0.2, 0.7))
            proc.send_signal(signal.SIGUSR1)
            stop_s, close_s = map(float, server.expect("SHUTDOWN ", 60).split())
            status = procs.stop_process(proc, signum=None)  # it is exiting by itself
        finally:
            if proc.poll() is None:
                procs.stop_process(proc)
            if client is not None:
                procs.stop_process(client.proc)
        if status != 0:
            raise BenchError(f"{contender} exited with {status} after SIGUSR1{server.stderr_tail()}")
        return {"stop_s": stop_s, "close_s": close_s}

    def memory_cell(self, contender: str, workload: Workload) -> dict[str, Any]:
        """Resident memory of the server tree idle, then holding ``concurrency`` idle connections."""
        cpus = self.placement(workload).server
        with self.server(contender, workload, cpus) as (pid, address):
            # READY comes when the socket listens; pre-fork workers may still be booting.
            procs.wait_until_settled(pid, CONTENDERS[contender].processes(len(cpus)))
            members = procs.tree(pid)
            base_rss, base_pss = procs.rss_bytes(members), procs.pss_bytes(members)
            client = self.loadgen("idle", workload, address, duration=0, stdin=subprocess.PIPE)
            try:
                served = int(client.expect("HOLDING ", 60))
                members = procs.tree(pid)
                rss, pss = procs.rss_bytes(members), procs.pss_bytes(members)
                threads = sum(count_threads(p) for p in members)
            finally:
                assert client.proc.stdin is not None
                client.proc.stdin.close()  # the generator closes its connections and exits
            try:
                lines, _ = procs.watch_until_exit(client, pid, limit=60)
            finally:
                if client.proc.poll() is None:  # interrupted
                    procs.stop_process(client.proc)
            parse_result(client, lines)
        run = {"served": served, "processes": len(members), "threads": threads,
               "base_rss": base_rss, "rss": rss, "base_pss": base_pss, "pss": pss}
        return {"runs": [run], "summary": report.summarise_memory(run, workload.concurrency)}


def count_threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError:
        return 0


def parse_result(client: LineReader, lines: list[str]) -> dict[str, Any]:
    """The load generator's JSON result line."""
    status = client.proc.wait(timeout=10)
    if status != 0 or not lines:
        raise BenchError(f"load generator exited with {status}{client.stderr_tail()}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- the run ------------------------------------------------------------------


def run_cells(session: Session, workloads: list[Workload], contenders: list[Contender]) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    total = len(workloads) * len(contenders)
    for workload in workloads:
        for contender in contenders:
            cell: dict[str, Any] = {"workload": workload.key, "name": workload.name, "kind": workload.kind,
                                    "transport": workload.transport, "concurrency": workload.concurrency,
                                    "contender": contender.name}
            reason = plans.why_not(contender, workload, len(session.placement(workload).server))
            progress = f"[{len(cells) + 1}/{total}] {workload.key} {contender.name}"
            if reason is not None:
                cell.update(status="n/a", reason=reason)
                print(f"{progress}: n/a ({reason})", flush=True)
                cells.append(cell)
                continue
            started = time.monotonic()
            try:
                if workload.kind == "throughput":
                    cell.update(session.throughput_cell(contender.name, workload))
                elif workload.kind == "http":
                    cell.update(session.http_cell(contender.name, workload))
                elif workload.kind == "shutdown":
                    cell.update(session.shutdown_cell(contender.name, workload))
                elif workload.kind == "idle-load":
                    cell.update(session.idle_load_cell(contender.name, workload))
                elif workload.kind == "slow-clients":
                    cell.update(slowclients.run_cell(session, workload))
                else:
                    cell.update(session.memory_cell(contender.name, workload))
                cell["status"] = "ok"
            except BenchError as exc:
                cell.update(status="failed", reason=str(exc))
            print(f"{progress}: {report.one_line(cell)} ({time.monotonic() - started:.0f} s)", flush=True)
            cells.append(cell)
    return cells


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the small subset (make bench-quick)")
    parser.add_argument("--pairs", type=int, default=3, help="reference/contender pairs per cell (default 3)")
    parser.add_argument("--duration", type=float, help="measured seconds per run (default 1.5, quick 0.5; "
                        "the keep-alive HTTP runs have their own limit, see plan.py)")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each run (default 0.3, quick 0.2)")
    parser.add_argument("--workloads", help="comma-separated workload keys or names to keep (e.g. crr,rr-tcp-c1)")
    parser.add_argument("--contenders", help=f"comma-separated, from: {', '.join(CONTENDERS)}")
    parser.add_argument("--idle-connections", type=int, metavar="N",
                        help=f"idle connections of the idle-load workload (default {plans.IDLE_CONNECTIONS:,})")
    parser.add_argument("--slow-attackers", type=int, metavar="N",
                        help=f"slow connections of the slow-clients workload (default {plans.SLOW_ATTACKERS})")
    parser.add_argument("--python-loadgen", action="store_true", help="use the pure-Python load generator")
    parser.add_argument("--tools", type=Path, default=BENCH / "build",
                        help="where make bench-tools put loadgen and echo_server (default bench/build)")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="directory for the results")
    parser.add_argument("--name", help="file name stem for the results (default: the date, plus -quick)")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.idle_connections is not None and args.idle_connections < 1:
        parser.error("--idle-connections must be at least 1")
    if args.slow_attackers is not None and args.slow_attackers < 1:
        parser.error("--slow-attackers must be at least 1")
    args.duration = args.duration if args.duration is not None else 0.5 if args.quick else 1.5
    args.warmup = args.warmup if args.warmup is not None else 0.2 if args.quick else 0.3
    return args


def select_workloads(args: argparse.Namespace) -> list[Workload]:
    workloads = plans.QUICK if args.quick else plans.FULL
    if args.workloads:
        wanted = set(args.workloads.split(","))
        workloads = [w for w in workloads if w.key in wanted or w.name in wanted]
        if not workloads:
            raise SystemExit(f"no workload matches {args.workloads}")
    if args.idle_connections is not None:
        workloads = [dataclasses.replace(w, idle=args.idle_connections) if w.idle else w for w in workloads]
    if args.slow_attackers is not None:
        workloads = [dataclasses.replace(w, attackers=args.slow_attackers) if w.attackers else w for w in workloads]
    return workloads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = Tools(args.tools, args.python_loadgen)
    names = args.contenders.split(",") if args.contenders else plans.QUICK_CONTENDERS if args.quick else None
    contenders = plans.contenders_for(names)
    workloads = select_workloads(args)
    placement = procs.plan_placement()
    started = datetime.datetime.now()
    meta = {
        "date": started.isoformat(timespec="seconds"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "placement": placement.describe(),
        "placement_cpu_workload": procs.plan_placement(spread_server=True).describe(),
        **tools.describe(),
        "pairs": args.pairs, "duration_s": args.duration, "warmup_s": args.warmup,
        "plan": "quick" if args.quick else "full",
        "workloads": {w.key: w.describe() for w in workloads},
    }
    print(f"reactor bench: {meta['generator']}; reference {meta['reference']}; {meta['placement']}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="rxb-"))
    # SIGTERM unwinds like Ctrl-C, so every server and generator started so far is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        cells = run_cells(Session(args, tools, scratch), workloads, contenders)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    meta["elapsed_s"] = round((datetime.datetime.now() - started).total_seconds(), 1)
    results = {"meta": meta, "cells": cells}
    stem = args.name or started.date().isoformat() + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    written = report.write_all(results, args.out / stem)
    print()
    print(report.terminal_table(results))
    print()
    for path in written:
        print(f"wrote {path}")
    failed = [c for c in cells if c["status"] == "failed"]
    for cell in failed:
        print(f"FAILED {cell['workload']} {cell['contender']}: {cell['reason']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
