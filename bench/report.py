"""Turning benchmark cells into figures: summaries, the terminal table, JSON, markdown and a chart.

Run: ``python bench/report.py bench/results/<date>.json`` rewrites that run's
markdown report and chart (after a change to this file, say).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slowclients
from plan import PROBE_INTERVAL_S
from servers import CONTENDERS, label

MB = 1024 * 1024


# -- summaries ------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise_throughput(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the pairs; the ratio is the median of per-pair contender/reference ratios."""
    runs = [p["contender"] for p in pairs]
    refs = [p["reference"] for p in pairs]
    ratios = [r["ops_per_s"] / f["ops_per_s"] for r, f in zip(runs, refs) if f["ops_per_s"]]
    return {
        "ops_per_s": _median([r["ops_per_s"] for r in runs]),
        "reference_ops_per_s": _median([f["ops_per_s"] for f in refs]),
        "ratio_to_reference": _median(ratios),
        "pair_ratios": [round(x, 4) for x in ratios],
        "p50_us": _median([r["p50_us"] for r in runs]),
        "p99_us": _median([r["p99_us"] for r in runs]),
        "errors": sum(r["errors"] for r in runs),
        "lost": sum(r["lost"] for r in runs),
        "ops": sum(r["ops"] for r in runs),
        "error_kinds": _sum_kinds(runs),
        "conns_served": min(r["conns_served"] for r in runs),
        "server_cpu_percent": _median([r["server_cpu_percent"] for r in runs]),
        "server_peak_rss": max(r["server_peak_rss"] for r in runs),
    }


