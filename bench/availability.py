"""Availability under slow clients (issue 14): slowhttptest against each server, the share of seconds available.

For each server and attack, the server runs in a fresh interpreter (this file's
``serve`` command) serving an HTTP/1.1 ``http.server.SimpleHTTPRequestHandler``
(or, for waitress and gunicorn, a small WSGI app serving the same files) from a
scratch directory holding ``index.html`` and a 256 KiB ``big.bin``, and
``slowhttptest`` attacks it:

* ``slowloris`` (``-H``): 600 connections opened at 200/s, each sending a
  header line every 5 s, never the blank line; ``GET /index.html``.
* ``body`` (``-B``): the same, sending a whole head with ``Content-Length:
  4096`` (slowhttptest's default) and then a body chunk every 5 s;
  ``POST /index.html``. The handler gains a ``do_POST`` that reads the body
  and answers 200 (``handle()`` untouched): ``SimpleHTTPRequestHandler``
  alone would answer 501 at once without reading the body, and close, so no
  server would ever wait on the slow body.
* ``read`` (``-X``): each connection asks for ``big.bin`` three times
  (pipelined, ``-k 3``) with a receive window of 512-1024 bytes and reads
  32 bytes every 5 s.

slowhttptest's probe connects every ``-p`` seconds (3 s) and sends ``GET`` for the
same URL; the service counts as available from a probe's first reply byte until a
probe gets none within 3 s (its CSV's "Service Available" column). The figure is
the share of the CSV's rows (one per second) in which it was available. While it
runs, the server's RSS (its whole process tree, from ``/proc/<pid>/status``) is
sampled every 100 ms, and a reactor server writes its ``Reactor.stats()`` every
second to a file, so a run below 99 % can be explained.

Usage::

    PYTHONPATH=. python bench/availability.py                       # the full table, ~13 min
    PYTHONPATH=. python bench/availability.py --servers reactor-threadpool --attacks slowloris \\
        --duration 10 --connections 100

Servers: reactor ``ThreadPool(8)``, ``Prefork(2, threads=4)`` and ``ThreadPool(8)``
with ``read_ahead=False``; the stdlib's ``ThreadingHTTPServer``; waitress with 8
threads, with its defaults (``connection_limit=100``) and with
``connection_limit=1000``; gunicorn sync with 1 worker. ``--big-kib`` and
``--read-pipeline`` make the slow read's replies bigger than the kernel's send
buffers take (at 256 KiB x 3 on Linux loopback, they take most of it).

Prints a markdown table and writes ``bench/results/availability-<date>.json``
and ``.md``. Every server process is stopped by its pid (SIGTERM, then SIGKILL),
then any process left in its session (gunicorn's and Prefork's workers).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import functools
import http.client
import http.server
import importlib
import importlib.util
import json
import logging
import os
import re
import resource
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SLOWHTTPTEST = "slowhttptest"
BIG_SIZE = 256 * 1024
BACKLOG = 1024

SERVERS: dict[str, str] = {
    "reactor-threadpool": "reactor `ThreadPool(8)`",
    "reactor-prefork": "reactor `Prefork` (2 workers x 4 threads)",
    "reactor-threadpool-no-read-ahead": "reactor `ThreadPool(8)`, `read_ahead=False`",
    "stdlib-threading": "stdlib `ThreadingHTTPServer` (a thread per connection)",
    "waitress": "waitress, 8 threads (WSGI)",
    "waitress-1000": "waitress, 8 threads, `connection_limit=1000` (WSGI)",
    "gunicorn": "gunicorn sync, 1 worker (WSGI)",
}
ATTACKS: dict[str, str] = {"slowloris": "slowloris", "body": "slow body", "read": "slow read"}
#: The servers whose RSS per connection is reported (for these attacks).
MEMORY_SERVERS = ("reactor-threadpool",)
MEMORY_ATTACKS = ("slowloris", "read")


# -- the served application ----------------------------------------------------


class Handler(http.server.SimpleHTTPRequestHandler):
    """The stdlib's file server speaking HTTP/1.1, silent, with a ``do_POST`` that reads its body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                return
            remaining -= len(chunk)
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The same site for the WSGI servers: the docroot's files on GET, and a POST that reads its body."""
    if environ["REQUEST_METHOD"] == "POST":
        remaining = int(environ.get("CONTENT_LENGTH") or 0)
        stream = environ["wsgi.input"]
        while remaining > 0:
            chunk = stream.read(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]
    docroot = Path(os.environ["AVAILABILITY_DOCROOT"])
    name = environ.get("PATH_INFO", "/").lstrip("/") or "index.html"
    path = docroot / name
    if "/" in name or not path.is_file():
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    kind = "text/html" if name.endswith(".html") else "application/octet-stream"
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(path.stat().st_size))])
    f = open(path, "rb")  # closed by the file wrapper's close()
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(f, 65536)  # type: ignore[no-any-return]
    return _read_chunks(f)


