"""One behavioural suite over every dispatch strategy (DESIGN.md §4.12).

The same scenarios run for ``Inline()``, ``ThreadPool(4)``, ``Prefork(workers=2)``
and ``Prefork(workers=2, threads=2)`` over tcp4, tcp6, udp4, Unix stream and
Unix datagram sockets. ``Prefork`` forks, so every case runs in a fresh
interpreter: ``tests/strategy_scenarios.py`` builds the server, serves it from a
Reactor in its main thread, plays the scenario from a client thread started
after ``add_server``, closes everything and prints one JSON line of
observations, asserted on here. Its docstring describes the wire protocol and
the journal (a file every process of the tree appends to) through which
handlers running in worker processes report what they saw.

Every case also checks (``run_scenario``) that after ``close()`` the script
holds no socket/pipe/epoll fd, thread or child process it did not hold before
building the server, that no worker outlived it, that no process logged a
warning or error (a crashed or respawned worker, an abandoned handler), that
every process that served the server stopped serving it gracefully (a killed
worker never calls ``hosting_stopped``), and, for Prefork, that no more than
the two workers ever started (none was replaced).

Each case takes ~0.2 s, so every scenario runs on every family (~30 s in all
on a 2-core machine); ``vanish`` is for stream families only, and the
close-at-once check (about Prefork's worker boot, not the socket) runs on tcp4.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from support import REPO_ROOT, TESTS_DIR, ipv6_available, run_python

SCRIPT = TESTS_DIR / "strategy_scenarios.py"
#: How long one scenario's interpreter may take (they take ~0.2 s; Prefork's
#: graceful_timeout is 5 s, so even a stuck close() ends well within this).
SCRIPT_TIMEOUT = 25

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc"),
                       reason="Prefork needs os.fork; the leak checks read /proc"),
    pytest.mark.timeout(SCRIPT_TIMEOUT + 10),
]

STRATEGIES = ["inline", "threadpool", "prefork", "prefork-threads"]
PREFORK = {"prefork", "prefork-threads"}
#: ThreadPool names its threads ``<server>-worker-<n>``.
POOL_THREAD = re.compile(r"-worker-\d+$")
POOL_SIZE = {"threadpool": 4, "prefork-threads": 2}

_needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="IPv6 loopback not available")
FAMILIES = [
    pytest.param("tcp4"),
    pytest.param("tcp6", marks=_needs_ipv6),
    pytest.param("udp4"),
    pytest.param("unix_stream"),
    pytest.param("unix_dgram"),
]
STREAM_FAMILIES = [pytest.param("tcp4"), pytest.param("tcp6", marks=_needs_ipv6), pytest.param("unix_stream")]

by_family_and_strategy = pytest.mark.parametrize(
    ("family", "strategy"), [pytest.param(*p.values, s, marks=p.marks, id=f"{p.values[0]}-{s}")
                             for p in FAMILIES for s in STRATEGIES])
by_stream_family_and_strategy = pytest.mark.parametrize(
    ("family", "strategy"), [pytest.param(*p.values, s, marks=p.marks, id=f"{p.values[0]}-{s}")
                             for p in STREAM_FAMILIES for s in STRATEGIES])


# ---------------------------------------------------------------- running a scenario

@dataclass
class Result:
    strategy: str
    family: str
    data: dict[str, Any]

    @property
    def observed(self) -> dict[str, Any]:
        observed: dict[str, Any] = self.data["observed"]
        return observed

    @property
    def master_pid(self) -> int:
        return int(self.data["master_pid"])

    @property
    def stream(self) -> bool:
        return self.family in ("tcp4", "tcp6", "unix_stream")

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [entry for entry in self.data["journal"] if entry["ev"] == kind]

    def handled_ids(self) -> list[str]:
        return [entry["id"] for entry in self.events("handle")]


def repro(strategy: str, family: str, scenario: str) -> str:
    return (f"PYTHONPATH={REPO_ROOT}:{TESTS_DIR} {sys.executable} {SCRIPT} "
            f"--strategy {strategy} --family {family} --scenario {scenario}")


def run_scenario(strategy: str, family: str, scenario: str, *, workers: tuple[int, int] = (1, 2)) -> Result:
    """Run one case in a fresh interpreter; check it exited cleanly and left nothing behind.

    ``workers``: the fewest and most Prefork workers that may have started.
    """
    proc = run_python(SCRIPT, "--strategy", strategy, "--family", family, "--scenario", scenario,
                      timeout=SCRIPT_TIMEOUT)
    context = (f"\nrepro: {repro(strategy, family, scenario)}\n"
               f"--- stdout:\n{proc.stdout[-3000:]}\n--- stderr:\n{proc.stderr[-6000:]}")
    assert proc.returncode == 0, f"the scenario script exited {proc.returncode}{context}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the scenario script printed nothing{context}"
    result = Result(strategy, family, json.loads(lines[-1]))
    assert result.data["leaks"] == {"fds": [], "threads": [], "children": []}, f"leaked after close(){context}"
    assert result.data["alive_after_close"] == [], f"worker processes outlived close(){context}"
    assert result.events("log") == [], f"a process logged a warning or an error{context}"
    assert "Traceback" not in proc.stderr, f"a traceback on stderr{context}"
    started = [entry["pid"] for entry in result.events("worker_start")]
    if strategy in PREFORK:
        # A worker still booting when close() comes may never start; none is replaced.
        assert workers[0] <= len(started) <= workers[1], \
            f"expected {workers[0]} to {workers[1]} workers started (none replaced), got {started}{context}"
    else:
        assert started == []
    # Every process that served the server stopped serving it gracefully (a
    # killed worker never gets to call hosting_stopped()).
    hosting = collections.Counter(entry["pid"] for entry in result.events("hosting_started"))
    unhosted = collections.Counter(entry["pid"] for entry in result.events("hosting_stopped"))
    assert hosting == unhosted, (f"a process served the server and never stopped serving it (killed, not "
                                 f"stopped gracefully): hosting_started by {dict(hosting)}, hosting_stopped "
                                 f"by {dict(unhosted)}{context}")
    if strategy in PREFORK:
        assert set(hosting) <= set(started), f"only workers serve a Prefork server{context}"
    else:
        assert set(hosting) == {result.master_pid}, f"the master serves the server itself{context}"
    return result


# ---------------------------------------------------------------- assertions

def assert_echoed(exchange: dict[str, Any], request_id: str, verb: str = "echo") -> dict[str, Any]:
    """The reply names our request, saw setup then handle, and finish() came after it."""
    assert exchange.get("reply") is not None, f"no reply for {request_id}: {exchange}"
    reply: dict[str, Any] = exchange["reply"]
    assert (reply["id"], reply["verb"]) == (request_id, verb), exchange
    assert reply["hooks"] == ["setup", "handle"], exchange
    assert exchange["rest"] == ["finish"], exchange
    assert exchange["end"] in ("eof", "datagram"), exchange
    return reply


def assert_refused(exchange: dict[str, Any], stream: bool) -> None:
    """No reply at all: a stream client sees the connection closed, a datagram client nothing."""
    assert exchange["reply"] is None and exchange["rest"] == [], exchange
    if stream:
        # EOF; or a reset when the server closed with our line unread; or,
        # on a Unix socket, closed before our line could even be sent.
        assert exchange["end"] in ("eof", "reset", "closed-before-send"), exchange
    else:
        assert exchange["end"] == "rejected", exchange


def assert_thread_placement(strategy: str, threads: list[tuple[int, str, bool]]) -> None:
    """``(pid, thread name, is main thread)`` of each hook run, as each strategy places them."""
    if strategy in ("inline", "prefork"):
        # The reactor's thread: the script's main thread (Inline), a worker's main thread (Prefork).
        assert all(main for _, _, main in threads), threads
        return
    assert not any(main for _, _, main in threads), threads
    assert all(POOL_THREAD.search(name) for _, name, _ in threads), threads
    names_per_process = collections.defaultdict(set)
    for pid, name, _ in threads:
        names_per_process[pid].add(name)
    assert all(len(names) <= POOL_SIZE[strategy] for names in names_per_process.values()), names_per_process


def assert_served_where(result: Result, replies: list[dict[str, Any]], arbiters: list[int] | None = None) -> None:
    """Inline and ThreadPool serve in the master; Prefork in its workers, children of one arbiter."""
    pids = {reply["pid"] for reply in replies}
    if result.strategy in PREFORK:
        workers = {entry["pid"] for entry in result.events("worker_start")}
        assert result.master_pid not in pids
        assert pids <= workers, (pids, workers)
        parents = {reply["ppid"] for reply in replies}
        assert len(parents) == 1 and result.master_pid not in parents, parents
        if arbiters is not None:
            assert parents == set(arbiters), "the workers' parent is the master's only child, the arbiter"
    else:
        assert pids == {result.master_pid}
        if arbiters is not None:
            assert arbiters == []
    assert_thread_placement(result.strategy, [(r["pid"], r["thread"], r["main"]) for r in replies])


def assert_round_trip(result: Result) -> None:
    ids = result.observed["ids"]
    exchanges = result.observed["exchanges"]
    assert len(ids) == len(exchanges) == 20
    replies = [assert_echoed(exchange, request_id) for request_id, exchange in zip(ids, exchanges)]
    assert result.handled_ids() == ids
    assert_served_where(result, replies, arbiters=result.observed["serving_children"])


# ---------------------------------------------------------------- scenarios

@by_family_and_strategy
def test_round_trip_serves_sequential_requests_where_the_strategy_says(family: str, strategy: str) -> None:
    assert_round_trip(run_scenario(strategy, family, "round_trip"))


@by_family_and_strategy
def test_concurrent_clients_are_each_served_exactly_once(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "concurrent")
    ids = result.observed["ids"]
    exchanges = result.observed["exchanges"]
    assert len(ids) == len(exchanges) == 50
    replies = [assert_echoed(exchange, request_id) for request_id, exchange in zip(ids, exchanges)]
    assert collections.Counter(result.handled_ids()) == collections.Counter(ids)
    assert result.observed.get("late", 0) == 0, "a datagram client got a second reply"
    assert_served_where(result, replies)


@by_family_and_strategy
def test_handler_error_calls_handle_error_closes_and_keeps_serving(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "handler_error")
    replies = []
    for command, exchange in zip(result.observed["commands"], result.observed["exchanges"]):
        verb, request_id = command.split()
        if verb == "echo":
            replies.append(assert_echoed(exchange, request_id))
        elif result.stream:
            assert exchange == {"reply": None, "rest": [], "end": "eof", "client": exchange["client"]}
        else:  # DatagramRequestHandler.finish() sends what was written: nothing
            assert exchange["reply"] is None and exchange["rest"] == [] and exchange["end"] == "datagram"
    assert result.handled_ids() == ["e0", "e1", "e2", "e3"]
    errors = result.events("error")
    raised = [entry["exc"] for entry in errors]
    if not result.stream:
        # DatagramRequestHandler.finish() sends the (empty) reply before
        # handle_error() runs, so the next request may overtake it in a pool.
        raised.sort()
    assert raised == [f"RuntimeError('boom b{i}')" for i in range(3)]
    assert_served_where(result, replies)
    # handle_error runs in a process and a kind of thread that run handlers.
    serving = {entry["pid"] for entry in result.events("hosting_started")}
    assert {entry["pid"] for entry in errors} <= serving
    assert_thread_placement(result.strategy, [(e["pid"], e["thread"], e["thread"] == "MainThread") for e in errors])
    # Each reply counts the errors its process had handled when it was served.
    seen: collections.Counter[int] = collections.Counter()
    expected = {}
    for entry in result.data["journal"]:
        if entry["ev"] == "error":
            seen[entry["pid"]] += 1
        elif entry["ev"] == "handle":
            expected[entry["id"]] = seen[entry["pid"]]
    assert {reply["id"]: reply["errors"] for reply in replies} == expected
    if strategy not in PREFORK and (result.stream or strategy == "inline"):
        # One process, and handle_error() ran before the client saw the
        # connection end (or, inline, before the next datagram was read).
        assert [reply["errors"] for reply in replies] == [0, 1, 2, 3]


@by_family_and_strategy
def test_verify_request_rejections_get_no_reply_and_never_reach_the_handler(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "verify_reject")
    ids = result.observed["ids"]
    exchanges = result.observed["exchanges"]
    verdicts = result.events("verify")
    decision = {entry["addr"]: entry["ok"] for entry in verdicts}
    assert len(decision) == len(verdicts) == len(exchanges) == 10, "one verify_request call per client"
    # The server rejects every other request it verifies, counted per process.
    per_process = collections.defaultdict(list)
    for entry in verdicts:
        per_process[entry["pid"]].append(entry["ok"])
    for pid, oks in per_process.items():
        assert oks == [i % 2 == 0 for i in range(len(oks))], (pid, oks)
    if strategy not in PREFORK:
        assert [decision[exchange["client"]] for exchange in exchanges] == [True, False] * 5
    accepted = []
    replies = []
    for request_id, exchange in zip(ids, exchanges):
        if decision[exchange["client"]]:
            replies.append(assert_echoed(exchange, request_id))
            accepted.append(request_id)
        else:
            assert_refused(exchange, result.stream)
    assert result.handled_ids() == accepted
    assert result.observed.get("late", 0) == 0, "a rejected datagram was answered after all"
    assert_served_where(result, replies)


@by_stream_family_and_strategy
def test_clients_that_vanish_mid_request_do_not_stop_the_server(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "vanish")
    replies = [assert_echoed(exchange, request_id)
               for request_id, exchange in zip(result.observed["ids"], result.observed["exchanges"])]
    assert len(replies) == 3
    # Half a line then a clean close reaches the handler as an incomplete line;
    # a reset may instead make its read raise, which goes to handle_error.
    assert len(result.events("incomplete")) >= 3
    assert all(entry["exc"].startswith("ConnectionResetError") for entry in result.events("error")), \
        result.events("error")
    assert_served_where(result, replies)


@by_family_and_strategy
def test_graceful_stop_finishes_the_request_in_flight_then_refuses_new_clients(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "graceful_stop")
    observed = result.observed
    assert observed["started"] == "started\n"
    assert observed["closing_seen"], "close() never began while the request was in flight"
    reply = assert_echoed(observed["exchanges"][0], "g0", verb="slow")
    events = [entry["ev"] for entry in result.data["journal"] if entry["ev"] in ("handle", "closed")]
    assert events == ["handle", "closed"], "close() returned before the request in flight was served"
    refused = {
        "tcp4": {"ConnectionRefusedError"},
        "tcp6": {"ConnectionRefusedError"},
        "udp4": {"ConnectionRefusedError"},  # the ICMP port-unreachable on a connected UDP socket
        "unix_stream": {"FileNotFoundError", "ConnectionRefusedError"},  # the path is removed on close
        "unix_dgram": {"FileNotFoundError", "ConnectionRefusedError"},
    }[family]
    assert observed["after_close"] in refused
    assert_served_where(result, [reply])


@by_family_and_strategy
def test_compat_serve_forever_round_trip_then_shutdown(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "compat_serve_forever")
    assert_round_trip(result)
    assert result.observed["after_shutdown"] == {"threads": [], "children": []}, \
        "shutdown() returned before serve_forever() released its threads or processes"
    assert [entry["ev"] for entry in result.data["journal"]][-1] == "closed"


@by_family_and_strategy
def test_no_fd_thread_or_process_outlives_close(family: str, strategy: str) -> None:
    result = run_scenario(strategy, family, "no_leaks")
    # run_scenario checked the leaks; make sure the workload behind them ran.
    first, boom, second = result.observed["exchanges"]
    assert_echoed(first, "k0")
    assert boom["reply"] is None
    assert_echoed(second, "k2")
    burst = result.observed["burst"]
    for request_id, exchange in zip(burst["ids"], burst["exchanges"]):
        assert_echoed(exchange, request_id)
    assert len(result.events("error")) == 1
    assert result.data["leaks"] == {"fds": [], "threads": [], "children": []}
    assert result.data["alive_after_close"] == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_close_right_after_add_server_stops_every_process_gracefully(strategy: str) -> None:
    # Up to 10 cycles of add_server, stop, close with nothing served: under
    # Prefork the stop reaches workers that are still booting.
    result = run_scenario(strategy, "tcp4", "stop_at_once", workers=(0, 20))
    assert result.observed["cycles"] == 10
    assert len(result.events("closed")) == 10