def summarise_http(pairs: list[dict[str, Any]], probe_max_s: float) -> dict[str, Any]:
    """A keep-alive HTTP cell: rates as for throughput (the per-pair ratio is against the stdlib's
    ThreadingHTTPServer; None for that server's own cell), completion and probe figures summed or
    worst over the runs, and whether the issue's target is met: every request completed, and
    every probe answered within ``probe_max_s`` (None when no probe ran)."""
    runs = [p["contender"] for p in pairs]
    bases = [p["baseline"] for p in pairs if "baseline" in p]
    ratios = [r["ops_per_s"] / b["ops_per_s"] for r, b in zip(runs, bases) if b["ops_per_s"]]
    probe_maxima = [r["probe_max_us"] for r in runs if r["probe_max_us"] is not None]
    summary = {
        "req_per_s": _median([r["ops_per_s"] for r in runs]),
        "baseline_req_per_s": _median([b["ops_per_s"] for b in bases]),
        "ratio_to_baseline": _median(ratios),
        "pair_ratios": [round(x, 4) for x in ratios],
        "p50_us": _median([r["p50_us"] for r in runs]),
        "p99_us": _median([r["p99_us"] for r in runs]),
        "expected": sum(r["requests"] for r in runs),
        "completed": sum(r["completed"] for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "unanswered": sum(r["unanswered"] for r in runs),
        "closed_by_server": sum(r["closed_by_server"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "error_kinds": _sum_kinds(runs),
        "probes": sum(r["probes"] for r in runs),
        "probe_failures": sum(r["probe_failures"] for r in runs),
        "probe_error_kinds": _sum_kinds(runs, "probe_error_kinds"),
        "probe_p50_ms": _median([r["probe_p50_us"] / 1000 for r in runs if r["probe_p50_us"] is not None]),
        "probe_max_ms": max(probe_maxima) / 1000 if probe_maxima else None,
        "probe_max_target_ms": 1000 * probe_max_s,
        "server_cpu_percent": _median([r["server_cpu_percent"] for r in runs]),
        "server_peak_rss": max(r["server_peak_rss"] for r in runs),
    }
    summary["met"] = None if not summary["probes"] else (
        summary["completed"] == summary["expected"] and summary["probe_failures"] == 0
        and summary["probe_max_ms"] is not None and summary["probe_max_ms"] < 1000 * probe_max_s)
    return summary


def _sum_kinds(runs: list[dict[str, Any]], field: str = "error_kinds") -> dict[str, int]:
    kinds: dict[str, int] = {}
    for run in runs:
        for kind, count in run.get(field, {}).items():
            if count:
                kinds[kind] = kinds.get(kind, 0) + count
    return kinds


def summarise_shutdown(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median stop and close times."""
    return {"stop_ms": _median([1000 * r["stop_s"] for r in runs]),
            "close_ms": _median([1000 * r["close_s"] for r in runs]),
            "max_stop_ms": max(1000 * r["stop_s"] for r in runs)}


def summarise_memory(run: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """Memory while holding the connections, and its growth per connection."""
    pss, base_pss = run["pss"], run["base_pss"]
    growth = (pss - base_pss) if pss is not None and base_pss is not None else run["rss"] - run["base_rss"]
    return {"served": run["served"], "of": concurrency, "processes": run["processes"], "threads": run["threads"],
            "rss_mb": run["rss"] / MB, "pss_mb": None if pss is None else pss / MB,
            "kb_per_connection": growth / 1024 / max(1, run["served"])}


def summarise_idle_load(pairs: list[dict[str, Any]], idle: int) -> dict[str, Any]:
    """An idle-load cell: the load's figures alone (as a throughput cell, against the reference),
    beside the idle connections (``loaded``), the median of the per-pair ratios loaded / alone,
    and the memory the idle connections cost (the worst pair: the first one, usually, when the
    server's heap grows; later pairs reuse it)."""
    summary = summarise_throughput(pairs)
    alone = [p["contender"] for p in pairs]
    loaded = [p["loaded"] for p in pairs]
    refs = [p["reference"] for p in pairs]
    ratios = [w["ops_per_s"] / a["ops_per_s"] for w, a in zip(loaded, alone) if a["ops_per_s"]]
    per_idle = []
    for p in pairs:
        i = p["idle"]
        if i["pss"] is not None and i["base_pss"] is not None:
            per_idle.append((i["pss"] - i["base_pss"]) / max(1, i["held"]))
        else:
            per_idle.append((i["rss"] - i["base_rss"]) / max(1, i["held"]))
    summary.update({
        "idle": idle,
        "idle_held": min(p["idle"]["held"] for p in pairs),
        "loaded_ops_per_s": _median([r["ops_per_s"] for r in loaded]),
        "loaded_ratio_to_reference": _median([w["ops_per_s"] / f["ops_per_s"]
                                              for w, f in zip(loaded, refs) if f["ops_per_s"]]),
        "loaded_to_alone": _median(ratios),
        "loaded_pair_ratios": [round(x, 4) for x in ratios],
        "loaded_p99_us": _median([r["p99_us"] for r in loaded]),
        "loaded_errors": sum(r["errors"] for r in loaded),
        "loaded_error_kinds": _sum_kinds(loaded),
        "loaded_server_cpu_percent": _median([r["server_cpu_percent"] for r in loaded]),
        # Server CPU per exchange, alone and beside the idle connections: steadier than the rates
        # on a machine whose other load comes and goes.
        "cpu_us_per_op": _median([x for r in alone if (x := _cpu_us(r)) is not None]),
        "loaded_cpu_us_per_op": _median([x for r in loaded if (x := _cpu_us(r)) is not None]),
        "idle_pss_mb": max((p["idle"]["pss"] or p["idle"]["rss"]) for p in pairs) / MB,
        "idle_memory_is_pss": all(p["idle"]["pss"] is not None for p in pairs),
        "kib_per_idle": max(per_idle) / 1024,
        "fds_beside_idle": min(p["idle"]["fds"] for p in pairs),
    })
    return summary


def _cpu_us(run: dict[str, Any]) -> float | None:
    """A run's server CPU per exchange in microseconds (None without exchanges)."""
    rate: float = run["ops_per_s"]
    return run["server_cpu_percent"] / 100 / rate * 1e6 if rate else None


def one_line(cell: dict[str, Any]) -> str:
    """A progress line for a finished cell."""
    if cell["status"] != "ok":
        return f"{cell['status']}: {cell.get('reason', '')}"
    s = cell["summary"]
    if cell["kind"] == "throughput":
        return (f"{_num(s['ops_per_s'])} ops/s, {_ratio(s['ratio_to_reference'])} of reference, "
                f"p99 {_ms(s['p99_us'])} ms, errors {s['errors']}, lost {s['lost']}")
    if cell["kind"] == "http":
        versus = "" if s["ratio_to_baseline"] is None else f", {_ratio(s['ratio_to_baseline'])} of ThreadingHTTPServer"
        return (f"{_num(s['req_per_s'])} req/s{versus}, {s['completed']}/{s['expected']} completed, "
                f"errors {s['errors']}{_kinds(s['error_kinds'])}, probes p50 {_num_ms(s['probe_p50_ms'])} ms, "
                f"max {_num_ms(s['probe_max_ms'])} ms, {s['probe_failures']}/{s['probes']} failed"
                f"{_kinds(s['probe_error_kinds'])}; target {_verdict(s['met'])}")
    if cell["kind"] == "shutdown":
        return f"stop {s['stop_ms']:.1f} ms, close {s['close_ms']:.1f} ms"
    if cell["kind"] == "slow-clients":
        return slowclients.one_line(s)
    if cell["kind"] == "idle-load":
        return (f"{_num(s['ops_per_s'])} ops/s alone ({_ratio(s['ratio_to_reference'])} of reference), "
                f"{_num(s['loaded_ops_per_s'])} beside {s['idle_held']}/{s['idle']} idle "
                f"({_ratio(s['loaded_to_alone'])} of alone), {s['kib_per_idle']:.2f} KiB per idle connection, "
                f"errors {s['errors'] + s['loaded_errors']}")
    return f"{s['served']}/{s['of']} held, PSS {_num(s['pss_mb'])} MB, {s['kb_per_connection']:.0f} KB/connection"


# -- comparisons ----------------------------------------------------------------


#: A target's ``versus`` meaning the C reference server itself: the cell's own ratio, judged only
#: when the run's reference was the C server (not asyncio, without a C compiler).
C_REFERENCE = "c-reference"


@dataclass(frozen=True)
class Target:
    """A ratio the issue asks for."""

    workload: str
    contender: str
    #: Another contender, or C_REFERENCE.
    versus: str
    minimum: float
    what: str


TARGETS = [
    Target("crr-tcp-c50", "reactor-threadpool", "stdlib-threading", 1.5,
           "short connections: ThreadPool / ThreadingTCPServer"),
    Target("crr-tcp-c50", "reactor-prefork", "stdlib-forking", 10.0,
           "short connections: Prefork / ForkingTCPServer"),
    Target("crr-tcp-c50", "reactor-inline", "stdlib-inline", 1.0, "short connections: Inline / TCPServer"),
    Target("cpu-tcp-c8", "reactor-prefork", "reactor-inline", 1.7, "CPU-bound: Prefork(2) / Inline"),
    # Issue 11: event-driven connections in one thread.
    Target("rr-tcp-c50", "reactor-protocol", C_REFERENCE, 0.9, "request/reply, 50 connections: Protocol / C server"),
    Target("rr-tcp-c50", "reactor-protocol", "uvloop-protocol", 1.0,
           "request/reply, 50 connections: Protocol / uvloop Protocol"),
    Target("rr-tcp-c1000", "reactor-protocol", C_REFERENCE, 0.85,
           "request/reply, 1,000 connections, one thread: Protocol / C server"),
    Target("dgram-udp-c50", "reactor-protocol", C_REFERENCE, 0.6, "UDP echo: DatagramProtocol / C server"),
    Target("lines-tcp-c50", "reactor-inline", C_REFERENCE, 0.8,
           "framed line echo, 50 connections: LineRequestHandler on Inline / C server"),
]
#: Issue 11's idle-load targets, judged for this contender: the active connections keep this share
#: of their throughput beside the idle ones, and an idle connection costs at most this much PSS.
IDLE_TARGET_CONTENDER = "reactor-protocol"
IDLE_KEEP = 0.8
IDLE_KIB_MAX = 4.0
#: "Within reach of asyncio" on persistent connections, read as at least this ratio.
WITHIN_REACH = 0.8
#: Judged on every keep-alive HTTP workload of the run: every request completes and a fresh
#: client is served promptly (the probe threshold is plan.PROBE_MAX_S, recorded in each summary).
HTTP_TARGET_CONTENDER = "reactor-threadpool"
REACTOR = [name for name in CONTENDERS if name.startswith("reactor-")]
#: The socketserver strategies (the "within reach of asyncio" row picks the best of these; the
#: Protocol API has targets of its own).
REACTOR_STRATEGIES = [name for name in REACTOR if name != "reactor-protocol"]


def _scores(cells: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """Normalised throughput (ratio to the reference) per (workload, contender)."""
    return {(c["workload"], c["contender"]): c["summary"]["ratio_to_reference"]
            for c in cells if c["kind"] == "throughput" and c["status"] == "ok"
            and c["summary"]["ratio_to_reference"]}


def compare(cells: list[dict[str, Any]], workload: str, a: str, b: str) -> float | None:
    """Throughput of ``a`` over ``b`` on a workload, each normalised by its paired reference runs."""
    scores = _scores(cells)
    if (workload, a) in scores and (workload, b) in scores:
        return scores[workload, a] / scores[workload, b]
    return None


def ratio_to_c(cells: list[dict[str, Any]], workload: str, contender: str) -> float | None:
    """A contender's throughput over the C reference server's on a workload (None when the run's
    reference was not the C server)."""
    for c in cells:
        if (c["workload"], c["contender"], c["kind"], c["status"]) == (workload, contender, "throughput", "ok") \
                and c.get("reference", C_REFERENCE) == C_REFERENCE:
            ratio: float | None = c["summary"]["ratio_to_reference"]
            return ratio
    return None


def headline(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, and the best reactor strategy against asyncio on persistent connections."""
    rows = []
    for t in TARGETS:
        if t.versus == C_REFERENCE:
            ratio = ratio_to_c(cells, t.workload, t.contender)
        else:
            ratio = compare(cells, t.workload, t.contender, t.versus)
        rows.append({"what": t.what, "workload": t.workload, "ratio": ratio, "target": t.minimum,
                     "met": None if ratio is None else ratio >= t.minimum})
    rows += idle_headline(cells)
    scores = _scores(cells)
    for workload in sorted({w for w, _ in scores if w.startswith("rr-")}, key=_workload_order):
        best = max((c for c in REACTOR_STRATEGIES if (workload, c) in scores), key=lambda c: scores[workload, c],
                   default=None)
        ratio = None if best is None else compare(cells, workload, best, "asyncio")
        rows.append({"what": f"persistent connections: best reactor ({_short(best)}) / asyncio",
                     "workload": workload, "ratio": ratio, "target": WITHIN_REACH,
                     "met": None if ratio is None else ratio >= WITHIN_REACH})
    rows += http_headline(cells)
    rows += slowclients.headline(cells)
    return rows


def idle_headline(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The idle-load targets, per idle-load workload that ran on IDLE_TARGET_CONTENDER: the load
    beside the idle connections over the load alone, and the memory per idle connection (a figure
    and a verdict; every idle connection must have been held)."""
    rows: list[dict[str, Any]] = []
    for c in cells:
        if c["kind"] != "idle-load" or c["contender"] != IDLE_TARGET_CONTENDER or c["status"] != "ok":
            continue
        s = c["summary"]
        held = s["idle_held"] == s["idle"]
        idle = f"{s['idle']:,}"
        ratio = s["loaded_to_alone"]
        rows.append({"what": f"{c['concurrency']} active connections beside {idle} idle ones, one process: "
                             f"throughput with / without them", "workload": c["workload"], "ratio": ratio,
                     "target": IDLE_KEEP, "met": None if ratio is None else ratio >= IDLE_KEEP and held})
        kind = "PSS" if s["idle_memory_is_pss"] else "RSS"
        rows.append({"what": f"memory per idle connection ({kind}), {idle} idle connections",
                     "workload": c["workload"], "ratio": None, "target": None,
                     "figure": f"{s['kib_per_idle']:.2f} KiB ({s['idle_held']}/{s['idle']} held)",
                     "target_text": f"<= {IDLE_KIB_MAX:g} KiB, every one held",
                     "met": s["kib_per_idle"] <= IDLE_KIB_MAX and held})
    return rows


def http_headline(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The keep-alive target, per keep-alive workload that ran on ThreadPool(8): a figure and a
    verdict instead of a ratio."""
    rows = []
    for c in cells:
        if c["kind"] != "http" or c["contender"] != HTTP_TARGET_CONTENDER or c["status"] != "ok":
            continue
        s = c["summary"]
        limit = s["probe_max_target_ms"]
        rows.append({"what": f"keep-alive HTTP at c={c['concurrency']}: {c.get('label', 'ThreadPool')} completes "
                             f"every request, a fresh client served within {limit / 1000:g} s",
                     "workload": c["workload"], "ratio": None, "target": None,
                     "figure": (f"{s['completed']}/{s['expected']} completed; probes max "
                                f"{_num_ms(s['probe_max_ms'])} ms, {s['probe_failures']}/{s['probes']} failed"),
                     "target_text": f"all completed, no probe failed, max < {limit:.0f} ms", "met": s["met"]})
    return rows


def _workload_order(key: str) -> tuple[str, int]:
    name, _, conc = key.rpartition("-c")
    return name, int(conc)


def _short(contender: str | None) -> str:
    return "none" if contender is None else contender.removeprefix("reactor-")


# -- formatting -----------------------------------------------------------------


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def _ms(us: float | None) -> str:
    return "-" if us is None else f"{us / 1000:.2f}"


def _num_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f}" if ms >= 10 else f"{ms:.1f}"


def _kinds(kinds: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in kinds.items())})" if kinds else ""


def _verdict(met: bool | None) -> str:
    return "not judged (no probe ran)" if met is None else "met" if met else "MISSED"


def _cpu_per_op(summary: dict[str, Any]) -> str:
    """Server CPU per exchange: its CPU share over the run divided by the rate."""
    if not summary["ops_per_s"]:
        return "-"
    return f"{summary['server_cpu_percent'] / 100 / summary['ops_per_s'] * 1e6:.0f}"


def _cell_label(cell: dict[str, Any]) -> str:
    return cell.get("label") or label(cell["contender"], cell["transport"])


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _throughput_rows(cells: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in cells:
        if c["status"] != "ok":
            rows.append([_cell_label(c), f"{c['status']}: {c.get('reason', '')}"] + [""] * 8)
            continue
        s = c["summary"]
        errors = f"{s['errors']}" + (f" ({', '.join(f'{k} {v}' for k, v in s['error_kinds'].items())})"
                                     if s["error_kinds"] else "")
        rows.append([_cell_label(c), _num(s["ops_per_s"]), _ratio(s["ratio_to_reference"]),
                     _ms(s["p50_us"]), _ms(s["p99_us"]), errors, f"{s['lost']}",
                     f"{s['server_cpu_percent']:.0f}", _cpu_per_op(s), f"{s['server_peak_rss'] / MB:.0f}"])
    return rows


def markdown(results: dict[str, Any], chart_name: str | None) -> str:
    """The full report."""
    meta, cells = results["meta"], results["cells"]
    out = [f"# reactor benchmark, {meta['date']}", ""]
    out += [f"- commit `{meta['commit']}`, Python {meta['python']}, {meta['platform']}, {meta['cpus']} CPUs",
            f"- load generator: {meta['generator']}", f"- reference server: {meta['reference']}",
            f"- placement: {meta['placement']}; CPU-bound workload: {meta['placement_cpu_workload']}",
            f"- {meta['pairs']} reference/contender pairs per throughput cell, {meta['warmup_s']} s warm-up "
            f"+ {meta['duration_s']} s measured per run; plan `{meta['plan']}`, {meta['elapsed_s']} s in all",
            "- Figures are medians. `x ref` is the median over pairs of contender / reference throughput, "
            "each pair run back to back; ratios between contenders divide those medians, so the machine's "
            "drift between phases cancels.", ""]
    rows = [r for r in headline(cells) if r["ratio"] is not None or r.get("figure")]
    if rows:
        out += ["## Headline", ""]
        out += _table(["comparison", "workload", "ratio", "target", "met"],
                      [[r["what"], r["workload"], r.get("figure") or _ratio(r["ratio"]),
                        r.get("target_text") or f">= {r['target']}",
                        "-" if r["met"] is None else "yes" if r["met"] else "**no**"] for r in rows])
        out.append("")
    out += _saturation_section(cells)
    out += _versus_section(cells)
    if chart_name:
        out += [f"![throughput relative to the reference]({chart_name})", ""]
    by_workload: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        by_workload.setdefault(c["workload"], []).append(c)
    for key, group in by_workload.items():
        out += [f"## {meta['workloads'].get(key, key)}", ""]
        kind = group[0]["kind"]
        if kind == "throughput":
            out += _table(["contender", "ops/s", "x ref", "p50 ms", "p99 ms", "errors", "lost", "server CPU %",
                           "CPU us/op", "peak RSS MB (sum)"], _throughput_rows(group))
        elif kind == "http":
            out += _http_section(group)
        elif kind == "idle-load":
            out += _idle_load_section(group)
        elif kind == "slow-clients":
            out += slowclients.section(group)
        elif kind == "shutdown":
            out += _table(["contender", "shutdown() ms", "to all closed ms", "worst shutdown() ms"],
                          [[_cell_label(c), f"{c['summary']['stop_ms']:.1f}", f"{c['summary']['close_ms']:.1f}",
                            f"{c['summary']['max_stop_ms']:.1f}"] if c["status"] == "ok"
                           else [_cell_label(c), f"{c['status']}: {c.get('reason', '')}", "", ""] for c in group])
        else:
            out += _table(["contender", "held", "processes", "threads", "RSS MB (sum)", "PSS MB", "KB per connection"],
                          [_memory_row(c) for c in group])
        out.append("")
    return "\n".join(out)


def _http_section(group: list[dict[str, Any]]) -> list[str]:
    target = next((c["summary"]["probe_max_target_ms"] for c in group if c["status"] == "ok"), None)
    lines = ["Each contender's runs alternate with runs against the stdlib's ThreadingHTTPServer (a thread "
             "per connection) started beside it; `x stdlib` is the median of the per-pair ratios. A run "
             "stops once its requests are all answered, or at its time limit. Meanwhile a probe opens a "
             f"fresh connection every {PROBE_INTERVAL_S * 1000:.0f} ms for one request, timed from connect() "
             "to the last byte; it fails after the load generator's timeout (2 s). req/s counts the requests "
             "completed in the measured window: on a server that stalls, they come from the few connections "
             "it still serves, so read them with the completed column. Completed, errors and "
             "probes are summed over the runs, probe max is the "
             "worst." + ("" if target is None else
                         f" Target: every request completed, no probe failed, probe max < {target:.0f} ms."),
             ""]
    rows = []
    for c in group:
        if c["status"] != "ok":
            rows.append([_cell_label(c), f"{c['status']}: {c.get('reason', '')}"] + [""] * 10)
            continue
        s = c["summary"]
        rows.append([_cell_label(c), _num(s["req_per_s"]),
                     "baseline" if s["ratio_to_baseline"] is None else _ratio(s["ratio_to_baseline"]),
                     f"{s['completed']}/{s['expected']}", f"{s['errors']}{_kinds(s['error_kinds'])}",
                     f"{s['unanswered']}", f"{s['closed_by_server']}", _ms(s["p99_us"]),
                     _num_ms(s["probe_p50_ms"]), _num_ms(s["probe_max_ms"]),
                     f"{s['probe_failures']}/{s['probes']}{_kinds(s['probe_error_kinds'])}",
                     "-" if s["met"] is None else "yes" if s["met"] else "**no**"])
    return lines + _table(["contender", "req/s", "x stdlib", "completed", "errors", "unanswered",
                           "closed by server", "p99 ms", "probe p50 ms", "probe max ms", "probes failed",
                           "target met"], rows)


def _idle_load_section(group: list[dict[str, Any]]) -> list[str]:
    idle = next((c["summary"]["idle"] for c in group if c["status"] == "ok"), None)
    lines = ["Each pair: the C reference, the contender alone, then the contender again while a second load "
             f"generator holds {'the' if idle is None else f'{idle:,}'} idle connections open (each served once, "
             "opened after the run alone and closed after the run beside them). `beside / alone` is the median "
             "of the per-pair ratios (server CPU per exchange, beside it, is the steadier figure on a busy machine); memory is the server's growth from just before the idle connections "
             "were opened to once they were all served, per idle connection held (the worst pair). "
             "`fds` counts the server's descriptors after the run beside them: the idle connections were "
             f"still open. Target for {label(IDLE_TARGET_CONTENDER)}: beside / alone >= {IDLE_KEEP}, "
             f"<= {IDLE_KIB_MAX:g} KiB per idle connection.", ""]
    rows = []
    for c in group:
        if c["status"] != "ok":
            rows.append([_cell_label(c), f"{c['status']}: {c.get('reason', '')}"] + [""] * 9)
            continue
        s = c["summary"]
        errors = s["errors"] + s["loaded_errors"]
        kinds = _sum_kinds([{"error_kinds": s["error_kinds"]}, {"error_kinds": s["loaded_error_kinds"]}])
        rows.append([_cell_label(c), _num(s["ops_per_s"]), _ratio(s["ratio_to_reference"]),
                     _num(s["loaded_ops_per_s"]), _ratio(s["loaded_to_alone"]), _ms(s["loaded_p99_us"]),
                     f"{_us(s.get('cpu_us_per_op'))} / {_us(s.get('loaded_cpu_us_per_op'))}",
                     f"{s['idle_held']}/{s['idle']}", f"{s['fds_beside_idle']}", f"{s['idle_pss_mb']:.1f}",
                     f"{s['kib_per_idle']:.2f}", f"{errors}{_kinds(kinds)}"])
    return lines + _table(["contender", "ops/s alone", "x ref", "ops/s beside idle", "beside / alone",
                           "p99 ms beside idle", "CPU us/op alone / beside", "idle held", "fds", "PSS MB with idle",
                           "KiB per idle connection", "errors"], rows)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _memory_row(c: dict[str, Any]) -> list[str]:
    if c["status"] != "ok":
        return [_cell_label(c), f"{c['status']}: {c.get('reason', '')}"] + [""] * 5
    s = c["summary"]
    return [_cell_label(c), f"{s['served']}/{s['of']}", f"{s['processes']}", f"{s['threads']}",
            f"{s['rss_mb']:.1f}", "-" if s["pss_mb"] is None else f"{s['pss_mb']:.1f}",
            f"{s['kb_per_connection']:.0f}"]


def _saturation_section(cells: list[dict[str, Any]]) -> list[str]:
    rows = []
    for key in dict.fromkeys(c["workload"] for c in cells if c["kind"] == "throughput"):
        ok = [c for c in cells if c["workload"] == key and c["status"] == "ok"]
        if not ok:
            continue
        best = max(ok, key=lambda c: c["summary"]["ops_per_s"])
        reference = _median([c["summary"]["reference_ops_per_s"] for c in ok])
        headroom = reference / best["summary"]["ops_per_s"] if reference and best["summary"]["ops_per_s"] else None
        rows.append([key, _num(reference), f"{_cell_label(best)}: {_num(best['summary']['ops_per_s'])}",
                     _ratio(headroom)])
    if not rows:
        return []
    return ["## The load generator is not the bottleneck", "",
            "The same load against the C reference server, in the same run, against the fastest Python contender:",
            "", *_table(["workload", "reference ops/s", "fastest Python contender ops/s", "reference / fastest"],
                        rows), ""]


def _versus_section(cells: list[dict[str, Any]]) -> list[str]:
    rows = []
    for key in dict.fromkeys(c["workload"] for c in cells if c["kind"] == "throughput"):
        for contender in REACTOR:
            peer = CONTENDERS[contender].stdlib_peer
            vs_std = compare(cells, key, contender, peer) if peer else None
            vs_asyncio = compare(cells, key, contender, "asyncio")
            if vs_std is not None or vs_asyncio is not None:
                transport = next(c["transport"] for c in cells if c["workload"] == key)
                rows.append([key, label(contender, transport),
                             "-" if peer is None or vs_std is None else f"{_ratio(vs_std)} {label(peer, transport)}",
                             _ratio(vs_asyncio)])
    if not rows:
        return []
    return ["## reactor against its stdlib equivalent and asyncio (throughput ratios)", "",
            *_table(["workload", "reactor strategy", "vs stdlib equivalent", "vs asyncio"], rows), ""]


def terminal_table(results: dict[str, Any]) -> str:
    """A plain-text table for the terminal."""
    lines = []
    for c in results["cells"]:
        lines.append(f"{c['workload']:<20} {_cell_label(c):<36} {one_line(c)}")
    for r in headline(results["cells"]):
        if r.get("figure"):
            lines.append(f"{r['what']} [{r['workload']}]: {r['figure']} (target: {r['target_text']}): "
                         f"{_verdict(r['met'])}")
        elif r["ratio"] is not None:
            verdict = "met" if r["met"] else "MISSED"
            lines.append(f"{r['what']} [{r['workload']}]: {_ratio(r['ratio'])} (target >= {r['target']}): {verdict}")
    return "\n".join(lines)


# -- files ------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> bool:
    """Grouped bars of each contender's throughput relative to the reference; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = [c for c in results["cells"] if c["kind"] == "throughput" and c["status"] == "ok"]
    workloads = list(dict.fromkeys(c["workload"] for c in cells))
    contenders = [name for name in CONTENDERS if any(c["contender"] == name for c in cells)]
    if not workloads:
        return False
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(workloads) + 3), 5.5))
    width = 0.8 / max(1, len(contenders))
    scores = _scores(cells)
    for i, contender in enumerate(contenders):
        xs = [w + (i - (len(contenders) - 1) / 2) * width for w in range(len(workloads))]
        ys = [scores.get((key, contender), 0.0) for key in workloads]
        hatch = "" if contender.startswith("reactor-") else "//"
        ax.bar(xs, ys, width, label=label(contender), hatch=hatch)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=20, ha="right")
    ax.set_ylabel("throughput / C reference (median of pairs)")
    ax.set_title(f"reactor bench {results['meta']['date']} ({results['meta']['cpus']} CPUs)")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(results: dict[str, Any], stem: Path) -> list[Path]:
    """Write ``stem``.json, .md and (with matplotlib) .png; return the paths written."""
    json_path = stem.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    png_path = stem.with_suffix(".png")
    has_chart = chart(results, png_path)
    md_path = stem.with_suffix(".md")
    text = markdown(results, png_path.name if has_chart else None)
    charted = any(c["kind"] == "throughput" and c["status"] == "ok" for c in results["cells"])
    if not has_chart and charted:  # else there was nothing to chart (a keep-alive-only run, say)
        text += "\n(no chart: matplotlib is not installed; `pip install -e '.[bench]'`)\n"
    md_path.write_text(text)
    return [json_path, md_path] + ([png_path] if has_chart else [])


def main(argv: list[str] | None = None) -> int:
    """Render the report and chart again from a results JSON file."""
    parser = argparse.ArgumentParser(description="Rewrite <stem>.md and <stem>.png from <stem>.json.")
    parser.add_argument("results", type=Path, help="a bench/results/<date>.json file")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in write_all(results, args.results.with_suffix("")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