def _read_chunks(f: Any) -> Iterator[bytes]:
    with f:
        while chunk := f.read(65536):
            yield chunk


def make_docroot(path: Path, big_size: int = BIG_SIZE) -> None:
    """``index.html`` (small) and ``big.bin`` (256 KiB) in ``path``."""
    (path / "index.html").write_bytes(b"<!doctype html><title>availability</title><p>hello</p>\n")
    (path / "big.bin").write_bytes(bytes(range(256)) * (big_size // 256))


# -- the server process (``serve``) ---------------------------------------------


def raise_fd_limit() -> None:
    """Let the process hold as many descriptors as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _StdlibHTTPServer(http.server.HTTPServer):
    request_queue_size = BACKLOG
    allow_reuse_address = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind also looks up the host's FQDN, which no handler here reads.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _ThreadingHTTPServer(http.server.ThreadingHTTPServer):
    request_queue_size = BACKLOG
    allow_reuse_address = True
    daemon_threads = True


def serve(server_name: str, port: int, docroot: str, stats_file: str | None) -> None:
    """Serve until SIGTERM; print ``READY`` once listening."""
    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    address = ("127.0.0.1", port)
    handler = functools.partial(Handler, directory=docroot)
    if server_name.startswith("reactor-"):
        _serve_reactor(server_name, address, handler, stats_file)
    elif server_name == "stdlib-threading":
        server = _ThreadingHTTPServer(address, handler)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serving = threading.Thread(target=server.serve_forever, name="serve_forever")
        serving.start()
        print("READY", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        server.shutdown()
        serving.join()
        server.server_close()
    elif server_name in ("waitress", "waitress-1000"):
        os.environ["AVAILABILITY_DOCROOT"] = docroot
        waitress = importlib.import_module("waitress")
        limits = {"connection_limit": 1000} if server_name == "waitress-1000" else {}
        wsgi_server = waitress.create_server(wsgi_app, host=address[0], port=port, threads=8, **limits)
        print("READY", flush=True)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        with contextlib.suppress(SystemExit):
            wsgi_server.run()
        wsgi_server.close()
    elif server_name == "gunicorn":
        os.environ["AVAILABILITY_DOCROOT"] = docroot
        wsgiapp = importlib.import_module("gunicorn.app.wsgiapp")
        sys.argv = ["gunicorn", "--workers", "1", "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
                    "--chdir", str(HERE), "--log-level", "warning", "availability:wsgi_app"]
        print("READY", flush=True)  # the driver waits for the port to answer, too
        wsgiapp.run()
    else:
        raise SystemExit(f"unknown server {server_name!r}")


def _serve_reactor(server_name: str, address: tuple[str, int], handler: Any, stats_file: str | None) -> None:
    from reactor import Prefork, Reactor, ThreadPool

    server = _StdlibHTTPServer(address, handler)
    with Reactor() as reactor:
        if server_name == "reactor-threadpool":
            reactor.add_server(server, ThreadPool(8))
        elif server_name == "reactor-threadpool-no-read-ahead":
            reactor.add_server(server, ThreadPool(8), read_ahead=False)
        elif server_name == "reactor-prefork":
            reactor.add_server(server, Prefork(2, threads=4, handle_signals=False))
        else:
            raise SystemExit(f"unknown server {server_name!r}")
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.stop())
        if stats_file:
            out = open(stats_file, "w")

            def write_stats() -> None:
                out.write(json.dumps(reactor.stats()) + "\n")
                out.flush()
                reactor.call_later(1.0, write_stats)

            reactor.call_soon(write_stats)
        print("READY", flush=True)
        reactor.serve_forever()


# -- the driver ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (a server started in its own session: its tree)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def rss_of(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Samples the RSS of a server's process tree (and of its main process) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time, main process RSS, tree RSS)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            main = rss_of(self.pid)
            tree = sum(rss_of(p) for p in session_pids(self.pid))
            self.samples.append((time.time(), main, tree))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def wait_ready(proc: subprocess.Popen[str], port: int, timeout: float = 30.0) -> None:
    """Until the server printed READY and answers ``GET /index.html``."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "READY" not in line:
        raise RuntimeError(f"server did not start: {line!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/index.html")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("server does not answer")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """SIGTERM, then SIGKILL after ``timeout``; then SIGKILL whatever is left in its session. How it ended."""
    how = "exited"
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
            how = "SIGTERM"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            how = "SIGKILL"
    deadline = time.monotonic() + timeout
    while (left := session_pids(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in session_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            how += f", killed leftover {pid}"
    return how


def slowhttptest_args(attack: str, port: int, connections: int, rate: int, duration: int, prefix: str,
                      read_pipeline: int = 3) -> list[str]:
    common = ["-c", str(connections), "-r", str(rate), "-p", "3", "-l", str(duration), "-g", "-o", prefix]
    base = f"http://127.0.0.1:{port}"
    if attack == "slowloris":
        return [SLOWHTTPTEST, "-H", "-i", "5", "-t", "GET", "-u", f"{base}/index.html"] + common
    if attack == "body":
        return [SLOWHTTPTEST, "-B", "-i", "5", "-t", "POST", "-u", f"{base}/index.html"] + common
    if attack == "read":
        return [SLOWHTTPTEST, "-X", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", str(read_pipeline),
                "-t", "GET", "-u", f"{base}/big.bin"] + common
    raise ValueError(attack)


def read_csv(path: Path) -> list[dict[str, int]]:
    """slowhttptest's CSV: one row a second (Seconds, Closed, Pending, Connected, Service Available)."""
    with open(path, newline="") as f:
        return [{key.strip().lower(): int(value) for key, value in row.items() if key and value not in (None, "")}
                for row in csv.DictReader(f)]


def memory_at_peak(rows: list[dict[str, int]], started: float,
                   samples: list[tuple[float, int, int]]) -> dict[str, Any] | None:
    """The server's RSS in the second when most connections were open, over those connections."""
    if not rows or not samples:
        return None
    baseline = min(main for t, main, _ in samples[:5])
    best: dict[str, Any] | None = None
    for row in rows:
        connected = row.get("connected", 0)
        lo, hi = started + row["seconds"], started + row["seconds"] + 1
        in_second = [main for t, main, _ in samples if lo <= t < hi]
        if not in_second or connected <= 0:
            continue
        rss = max(in_second)
        if best is None or (connected, rss) > (best["connected"], best["rss"]):
            best = {"second": row["seconds"], "connected": connected, "rss": rss}
    if best is None:
        return None
    best["rss_before"] = baseline
    best["bytes_per_connection"] = round(best["rss"] / best["connected"])
    best["growth_per_connection"] = round((best["rss"] - baseline) / best["connected"])
    best["peak_rss"] = max(main for _, main, _ in samples)
    return best


def last_stats(path: Path) -> dict[str, Any] | None:
    """The server's counters from its last ``Reactor.stats()`` line, and the peak ``open`` gauge."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    if not lines:
        return None
    server = lines[-1]["servers"][0]
    peak_open = max((s["servers"][0].get("gauges", {}).get("open", 0) for s in lines), default=0)
    return {"counters": server.get("counters"), "gauges": server.get("gauges"), "pool": server.get("pool"),
            "peak_open": peak_open, "threads": lines[-1]["process"].get("threads")}


def run_one(server: str, attack: str, args: argparse.Namespace, docroot: Path, workdir: Path) -> dict[str, Any]:
    """One server under one attack: its availability, the slowhttptest CSV summary, memory, stats."""
    port = free_port()
    name = f"{server}-{attack}"
    stats_file = workdir / f"{name}.stats.jsonl"
    server_log = open(workdir / f"{name}.server.log", "w")
    command = [sys.executable, str(Path(__file__).resolve()), "serve", "--server", server, "--port", str(port),
               "--docroot", str(docroot)]
    if server.startswith("reactor-"):
        command += ["--stats-file", str(stats_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=server_log, text=True, start_new_session=True)
    result: dict[str, Any] = {"server": server, "attack": attack}
    sampler = Sampler(proc.pid)
    try:
        wait_ready(proc, port)
        sampler.start()
        time.sleep(0.5)  # a few samples before the attack: the baseline
        prefix = str(workdir / name)
        attack_args = slowhttptest_args(attack, port, args.connections, args.rate, args.duration, prefix,
                                        args.read_pipeline)
        result["slowhttptest"] = " ".join(a if "/" not in a or a.startswith("http") else Path(a).name
                                          for a in attack_args)
        started = time.time()
        attack_log = workdir / f"{name}.slowhttptest.log"
        with open(attack_log, "w") as log:
            subprocess.run(attack_args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                           timeout=args.duration + 60, check=False)
        result["ended"] = _exit_status(attack_log)
        sampler.stop()
        if not Path(prefix + ".csv").exists():
            raise RuntimeError("slowhttptest wrote no CSV: " + " / ".join(
                attack_log.read_text(errors="replace").strip().splitlines()[-2:]))
        rows = read_csv(Path(prefix + ".csv"))
        available = [row for row in rows if row.get("service available", 0) > 0]
        result.update({
            "seconds": len(rows),
            "available_seconds": len(available),
            "availability": round(len(available) / len(rows), 4) if rows else None,
            "unavailable_at": [row["seconds"] for row in rows if row.get("service available", 0) <= 0],
            "max_connected": max((row.get("connected", 0) for row in rows), default=0),
            "closed_at_end": rows[-1].get("closed", 0) if rows else 0,
            "peak_tree_rss": max((tree for _, _, tree in sampler.samples), default=0),
            "server_alive": proc.poll() is None,
        })
        if server in MEMORY_SERVERS and attack in MEMORY_ATTACKS:
            result["memory"] = memory_at_peak(rows, started, sampler.samples)
        result["stats"] = last_stats(stats_file)
    except Exception as exc:  # a failed cell is reported, the table goes on
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler.is_alive():
            sampler.stop()
        result["stopped"] = stop_server(proc)
        server_log.close()
    log_text = (workdir / f"{name}.server.log").read_text(errors="replace")
    result["server_log_lines"] = len(log_text.splitlines())
    result["server_log_tail"] = log_text.splitlines()[-10:]
    return result


def _exit_status(log: Path) -> str | None:
    """slowhttptest's "Exit status" (e.g. "Hit test time limit", "No open connections left")."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
    match = re.search(r"Exit status:\s*(.+)", text)
    return match.group(1).strip() if match else None


def percent(value: float | None) -> str:
    if value is None:
        return "n/a"
    figure = value * 100
    return f"{figure:.0f} %" if figure in (0, 100) or figure < 99 else f"{figure:.1f} %"


def markdown(results: list[dict[str, Any]], servers: list[str], attacks: list[str]) -> str:
    cells = {(r["server"], r["attack"]): r for r in results}
    lines = ["| server | " + " | ".join(ATTACKS[a] for a in attacks) + " |",
             "|---|" + "---|" * len(attacks)]
    for server in servers:
        row = []
        for attack in attacks:
            r = cells.get((server, attack))
            row.append("n/a" if r is None or "error" in r else percent(r.get("availability")))
        lines.append(f"| {SERVERS[server]} | " + " | ".join(row) + " |")
    memory = [r for r in results if r.get("memory")]
    if memory:
        lines += ["", "| server | attack | connections open | RSS | bytes per connection | growth per connection |",
                  "|---|---|---|---|---|---|"]
        for r in memory:
            m = r["memory"]
            lines.append(f"| {SERVERS[r['server']]} | {ATTACKS[r['attack']]} | {m['connected']} | "
                         f"{m['rss'] / 2**20:.1f} MiB | {m['bytes_per_connection']:,} | "
                         f"{m['growth_per_connection']:,} |")
    return "\n".join(lines) + "\n"


def drive(args: argparse.Namespace) -> int:
    if shutil.which(SLOWHTTPTEST) is None:
        print("slowhttptest is not installed (Debian: apt-get install slowhttptest)", file=sys.stderr)
        return 2
    servers = args.servers.split(",")
    attacks = args.attacks.split(",")
    for name in servers:
        if name not in SERVERS:
            raise SystemExit(f"unknown server {name!r}: {', '.join(SERVERS)}")
    for name in attacks:
        if name not in ATTACKS:
            raise SystemExit(f"unknown attack {name!r}: {', '.join(ATTACKS)}")
    raise_fd_limit()  # slowhttptest inherits it
    results: list[dict[str, Any]] = []
    keep = Path(args.keep) if args.keep else None
    with tempfile.TemporaryDirectory(prefix="availability-") as scratch:
        docroot = Path(scratch) / "docroot"
        docroot.mkdir()
        make_docroot(docroot, args.big_kib * 1024)
        workdir = keep if keep else Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for server in servers:
            if server in ("waitress", "gunicorn") and importlib.util.find_spec(server) is None:
                print(f"{server}: not installed, skipped", file=sys.stderr)
                continue
            for attack in attacks:
                result = run_one(server, attack, args, docroot, workdir)
                results.append(result)
                summary = result.get("error") or f"{percent(result.get('availability'))} available " \
                    f"({result.get('available_seconds')}/{result.get('seconds')} s, " \
                    f"max {result.get('max_connected')} connected)"
                print(f"{server} {attack}: {summary}", file=sys.stderr, flush=True)
                time.sleep(args.pause)
    table = markdown(results, servers, attacks)
    print(table)
    date = datetime.date.today().isoformat()
    out = Path(args.output) if args.output else RESULTS / f"availability-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": date,
        "parameters": {"connections": args.connections, "rate": args.rate, "duration": args.duration,
                       "probe_timeout": 3, "interval": 5, "read_pipeline": args.read_pipeline,
                       "big_kib": args.big_kib,
                       "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
                       "slowhttptest": _slowhttptest_version()},
        "results": results,
        "table": table,
    }
    out.write_text(json.dumps(document, indent=1) + "\n")
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


def _slowhttptest_version() -> str | None:
    try:
        text = subprocess.run([SLOWHTTPTEST, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        if "version" in line:
            return line.split("version")[-1].strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="(internal) run one server until SIGTERM")
    serve_parser.add_argument("--server", required=True, choices=sorted(SERVERS))
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--docroot", required=True)
    serve_parser.add_argument("--stats-file")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: " + ", ".join(SERVERS))
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated: " + ", ".join(ATTACKS))
    parser.add_argument("--duration", type=int, default=30, help="seconds per run (slowhttptest -l)")
    parser.add_argument("--connections", type=int, default=600, help="slowhttptest -c")
    parser.add_argument("--rate", type=int, default=200, help="connections opened per second (slowhttptest -r)")
    parser.add_argument("--read-pipeline", type=int, default=3,
                        help="slow read: requests pipelined per connection (slowhttptest -k)")
    parser.add_argument("--big-kib", type=int, default=BIG_SIZE // 1024,
                        help="slow read: the size of the file read slowly, in KiB")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--output", help="the JSON file (default bench/results/availability-<date>.json)")
    parser.add_argument("--keep", help="keep slowhttptest's CSV/HTML, the server logs and stats in this directory")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.server, args.port, args.docroot, args.stats_file)
        return 0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
