"""The benchmark keeps working: its contenders serve what they claim, its figures are computed
as documented, and a short run of the driver produces every output.

No timing is asserted here: speed is what ``make bench`` reports, not what tests check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from support import short_unix_dir, wait_for

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import plan  # noqa: E402
import report  # noqa: E402
from procs import LineReader, alive, descendants, stop_process  # noqa: E402
from servers import CONTENDERS, TRANSPORTS  # noqa: E402

CC = shutil.which("cc")


def unavailable(reason: str) -> NoReturn:
    """Skip for lack of an optional tool; in CI (CI=true) fail instead: CI installs them to prove this."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run this test (`make test` installs the bench extra)", pytrace=False)
    pytest.skip(reason)


# -- contenders -------------------------------------------------------------------


def _client(transport: str, bound: str) -> socket.socket:
    if transport in ("tcp", "udp"):
        host, _, port = bound.rpartition(":")
        kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.settimeout(10)
        sock.connect((host, int(port)))
        return sock
    kind = socket.SOCK_STREAM if transport == "unix" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_UNIX, kind)
    sock.settimeout(10)
    if transport == "unixdgram":
        sock.bind("")  # autobind: the server replies to the sender's address
    sock.connect(bound)
    return sock


CASES = [(name, transport) for name, contender in CONTENDERS.items() for transport in TRANSPORTS
         if transport in contender.transports]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGUSR1"])
