"""The bench's keep-alive HTTP workload: the HTTP/1.1 client of both load generators
(``--mode http`` of bench/loadgen.c and bench/pyloadgen.py) against real servers on loopback,
the HTTP contenders of bench/servers.py, and the figures the report derives.

Counts are checked exactly against what the server saw. A server that closes connections,
answers garbage or never answers must show up as counted errors in a run that ends by itself,
never as a hang. No speed is asserted.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))

import plan  # noqa: E402
import report  # noqa: E402
from procs import LineReader, stop_process  # noqa: E402
from servers import CONTENDERS  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bench is Linux's (epoll, /proc)")

CC = shutil.which("cc")
IO_TIMEOUT = 10.0
BODY = bytes(range(256)) * 4  # the 1 KiB file
HTTP_FIELDS = {"requests", "completed", "failed", "unanswered", "closed_by_server", "probes", "probe_failures",
               "probe_p50_us", "probe_max_us", "probe_error_kinds"}


# -- the two load generators ------------------------------------------------------------


@pytest.fixture(scope="module")
def c_loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bench/loadgen.c compiled as ``make bench-tools`` does (warnings are errors)."""
    if CC is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C compiler: CI must run this test", pytrace=False)
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("loadgen") / "loadgen"
    subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-o", str(out),
                    str(BENCH / "loadgen.c"), "-lm"], check=True, timeout=120)
    return out


class Loadgen:
    """One of the two generators, run in http mode over tcp."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.command = command

    def exit(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.command, "--mode", "http", "--transport", "tcp", *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def __call__(self, *args: str) -> dict[str, Any]:
        """Run to the end; the result line, checked for the consistency every http run must have,
        plus ``wall_s``, how long it ran."""
        options = dict(zip(args[::2], args[1::2]))
        # The contract's bound, warmup + duration + timeout + 1, and slack for a loaded machine.
        bound = sum(float(options[name]) for name in ("--warmup", "--duration", "--timeout")) + 1
        started = time.monotonic()
        proc = self.exit(*args, timeout=bound + 10)
        wall = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
        assert result["generator"] == self.name and result["mode"] == "http"
        assert HTTP_FIELDS <= set(result)
        assert result["requests"] == int(options.get("--requests", 0))
        assert result["errors"] == sum(result["error_kinds"].values())
        assert result["probe_failures"] == sum(result["probe_error_kinds"].values())
        sent = result["completed"] + result["failed"] + result["unanswered"]
        assert not result["requests"] or sent <= result["requests"]
        succeeded = result["probes"] - result["probe_failures"]
        assert (result["probe_max_us"] is None) == (succeeded == 0)
        if succeeded:
            assert 0 < result["probe_p50_us"] <= result["probe_max_us"]
        assert wall < bound + 2, f"ran {wall:.1f} s, past the contract's {bound:.1f} s"
        result["wall_s"] = wall
        return result


@pytest.fixture(params=["c", "python"])
def loadgen(request: pytest.FixtureRequest) -> Loadgen:
    if request.param == "c":
        return Loadgen("c", [str(request.getfixturevalue("c_loadgen"))])
    return Loadgen("python", [sys.executable, str(BENCH / "pyloadgen.py")])


def run_args(address: str, *, concurrency: int, requests: int, probe_interval: float = 0.0,
             duration: float = 20.0, timeout: float = 5.0, path: str = "/file") -> tuple[str, ...]:
    """Arguments for a run counted from its start (no warm-up) and meant to end by its count."""
    return ("--address", address, "--path", path, "--concurrency", str(concurrency), "--requests", str(requests),
            "--probe-interval", str(probe_interval), "--warmup", "0", "--duration", str(duration),
            "--timeout", str(timeout))


# -- servers ------------------------------------------------------------------------------


class Counts:
    """What a test server saw, updated from its handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.answered = 0  # requests answered
        self.dropped = 0   # requests read, then the connection closed unanswered

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


