"""One ``stats()`` shape for every strategy: the pure parts, without a fork.

``HostedServer.stats()`` has every key from construction on (the zero shape a
Prefork master reports before its workers do); a worker's heartbeat pipe
carries its stats as records that ``HeartbeatReader`` splits out of any
chunking; ``PoolCounters`` sums the reports so counters never go backwards
while gauges count the live processes only. The forked end-to-end checks are
in test_prefork.py (``server_stats``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from reactor import Reactor, ThreadPool, socketserver
from reactor.accept import STATS_GAUGES, Dispatch, HostedServer, HostingOptions, Inline
from reactor.admission import AdmissionOptions
from reactor.prefork._messages import HEARTBEAT, READY, STATS, HeartbeatReader, stats_record
from reactor.prefork._stats import PoolCounters, valid_stats
from support import reactor_thread, wait_for


class PingHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"PING\n")


ADMISSION: dict[str, Any] = {"deny": ("10.0.0.0/8",), "max_connections_per_ip": 4}


# ---------------------------------------------------------------- HostedServer.stats()

@pytest.mark.parametrize("keywords", [{}, ADMISSION], ids=["plain", "admission"])
@pytest.mark.parametrize("dispatch", [Inline, lambda: ThreadPool(2)], ids=["inline", "threadpool"])
def test_hosted_stats_have_every_key_before_and_after_start_and_after_requests(
        keywords: dict[str, Any], dispatch: Callable[[], Dispatch]) -> None:
    server = socketserver.TCPServer(("127.0.0.1", 0), PingHandler)
    reactor = Reactor()
    options = HostingOptions(admission=AdmissionOptions(**keywords))
    unstarted = HostedServer(reactor, server, Inline(), options).stats()
    assert set(unstarted.values()) == {0}
    reactor.add_server(server, dispatch(), **keywords)
    assert reactor.server_stats(server) == unstarted
    with reactor_thread(reactor):
        with socket.create_connection(server.server_address[:2], timeout=5) as sock:  # type: ignore[arg-type]
            sock.sendall(b"ping\n")
            assert sock.makefile("rb").readline() == b"PING\n"
        stats = wait_for(lambda: (s := reactor.server_stats(server))["requests"] == 1 and s)
        assert set(stats) == set(unstarted)
        assert "io_timeouts" in stats  # present before any handler timed out
        assert ("admitted" in stats) == bool(keywords)
        assert ({"open", "admitting"} <= set(stats)) == bool(keywords)
    server.server_close()


# ---------------------------------------------------------------- the heartbeat pipe

def test_heartbeat_reader_finds_markers_and_the_last_record_however_the_bytes_are_cut() -> None:
    first, second = {"requests": 1, "open": 1}, {"requests": 2, "open": 0}
    stream = READY + HEARTBEAT + stats_record(first) + HEARTBEAT * 2 + stats_record(second) + HEARTBEAT
    for cut in range(len(stream) + 1):
        for cut2 in range(cut, len(stream) + 1):
            reader = HeartbeatReader()
            results = [reader.feed(stream[:cut]), reader.feed(stream[cut:cut2]), reader.feed(stream[cut2:])]
            assert any(ready for ready, _ in results)
            records = [record for _, record in results if record is not None]
            assert records and records[-1] == second
            assert all(record in (first, second) for record in records)


def test_heartbeat_reader_drops_a_record_cut_short_and_keeps_the_next_whole_one() -> None:
    reader = HeartbeatReader()
    whole = stats_record({"requests": 7})
    assert reader.feed(whole[:5]) == (False, None)
    assert reader.feed(HEARTBEAT + whole) == (False, {"requests": 7})
    assert reader.feed(STATS + b"not json\n" + HEARTBEAT) == (False, None)
    assert reader.feed(STATS + b"[1]\n" + READY) == (True, None)


def test_a_stats_record_is_one_line_starting_with_the_record_marker() -> None:
    record = stats_record({"requests": 3, "open": 0})
    assert record.startswith(STATS) and record.endswith(b"\n") and record.count(b"\n") == 1
    assert json.loads(record[1:]) == {"requests": 3, "open": 0}
    assert len(record) < 512  # POSIX's smallest PIPE_BUF: one atomic write


def test_valid_stats_takes_only_a_dict_of_str_to_int() -> None:
    assert valid_stats({"requests": 1}) == {"requests": 1}
    assert valid_stats({}) == {}
    for bad in (None, [1], {"requests": "1"}, {"requests": True}, {1: 1}, {"requests": 1.5}):
        assert valid_stats(bad) is None


# ---------------------------------------------------------------- summing

def test_pool_counters_sum_counters_over_every_process_and_gauges_over_the_live_ones() -> None:
    counters = PoolCounters({"open"})
    assert counters.total() == {}
    assert counters.report(1, {"requests": 3, "open": 2})
    assert counters.report(2, {"requests": 4, "open": 1, "parked": 5})  # a key it never heard of: summed
    assert not counters.report(2, {"requests": 4, "open": 1, "parked": 5})  # unchanged
    assert counters.total() == {"requests": 7, "open": 3, "parked": 5}
    assert counters.exited(1)
    assert counters.total() == {"requests": 7, "open": 1, "parked": 5}  # its gauge is gone, its counter stays
    assert not counters.exited(1) and not counters.exited(99)
    assert counters.report(3, {"requests": 0, "open": 0})  # its replacement starts from zero
    assert counters.total() == {"requests": 7, "open": 1, "parked": 5}
    assert counters.report(3, {"requests": 2, "open": 1})
    assert counters.exited(2)
    assert counters.total() == {"requests": 9, "open": 1, "parked": 5}


def test_the_gauges_are_the_ones_hosted_stats_name() -> None:
    assert {"open", "admitting"} <= STATS_GAUGES
    assert "requests" not in STATS_GAUGES and "admitted" not in STATS_GAUGES