@pytest.mark.parametrize(("contender", "transport"), CASES)
def test_every_contender_echoes_on_every_transport_it_claims_and_stops_cleanly(
        contender: str, transport: str, stop_signal: str) -> None:
    if not CONTENDERS[contender].available():
        unavailable(f"{CONTENDERS[contender].requires} is not installed")
    with short_unix_dir() as tmp:
        address = "127.0.0.1:0" if transport in ("tcp", "udp") else f"{tmp}/s.sock"
        proc = subprocess.Popen([sys.executable, str(BENCH / "servers.py"), "--contender", contender,
                                 "--transport", transport, "--address", address],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            lines = LineReader(proc)
            bound = lines.expect("READY ", 30)
            with _client(transport, bound) as sock:
                for message in (b"Hello, world", b"second"):
                    sock.send(message)
                    assert sock.recv(100) == message
            if stop_signal == "SIGUSR1":
                proc.send_signal(signal.SIGUSR1)
                stop_s, close_s = map(float, lines.expect("SHUTDOWN ", 30).split())
                assert 0 <= stop_s <= close_s
                status = stop_process(proc, signum=None)
            else:
                status = stop_process(proc, signal.SIGTERM)
        finally:
            if proc.poll() is None:
                stop_process(proc)
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        assert status == 0, stderr


# -- figures ------------------------------------------------------------------------


def _run(ops_per_s: float, **extra: Any) -> dict[str, Any]:
    return {"ops_per_s": ops_per_s, "ops": int(ops_per_s), "p50_us": 100.0, "p99_us": 200.0, "errors": 0,
            "lost": 0, "conns_served": 1, "error_kinds": {}, "server_cpu_percent": 50.0, "server_peak_rss": 1,
            **extra}


def test_a_cell_figure_is_the_median_of_per_pair_ratios_not_the_ratio_of_medians() -> None:
    # The reference drifts 3x between pairs; the contender keeps half its pace.
    pairs = [{"reference": _run(ref), "contender": _run(ref / 2)} for ref in (1000, 3000, 2000)]
    pairs[1]["contender"] = _run(2400)  # one noisy pair: 0.8
    summary = report.summarise_throughput(pairs)
    assert summary["pair_ratios"] == [0.5, 0.8, 0.5]
    assert summary["ratio_to_reference"] == 0.5
    assert summary["ops_per_s"] == 1000  # raw median, reported beside the ratio
    assert summary["reference_ops_per_s"] == 2000


def _cell(workload: str, contender: str, ratio: float) -> dict[str, Any]:
    return {"workload": workload, "kind": "throughput", "status": "ok", "contender": contender,
            "transport": "tcp", "summary": {"ratio_to_reference": ratio}}


def test_comparisons_divide_normalised_figures_and_the_headline_judges_targets() -> None:
    cells = [_cell("crr-tcp-c50", "reactor-threadpool", 0.6), _cell("crr-tcp-c50", "stdlib-threading", 0.3),
             _cell("crr-tcp-c50", "reactor-inline", 0.4), _cell("crr-tcp-c50", "stdlib-inline", 0.5),
             _cell("rr-tcp-c50", "reactor-threadpool", 0.2), _cell("rr-tcp-c50", "reactor-prefork-threads", 0.45),
             _cell("rr-tcp-c50", "asyncio", 0.5)]
    assert report.compare(cells, "crr-tcp-c50", "reactor-threadpool", "stdlib-threading") == pytest.approx(2.0)
    rows = {(r["workload"], r["what"]): r for r in report.headline(cells)}
    threadpool = rows["crr-tcp-c50", "short connections: ThreadPool / ThreadingTCPServer"]
    assert threadpool["met"] is True
    inline = rows["crr-tcp-c50", "short connections: Inline / TCPServer"]
    assert inline["ratio"] == pytest.approx(0.8) and inline["met"] is False
    assert rows["crr-tcp-c50", "short connections: Prefork / ForkingTCPServer"]["ratio"] is None
    best = rows["rr-tcp-c50", "persistent connections: best reactor (prefork-threads) / asyncio"]
    assert best["ratio"] == pytest.approx(0.9) and best["met"] is True


def test_the_plan_leaves_out_servers_that_would_starve_persistent_connections() -> None:
    rr_50 = next(w for w in plan.FULL if w.key == "rr-tcp-c50")
    assert plan.why_not(CONTENDERS["reactor-inline"], rr_50, 1) == \
        "serves 1 connection at a time; the other 49 would starve"
    assert plan.why_not(CONTENDERS["reactor-prefork"], rr_50, 4) == \
        "serves 4 connections at a time; the other 46 would starve"  # one worker per server CPU
    assert plan.why_not(CONTENDERS["reactor-threadpool"], rr_50, 1) is None  # sized to the concurrency
    assert plan.why_not(CONTENDERS["reactor-prefork-threads"], rr_50, 4) is None
    assert plan.why_not(CONTENDERS["stdlib-threading"], rr_50, 1) is None
    crr = next(w for w in plan.FULL if w.key == "crr-tcp-c50")
    assert plan.why_not(CONTENDERS["reactor-inline"], crr, 1) is None  # short connections queue, not starve
    keepalive = next(w for w in plan.FULL if w.key == "keepalive-tcp-c200")
    assert plan.why_not(CONTENDERS["reactor-threadpool"], keepalive, 1) is None  # ThreadPool(8): the point
    assert plan.why_not(CONTENDERS["asyncio"], keepalive, 1) == "no HTTP server in this contender"
    assert len({w.key for w in plan.FULL}) == len(plan.FULL)


# -- the driver, end to end ----------------------------------------------------------


@pytest.fixture(scope="module")
def c_tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The C load generator and reference server, compiled the way ``make bench-tools`` does."""
    if CC is None:
        unavailable("no C compiler: make bench uses the Python fallback")
    out = tmp_path_factory.mktemp("bench-tools")
    for name in ("loadgen", "echo_server"):
        subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-o", str(out / name),
                        str(BENCH / f"{name}.c"), "-lm"], check=True, timeout=120)
    yield out


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(BENCH / "run.py"), "--pairs", "1", "--duration", "0.3",
                             "--warmup", "0.1", "--out", str(tmp_path), "--name", "smoke", *args],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results: dict[str, Any] = json.loads((tmp_path / "smoke.json").read_text())
    failed = [c for c in results["cells"] if c["status"] == "failed"]
    assert not failed, failed
    markdown = (tmp_path / "smoke.md").read_text()
    assert markdown.startswith("# reactor benchmark")
    if report_has_chart() or os.environ.get("CI") == "true":  # CI installs matplotlib: the chart is checked
        assert (tmp_path / "smoke.png").stat().st_size > 0
        assert "![throughput relative to the reference](smoke.png)" in markdown
    return results


def report_has_chart() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.timeout(300)
def test_quick_plan_runs_with_the_c_tools_and_reports_every_cell(tmp_path: Path, c_tools: Path) -> None:
    results = _bench(tmp_path, "--quick", "--tools", str(c_tools))
    assert results["meta"]["generator"].startswith("C ")
    cells = {(c["workload"], c["contender"]): c for c in results["cells"]}
    assert set(cells) == {(w.key, c) for w in plan.QUICK for c in plan.QUICK_CONTENDERS}
    crr = cells["crr-tcp-c50", "reactor-threadpool"]["summary"]
    assert crr["ops"] > 0 and crr["errors"] == 0 and crr["reference_ops_per_s"] > 0
    assert cells["shutdown-idle-tcp-c1", "reactor-inline"]["summary"]["stop_ms"] >= 0
    # Keep-alive HTTP: the stdlib's ThreadingHTTPServer alone, ThreadPool(8) paired with it; a stall
    # (before parking) is reported in the figures, not as a failed cell.
    assert cells["keepalive-tcp-c50", "stdlib-threading"]["summary"]["expected"] == 5000
    threadpool = cells["keepalive-tcp-c50", "reactor-threadpool"]
    assert threadpool["label"] == "reactor ThreadPool(8)" and threadpool["summary"]["expected"] == 5000
    assert cells["keepalive-tcp-c50", "asyncio"]["status"] == "n/a"
    markdown = (tmp_path / "smoke.md").read_text()
    assert "## Headline" in markdown and "Inline / TCPServer" in markdown
    assert "keep-alive HTTP at c=50: reactor ThreadPool(8) completes every request" in markdown


@pytest.mark.timeout(300)
def test_every_workload_of_the_full_plan_runs_on_one_contender_with_the_python_fallback(tmp_path: Path) -> None:
    # The fallback generator, no C tools at all: the reference is asyncio, and both are labelled.
    results = _bench(tmp_path, "--tools", str(tmp_path / "no-tools"), "--contenders", "reactor-threadpool")
    assert results["meta"]["generator"].startswith("pure Python fallback")
    assert results["meta"]["reference"].startswith("asyncio")
    by_workload = {c["workload"]: c for c in results["cells"]}
    assert set(by_workload) == {w.key for w in plan.FULL}
    # 10,050 connections are for event-driven servers (tests/test_bench_protocol.py runs that workload).
    idle_load = by_workload.pop("idle-load-tcp-c50")
    assert idle_load["status"] == "n/a" and "per connection" in idle_load["reason"]
    assert all(c["status"] == "ok" for c in by_workload.values())
    memory = by_workload["memory-tcp-c1000"]["summary"]
    assert memory["served"] == memory["of"] == 1000
    assert by_workload["dgram-udp-c50"]["summary"]["ops"] > 0
    assert by_workload["keepalive-tcp-c200"]["summary"]["expected"] == 12000
    assert "pure Python fallback" in (tmp_path / "smoke.md").read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_bench_stopped_midway_stops_every_process_it_started(tmp_path: Path, c_tools: Path, signum: int) -> None:
    bench = subprocess.Popen([sys.executable, str(BENCH / "run.py"), "--workloads", "crr-tcp-c50", "--contenders",
                              "reactor-prefork", "--pairs", "3", "--duration", "5", "--tools", str(c_tools),
                              "--out", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The reference server, the Prefork master, its arbiter and workers, and the generator.
        def everything_started() -> set[int] | None:
            family = descendants(bench.pid)
            return family if len(family) >= 5 else None

        started = wait_for(everything_started, timeout=60, message="the bench did not start its servers and generator")
        bench.send_signal(signum)
        bench.wait(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        assert bench.stderr is not None
        bench.stderr.close()
    try:
        wait_for(lambda: not any(alive(pid) for pid in started), timeout=10,
                 message=lambda: f"left running: {sorted(p for p in started if alive(p))}")
    finally:
        for pid in started:  # only on failure: what the bench should have stopped
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert bench.returncode != 0
    # Given no --name, a finished run writes <date>.json, .md and .png into --out (bench/run.py); a stopped
    # one writes nothing there, under any name.
    assert sorted(path.name for path in tmp_path.iterdir()) == []