@contextlib.contextmanager
def serving(server: socketserver.TCPServer) -> Iterator[str]:
    """Serve ``server`` on a thread (it listens already); yield its address in the loadgen syntax."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="test-http-server")
    thread.start()
    try:
        host, port = server.socket.getsockname()[:2]
        yield f"{host}:{port}"
    finally:
        server.shutdown()
        thread.join(IO_TIMEOUT)
        server.server_close()


@contextlib.contextmanager
def file_server(tmp_path: Path, protocol: str) -> Iterator[tuple[str, Counts]]:
    """The stdlib's ThreadingHTTPServer and SimpleHTTPRequestHandler serving ``/file`` (1 KiB),
    counting connections and requests."""
    (tmp_path / "file").write_bytes(BODY)
    counts = Counts()

    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = protocol
        timeout = IO_TIMEOUT

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def setup(self) -> None:
            super().setup()
            counts.add("connections")

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            counts.add("answered")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with serving(server) as address:
        yield address, counts


#: A scripted server's answer to the n-th request of a connection: the bytes to send and whether
#: to close afterwards; None closes without answering.
Script = Callable[[int], Optional[tuple[bytes, bool]]]


def response(body: bytes = b"hello", head: str = "HTTP/1.1 200 OK") -> bytes:
    return f"{head}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@contextlib.contextmanager
def scripted_server(script: Script) -> Iterator[tuple[str, Counts]]:
    """A raw HTTP-ish server: reads each request head, answers what ``script`` says."""
    counts = Counts()

    class Handler(socketserver.StreamRequestHandler):
        timeout = IO_TIMEOUT

        def handle(self) -> None:
            counts.add("connections")
            n = 0
            with contextlib.suppress(OSError):
                while self._read_head():
                    answer = script(n)
                    n += 1
                    if answer is None:
                        counts.add("dropped")
                        return
                    data, close = answer
                    if data:
                        self.wfile.write(data)
                        counts.add("answered")
                    if close:
                        return

        def _read_head(self) -> bool:
            while line := self.rfile.readline(65536):
                if line == b"\r\n":
                    return True
            return False  # the client closed the connection

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with serving(Server(("127.0.0.1", 0), Handler)) as address:
        yield address, counts


# -- healthy servers: exact counts --------------------------------------------------------


@pytest.mark.timeout(60)
def test_keep_alive_requests_all_complete_on_their_connections_and_probes_use_fresh_ones(
        loadgen: Loadgen, tmp_path: Path) -> None:
    with file_server(tmp_path, "HTTP/1.1") as (address, counts):
        result = loadgen(*run_args(address, concurrency=8, requests=400, probe_interval=0.01))
    assert result["completed"] == result["ops"] == 400
    assert result["failed"] == result["unanswered"] == result["errors"] == result["closed_by_server"] == 0
    # The budget is shared, as with ab -n: a connection that came up late may find it spent.
    assert 1 <= result["conns_served"] <= 8
    assert result["probes"] >= 1 and result["probe_failures"] == 0, result["probe_error_kinds"]
    # Every request on the kept connections (at most 8: one that came up late may never have
    # connected, the budget spent), every probe on one of its own.
    assert counts.answered == 400 + result["probes"]
    assert result["conns_served"] + result["probes"] <= counts.connections <= 8 + result["probes"]


@pytest.mark.timeout(60)
def test_a_server_closing_after_each_response_is_counted_and_the_client_carries_on(
        loadgen: Loadgen, tmp_path: Path) -> None:
    # http.server's default protocol_version, HTTP/1.0: every response ends its connection.
    with file_server(tmp_path, "HTTP/1.0") as (address, counts):
        result = loadgen(*run_args(address, concurrency=4, requests=100))
    assert result["completed"] == 100 and result["errors"] == 0
    assert result["closed_by_server"] == 100
    assert counts.answered == 100
    # A new connection each; one opened while the last requests were going out may go unused.
    assert 100 <= counts.connections < 100 + 4


@pytest.mark.timeout(60)
def test_a_server_closing_connections_mid_run_gives_counted_errors(loadgen: Loadgen) -> None:
    # Three answers per connection, then the fourth request is read and the connection closed.
    with scripted_server(lambda n: (response(), False) if n < 3 else None) as (address, counts):
        result = loadgen(*run_args(address, concurrency=4, requests=100))
    assert result["completed"] + result["failed"] == 100 and result["unanswered"] == 0
    assert result["completed"] == counts.answered
    assert result["failed"] == counts.dropped == result["closed_by_server"] == result["errors"] > 0
    assert set(result["error_kinds"]) <= {"EOF", "ECONNRESET"}


GARBAGE = {
    "not HTTP": ((b"garbage\r\n\r\n", False), "BADRESPONSE"),
    "more bytes than Content-Length": ((response(b"hello").replace(b"Length: 5", b"Length: 2"), False),
                                       "BADRESPONSE"),
    "chunked": ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", False),
                "CHUNKED"),
    "close-delimited": ((b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", True), "NOLENGTH"),
    "status 404": ((response(b"nope", "HTTP/1.1 404 Not Found"), False), "HTTP_404"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("answer", "kind"), list(GARBAGE.values()), ids=list(GARBAGE))
def test_a_bad_response_is_an_error_of_its_kind_for_load_and_probes(
        loadgen: Loadgen, answer: tuple[bytes, bool], kind: str) -> None:
    with scripted_server(lambda n: answer) as (address, counts):
        result = loadgen(*run_args(address, concurrency=2, requests=40, probe_interval=0.01))
    assert result["completed"] == result["ops"] == 0 and result["unanswered"] == 0
    assert result["failed"] == 40
    assert result["error_kinds"] == {kind: 40}
    assert result["closed_by_server"] == 0  # the client closes (or, on a 404, keeps) the connection
    assert result["probe_error_kinds"] == {kind: result["probes"]}
    assert counts.answered == 40 + result["probes"]


HEADS = {
    "HTTP/1.0 with keep-alive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", None, False),
    "HTTP/1.0 without": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", None, True),
    "Connection: close among tokens": (b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\n"
                                       b"content-length:2\r\n\r\nok", None, True),
    "blanks around the length, twice": (b"HTTP/1.1 200 OK\r\nContent-Length:  2 \r\nContent-Length: 2\r\n\r\nok",
                                        None, False),
    "no reason phrase": (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", None, False),
    "204 without a length": (b"HTTP/1.1 204 No Content\r\n\r\n", "HTTP_204", False),
    "two lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "BADRESPONSE",
                    False),
    "a length that is not a number": (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "BADRESPONSE", False),
    "a header without a colon": (b"HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\nok", "BADRESPONSE", False),
    "HTTP/2": (b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok", "BADRESPONSE", False),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("answer", "kind", "closes"), list(HEADS.values()), ids=list(HEADS))
def test_both_generators_read_response_heads_alike(loadgen: Loadgen, answer: bytes, kind: str | None,
                                                  closes: bool) -> None:
    with scripted_server(lambda n: (answer, False)) as (address, counts):
        result = loadgen(*run_args(address, concurrency=2, requests=20))
    if kind is None:
        assert result["completed"] == 20 and result["errors"] == 0
        assert result["closed_by_server"] == (20 if closes else 0)
    else:
        assert result["completed"] == 0 and result["error_kinds"] == {kind: 20}
    assert counts.answered == 20


@pytest.mark.timeout(60)
def test_a_server_that_never_answers_ends_in_timeouts_within_the_time_limit(loadgen: Loadgen) -> None:
    with scripted_server(lambda n: (b"", False)) as (address, counts):
        result = loadgen(*run_args(address, concurrency=3, requests=0, probe_interval=0.1, duration=1.2,
                                   timeout=0.5))
    assert result["completed"] == result["ops"] == 0
    assert result["failed"] >= 3 and result["error_kinds"] == {"TIMEOUT": result["errors"]}
    assert result["unanswered"] <= 3  # the requests still waiting when time ran out
    assert result["probes"] >= 5 and result["probe_error_kinds"] == {"TIMEOUT": result["probes"]}
    assert counts.answered == 0


@pytest.mark.timeout(60)
def test_nobody_listening_sends_nothing_and_ends_at_the_time_limit(loadgen: Loadgen) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % sock.getsockname()[1]  # bound, not listening: refused
        result = loadgen(*run_args(address, concurrency=2, requests=10, probe_interval=0.1, duration=0.5,
                                   timeout=0.5))
    assert result["completed"] == result["failed"] == result["unanswered"] == 0  # no request ever sent
    assert set(result["error_kinds"]) == {"ECONNREFUSED"}
    assert set(result["probe_error_kinds"]) == {"ECONNREFUSED"} and result["probes"] >= 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["file", "/a b", "/" + "x" * 1024])
def test_a_bad_path_exits_2(loadgen: Loadgen, path: str) -> None:
    proc = loadgen.exit(*run_args("127.0.0.1:9", concurrency=1, requests=1, path=path), timeout=IO_TIMEOUT)
    assert proc.returncode == 2 and "--path" in proc.stderr and proc.stdout == ""


# -- the contenders -------------------------------------------------------------------------


HTTP_CONTENDERS = [name for name, contender in CONTENDERS.items() if contender.http is not None]


def test_the_issue_s_contenders_have_an_http_server() -> None:
    assert HTTP_CONTENDERS == ["stdlib-threading", "reactor-threadpool", "reactor-prefork"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("contender", HTTP_CONTENDERS)
def test_every_http_contender_serves_the_file_on_a_kept_connection_and_stops_cleanly(
        contender: str, tmp_path: Path) -> None:
    (tmp_path / plan.HTTP_FILE).write_bytes(BODY)
    proc = subprocess.Popen([sys.executable, str(BENCH / "servers.py"), "--contender", contender, "--transport", "tcp",
                             "--address", "127.0.0.1:0", "--handler", "http", "--docroot", str(tmp_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        host, _, port = LineReader(proc).expect("READY ", 30).rpartition(":")
        client = http.client.HTTPConnection(host, int(port), timeout=IO_TIMEOUT)
        try:
            sockets = []
            for _ in range(2):
                client.request("GET", f"/{plan.HTTP_FILE}")
                reply = client.getresponse()
                assert (reply.status, reply.version, reply.getheader("Content-Length")) == (200, 11, str(len(BODY)))
                assert reply.read() == BODY
                sockets.append(client.sock)
            assert sockets[0] is not None and sockets[0] is sockets[1]  # kept alive: one connection for both
        finally:
            client.close()
        status = stop_process(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            stop_process(proc)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert status == 0, stderr


def test_the_keep_alive_workload_runs_every_http_contender_and_no_other() -> None:
    keepalive = next(w for w in plan.FULL if w.kind == "http")
    assert (keepalive.key, keepalive.requests) == ("keepalive-tcp-c200", 12000)
    for name, contender in CONTENDERS.items():
        reason = plan.why_not(contender, keepalive, 1)
        if contender.available():
            # ThreadPool(8) and Prefork(2) hold fewer connections than 200 at once: that is what is tested.
            assert (reason is None) == (name in HTTP_CONTENDERS), (name, reason)
    assert any(w.kind == "http" for w in plan.QUICK)


# -- figures ----------------------------------------------------------------------------------


def _http_run(rate: float, *, completed: int = 100, probes: int = 10, failures: int = 0,
              probe_max_us: float | None = 50_000.0) -> dict[str, Any]:
    return {"ops_per_s": rate, "ops": completed, "p50_us": 1000.0, "p99_us": 2000.0, "errors": 100 - completed,
            "error_kinds": {"TIMEOUT": 100 - completed} if completed < 100 else {}, "lost": 0,
            "conns_served": 10, "requests": 100, "completed": completed, "failed": 100 - completed,
            "unanswered": 0, "closed_by_server": 0, "probes": probes, "probe_failures": failures,
            "probe_error_kinds": {"TIMEOUT": failures} if failures else {}, "probe_p50_us": 10_000.0,
            "probe_max_us": probe_max_us, "server_cpu_percent": 90.0, "server_peak_rss": 1}


def test_an_http_cell_pairs_with_the_stdlib_and_judges_completion_and_the_worst_probe() -> None:
    pairs = [{"baseline": _http_run(base), "contender": _http_run(run)} for base, run in
             ((1000, 500), (3000, 2400), (2000, 1000))]
    summary = report.summarise_http(pairs, 1.0)
    assert summary["pair_ratios"] == [0.5, 0.8, 0.5] and summary["ratio_to_baseline"] == 0.5
    assert summary["req_per_s"] == 1000 and summary["baseline_req_per_s"] == 2000
    assert (summary["completed"], summary["expected"], summary["probes"]) == (300, 300, 30)
    assert summary["met"] is True
    pairs[2]["contender"] = _http_run(1000, probe_max_us=1_200_000.0)  # one slow probe
    assert report.summarise_http(pairs, 1.0)["met"] is False
    pairs[2]["contender"] = _http_run(1000, completed=99)  # one request short
    assert report.summarise_http(pairs, 1.0)["met"] is False
    pairs[2]["contender"] = _http_run(1000, failures=1)  # one probe failed
    assert report.summarise_http(pairs, 1.0)["met"] is False
    alone = report.summarise_http([{"contender": _http_run(900, probes=0, probe_max_us=None)}], 1.0)
    assert alone["ratio_to_baseline"] is None and alone["met"] is None  # no baseline, no probe: not judged


def test_the_headline_judges_threadpool_on_every_keep_alive_workload() -> None:
    stalled = report.summarise_http([{"contender": _http_run(10, completed=40, failures=10, probe_max_us=None)}], 1.0)
    cells = [{"workload": "keepalive-tcp-c200", "kind": "http", "status": "ok", "concurrency": 200,
              "contender": "reactor-threadpool", "transport": "tcp", "label": "reactor ThreadPool(8)",
              "summary": stalled}]
    rows = [r for r in report.headline(cells) if r.get("figure")]
    assert len(rows) == 1 and rows[0]["met"] is False
    assert rows[0]["figure"] == "40/100 completed; probes max - ms, 10/10 failed"
    markdown = report.markdown({"meta": {"date": "d", "commit": "c", "python": "3", "platform": "p", "cpus": 2,
                                         "generator": "g", "reference": "r", "placement": "p",
                                         "placement_cpu_workload": "p", "pairs": 1, "warmup_s": 0.3,
                                         "duration_s": 1.5, "plan": "full", "elapsed_s": 1,
                                         "workloads": {}}, "cells": cells}, None)
    assert "| reactor ThreadPool(8) | 10 | baseline | 40/100 |" in markdown
    assert "TIMEOUT 10" in markdown and "**no**" in markdown
