"""Statistics for operators: ``Reactor.stats()``, the command's ``--admin`` endpoint, ``reactor stats``.

The endpoint is tested as an operator meets it: the command runs in a fresh
interpreter (``Running``, from test_cli), the test causes a known number of
requests and refusals over real sockets, then reads ``/stats``, ``/metrics``
and ``/health`` over HTTP. Waits poll the endpoint (``wait_for``), never sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
from typing import Any

import pytest

from reactor import Reactor
from reactor import socketserver as rsocketserver
from reactor.admin import (MAX_REQUEST, AdminAddress, AdminServer, fetch, health, parse_admin_url, render_metrics,
                           render_view)
from reactor.protocol import Protocol
from support import python_env, reactor_thread, wait_for
from test_cli import EVENT_TIMEOUT, Running, ask, tcp_address

#: Most seconds one poll of the endpoint may wait for a statistic to reach a value.
POLL_TIMEOUT = 15.0


def admin_of(running: Running) -> AdminAddress:
    """The command's admin address, from its ``admin`` log event (the port may be 0 on the command line)."""
    event = running.event("admin")
    if "port" in event:
        return AdminAddress(event["url"], "tcp", (event["host"], event["port"]))
    return AdminAddress(event["url"], "unix", event["path"])


def get_json(admin: AdminAddress, path: str) -> tuple[int, Any]:
    status, body = fetch(admin, path, timeout=EVENT_TIMEOUT)
    return status, json.loads(body)


def stats_until(admin: AdminAddress, check: Any, what: str) -> dict[str, Any]:
    """``/stats`` polled until ``check(stats)`` is true; that snapshot."""
    last: list[Any] = []

    def poll() -> dict[str, Any]:
        status, stats = get_json(admin, "/stats")
        assert status == 200
        last[:] = [stats]
        return dict(stats) if check(stats) else {}

    result: dict[str, Any] = wait_for(poll, timeout=POLL_TIMEOUT, interval=0.02,
                                      message=lambda: f"/stats never showed {what}; last: {last}")
    return result


def health_until(admin: AdminAddress, status: int) -> dict[str, Any]:
    last: list[Any] = []

    def poll() -> dict[str, Any]:
        got, verdict = get_json(admin, "/health")
        last[:] = [got, verdict]
        return dict(verdict) if got == status else {}

    result: dict[str, Any] = wait_for(poll, timeout=POLL_TIMEOUT, interval=0.02,
                                      message=lambda: f"/health never answered {status}; last: {last}")
    return result


def server_at(stats: dict[str, Any], port: int) -> dict[str, Any]:
    (server,) = [s for s in stats["servers"] if s.get("port") == port]
    return dict(server)


def connect_from(address: tuple[str, int], source: str) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.settimeout(EVENT_TIMEOUT)
    client.bind((source, 0))
    client.connect(address)
    return client


def refused(address: tuple[str, int], source: str) -> bool:
    """True if the server closes a connection from ``source`` without answering."""
    with connect_from(address, source) as client:
        try:
            client.sendall(b"hello\n")
            return client.recv(1) == b""
        except ConnectionError:
            return True


def reactor_stats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reactor", "stats", *args], capture_output=True, text=True,
                          env=python_env(), timeout=EVENT_TIMEOUT)


# ---------------------------------------------------------------- Prometheus text format, parsed strictly

_METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"^({_METRIC})(?:\{{((?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})(?:,[a-zA-Z_][a-zA-Z0-9_]*="
                     rf"{_LABEL_VALUE})*)?\}})? (-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|[+-]Inf)$")
_LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)=({_LABEL_VALUE})")


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], quoted[1:-1])


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse the text exposition format 0.0.4, failing on any line that breaks it.

    Checks: every line is a HELP, a TYPE or a sample; HELP and TYPE once per
    family, before its samples; a family's samples are together; counters end
    in ``_total``. Returns the samples by name.
    """
    assert text.endswith("\n"), "the last line ends with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    finished: set[str] = set()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(_METRIC, name), line
            assert name not in helps, f"HELP twice: {line}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(_METRIC, name), line
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types and name not in samples, f"TYPE twice or after samples: {line}"
            if kind == "counter":
                assert name.endswith("_total"), f"a counter without _total: {line}"
            types[name] = kind
            continue
        assert not line.startswith("#") and line.strip(), f"not a sample: {line!r}"
        match = _SAMPLE.match(line)
        assert match, f"bad sample line: {line!r}"
        name, labels_text, value = match.groups()
        assert name in types, f"sample before its TYPE: {line}"
        if name != current:
            assert name not in finished, f"samples of {name} are not together"
            if current is not None:
                finished.add(current)
            current = name
        labels = {key: _unescape(quoted) for key, quoted in _LABEL.findall(labels_text or "")}
        samples.setdefault(name, []).append((labels, float(value)))
    assert set(types) <= helps, "every family has a HELP line"
    return samples


def test_the_metrics_parser_rejects_what_the_format_forbids() -> None:
    good = '# HELP a_total x\n# TYPE a_total counter\na_total{s="q\\"\\\\\\n"} 1\n'
    assert parse_metrics(good) == {"a_total": [({"s": 'q"\\\n'}, 1.0)]}
    for bad in ('# HELP a x\n# TYPE a counter\na 1\n',          # a counter without _total
                '# HELP a x\n# TYPE a gauge\na{s="\\x"} 1\n',   # a bad escape
                '# HELP a x\n# TYPE a gauge\na 1 2 3\n',
                'a 1\n',                                      # no TYPE
                '# HELP a x\n# TYPE a gauge\n# HELP b x\n# TYPE b gauge\na 1\nb 1\na 2\n'):  # not together
        with pytest.raises(AssertionError):
            parse_metrics(bad)


# ---------------------------------------------------------------- the command's endpoint


def test_stats_and_metrics_count_what_clients_did() -> None:
    requests, refusals = 5, 3
    with Running(["--admin", "tcp://127.0.0.1:0", "cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0",
                  "--deny", "127.0.0.2/32", "--dispatch", "threads:2",
                  "--serve", "cli_apps:DatagramEchoHandler", "--bind", "udp://127.0.0.1:0"]) as running:
        stream, datagram = running.ready()
        admin = admin_of(running)
        address = tcp_address(stream)
        for _ in range(requests):
            assert ask(address) == b"hello\n"
        for _ in range(refusals):
            assert refused(address, "127.0.0.2")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(EVENT_TIMEOUT)
            client.sendto(b"ping", tcp_address(datagram))
            assert client.recv(100) == b"ping"

        def counted(stats: dict[str, Any]) -> bool:
            counters = server_at(stats, address[1])["counters"]
            return bool(counters["admitted"] == requests and counters["refused_by_rule"] == refusals)
        stats = stats_until(admin, counted, f"{requests} admitted and {refusals} refused")
        assert stats["state"] == "ready" and stats["health"] == {"ok": True, "state": "ready", "reasons": []}
        tcp = server_at(stats, address[1])
        assert tcp["counters"]["requests"] == requests + refusals  # every connection taken, refused or not
        assert tcp["counters"]["refused_by_limit"] == 0 and tcp["accept_errors"] == {}
        assert (tcp["family"], tcp["type"], tcp["host"], tcp["state"]) == ("inet", "stream", "127.0.0.1", "serving")
        assert tcp["address"] == f"tcp4 127.0.0.1:{address[1]}"
        assert tcp["strategy"].startswith("ThreadPool(max_workers=2")
        assert tcp["gauges"]["open"] == 0 and tcp["active"] == 0 and tcp["pool"]["done"] == requests
        assert tcp["truncated_datagrams"] is None
        udp = server_at(stats, datagram["port"])
        assert (udp["family"], udp["type"], udp["strategy"]) == ("inet", "datagram", "Inline()")
        assert udp["counters"]["requests"] == 1 and udp["truncated_datagrams"] == 0
        assert len(stats["servers"]) == 2  # the admin endpoint is not a server of the command
        process = stats["process"]
        assert process["pid"] == running.pid and process["uptime"] > 0 and process["threads"] >= 1
        assert process["fds"] > 3 and process["rss"] > 1 << 20

        status, body = fetch(admin, "/metrics", timeout=EVENT_TIMEOUT)
        assert status == 200
        metrics = parse_metrics(body.decode())
        labels = {"server": f"tcp4 127.0.0.1:{address[1]}", "family": "inet", "type": "stream"}
        assert (labels, float(requests + refusals)) in metrics["reactor_server_requests_total"]
        assert (labels, float(refusals)) in metrics["reactor_server_refused_by_rule_total"]
        assert (labels, 0.0) in metrics["reactor_server_open"]
        udp_labels = {"server": f"udp4 127.0.0.1:{datagram['port']}", "family": "inet", "type": "datagram"}
        assert (udp_labels, 0.0) in metrics["reactor_server_truncated_datagrams_total"]
        assert metrics["reactor_ready"] == [({}, 1.0)]
        assert metrics["reactor_process_open_fds"][0][1] > 3

        for path, expected in (("/nowhere", 404), ("/stats?x=1", 200)):
            assert fetch(admin, path, timeout=EVENT_TIMEOUT)[0] == expected
        assert running.stop() == 0


def test_health_is_503_while_saturated_then_200_again(unix_dir: str) -> None:
    path = f"{unix_dir}/t.sock"
    # One thread and one queued request: two requests in flight saturate the pool.
    with Running(["--admin", "tcp://127.0.0.1:0", "cli_apps:TwoStepHandler", "--bind", f"unix://{path}",
                  "--dispatch", "threads:1"]) as running:
        running.ready()
        admin = admin_of(running)
        assert health_until(admin, 200) == {"ok": True, "state": "ready", "reasons": []}
        clients = []
        try:
            for _ in range(2):
                client = socket.socket(socket.AF_UNIX)
                clients.append(client)
                client.settimeout(EVENT_TIMEOUT)
                client.connect(path)
                client.sendall(b"one\n")
            assert clients[0].makefile("rb").readline() == b"started\n"
            verdict = health_until(admin, 503)
            assert verdict["reasons"] == [f"unix {path}: saturated (saturated)"]
            stats = stats_until(admin, lambda s: s["servers"][0]["state"] == "paused", "a paused server")
            assert stats["servers"][0]["paused"] == ["saturated"]
            for client in clients:
                client.sendall(b"two\n")
        finally:
            for client in clients:
                client.close()
        health_until(admin, 200)
        assert running.stop() == 0


def test_health_is_503_while_draining_and_the_admin_answers_until_the_drain_ends(unix_dir: str) -> None:
    path = f"{unix_dir}/t.sock"
    with Running(["--admin", f"unix://{unix_dir}/admin.sock", "cli_apps:TwoStepHandler", "--bind", f"unix://{path}",
                  "--dispatch", "threads:2"]) as running:
        running.ready()
        admin = admin_of(running)
        health_until(admin, 200)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(EVENT_TIMEOUT)
            client.connect(path)
            reader = client.makefile("rb")
            client.sendall(b"one\n")
            assert reader.readline() == b"started\n"
            running.send(signal.SIGTERM)
            running.event("stopping")
            verdict = health_until(admin, 503)
            assert verdict["state"] == "draining"
            assert f"unix {path}: draining" in verdict["reasons"]
            stats = get_json(admin, "/stats")[1]
            assert stats["state"] == "draining"
            (server,) = stats["servers"]  # still listed while it drains
            assert server["state"] == "draining" and server["pool"]["running"] == 1 and server["active"] == 1
            metrics = parse_metrics(fetch(admin, "/metrics", timeout=EVENT_TIMEOUT)[1].decode())
            assert metrics["reactor_ready"] == [({}, 0.0)]
            assert metrics["reactor_server_draining"][0][1] == 1.0
            client.sendall(b"two\n")
            assert reader.readline() == b"done\n"
        assert running.finish() == 0
    assert os.listdir(unix_dir) == []  # the admin socket file is gone too


def test_prefork_pools_report_workers_restarts_and_the_last_exit() -> None:
    with Running(["--admin", "tcp://127.0.0.1:0", "cli_apps:WhoHandler", "--bind", "tcp://127.0.0.1:0",
                  "--dispatch", "prefork:2"]) as running:
        (listening,) = running.ready()
        admin = admin_of(running)
        stats = stats_until(admin, lambda s: len(s["servers"][0]["pool"]["ready"]) == 2, "two ready workers")
        pool = stats["servers"][0]["pool"]
        assert (pool["workers"], pool["spawned"], pool["restarts"], pool["last_exit"]) == (2, 2, 0, None)
        assert stats["servers"][0]["strategy"].startswith("Prefork(workers=2")
        victim = pool["pids"][0]
        os.kill(victim, signal.SIGKILL)

        def replaced(s: dict[str, Any]) -> bool:
            pool = s["servers"][0]["pool"]
            return pool["restarts"] == 1 and len(pool["ready"]) == 2 and victim not in pool["pids"]
        pool = stats_until(admin, replaced, "the killed worker replaced")["servers"][0]["pool"]
        assert pool["last_exit"] == {"pid": victim, "code": -signal.SIGKILL, "reason": "killed by SIGKILL"}
        assert ask(tcp_address(listening), b"") != b""
        metrics = parse_metrics(fetch(admin, "/metrics", timeout=EVENT_TIMEOUT)[1].decode())
        assert metrics["reactor_pool_restarts_total"][0][1] == 1.0
        assert metrics["reactor_pool_ready_workers"][0][1] == 2.0
        assert running.stop() == 0


def test_health_is_503_while_starting_until_every_worker_booted(unix_dir: str) -> None:
    gate = f"{unix_dir}/gate"
    os.mkfifo(gate)
    with Running(["--admin", "tcp://127.0.0.1:0", "cli_apps:gated_server", "--bind", "tcp://127.0.0.1:0",
                  "--dispatch", "prefork:1"], env={"REACTOR_TEST_GATE": gate}) as running:
        admin = admin_of(running)
        opened: list[int] = []
        try:
            verdict = health_until(admin, 503)  # the worker waits at the gate: not ready
            assert verdict["state"] == "starting" and "starting" in verdict["reasons"]
            assert any(reason.endswith(": no ready worker") for reason in verdict["reasons"])
            assert get_json(admin, "/stats")[1]["state"] == "starting"

            def open_gate() -> bool:
                try:
                    opened.append(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:  # ENXIO: the worker has not opened it yet
                    return False
                return True
            wait_for(open_gate, timeout=POLL_TIMEOUT, interval=0.02, message="the worker never reached the gate")
        finally:
            for fd in opened:
                os.close(fd)
        running.ready()
        assert health_until(admin, 200)["state"] == "ready"
        assert running.stop() == 0


def test_a_non_loopback_admin_address_is_refused_unless_public() -> None:
    for url in ("tcp://0.0.0.0:9100", "tcp://[::]:9100", "tcp://example.com:9100", "unix://@reactor-admin"):
        result = subprocess.run([sys.executable, "-m", "reactor", "--admin", url, "cli_apps:EchoHandler"],
                                capture_output=True, text=True, env=python_env(), timeout=EVENT_TIMEOUT)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "--admin-public" in result.stderr, result.stderr
    for url in ("tcp://127.0.0.1:1", "tcp://127.1.2.3:1", "tcp://[::1]:1", "tcp://localhost:1", "unix:///tmp/a"):
        parse_admin_url(url)
    assert parse_admin_url("tcp://0.0.0.0:9100", public=True).address == ("0.0.0.0", 9100)
    assert parse_admin_url("unix://@x", public=True).address == "\0x"


def test_the_unix_admin_socket_is_for_its_owner_only(unix_dir: str) -> None:
    admin_path = f"{unix_dir}/admin.sock"
    with Running(["--admin", f"unix://{admin_path}", "cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0"]) as running:
        running.ready()
        assert stat.S_IMODE(os.stat(admin_path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(admin_path).st_mode)
        assert fetch(admin_of(running), "/health", timeout=EVENT_TIMEOUT)[0] == 200
        assert running.stop() == 0
    assert not os.path.exists(admin_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_after_user_the_admin_socket_belongs_to_that_user_and_nobody_else_connects(unix_dir: str) -> None:
    import pwd

    nobody, daemon = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    os.chmod(unix_dir, 0o1777)  # like /tmp: the user the command becomes removes its own files
    admin_path = f"{unix_dir}/admin.sock"
    # Started as root (the interpreter may be unreadable to others), it becomes the user, then connects.
    probe = ("import os, socket, sys\nos.setgroups([])\nos.setgid(int(sys.argv[3]))\nos.setuid(int(sys.argv[2]))\n"
             "s = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n"
             "except PermissionError:\n    print('refused')\nelse:\n    print('connected')\n")
    with Running(["--user", "nobody", "--admin", f"unix://{admin_path}", "cli_apps:EchoHandler", "--bind",
                  "tcp://127.0.0.1:0"]) as running:
        running.ready()
        info = os.stat(admin_path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, 0o600)
        for user, expected in ((nobody, "connected"), (daemon, "refused")):
            result = subprocess.run([sys.executable, "-c", probe, admin_path, str(user.pw_uid), str(user.pw_gid)],
                                    capture_output=True, text=True, timeout=EVENT_TIMEOUT)
            assert result.stdout.strip() == expected, (user.pw_name, result.stderr)
        assert running.stop() == 0
    assert not os.path.exists(admin_path)


def test_an_admin_address_in_use_fails_cleanly(unix_dir: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "reactor", "--admin", f"tcp://127.0.0.1:{port}",
                                 "cli_apps:EchoHandler", "--bind", f"unix://{unix_dir}/e.sock"],
                                capture_output=True, text=True, env=python_env(), timeout=EVENT_TIMEOUT)
    assert result.returncode == 1
    assert f"--admin tcp://127.0.0.1:{port}" in result.stderr and "in use" in result.stderr, result.stderr
    assert os.listdir(unix_dir) == []


# ---------------------------------------------------------------- reactor stats


def test_reactor_stats_shows_the_process_and_every_server_at_a_glance(unix_dir: str) -> None:
    admin_path = f"{unix_dir}/admin.sock"
    with Running(["--admin", f"unix://{admin_path}", "cli_apps:EchoHandler", "--bind", "tcp://127.0.0.1:0",
                  "--deny", "127.0.0.2/32", "--serve", "cli_apps:WhoHandler", "--bind", f"unix://{unix_dir}/w.sock",
                  "--dispatch", "prefork:1"]) as running:
        (stream,) = [event for event in running.ready() if "host" in event]  # Prefork pools start first
        admin = admin_of(running)
        address = tcp_address(stream)
        for _ in range(3):
            assert ask(address) == b"hello\n"
        assert refused(address, "127.0.0.2")
        stats_until(admin, lambda s: server_at(s, address[1])["counters"]["requests"] == 4, "4 requests")

        result = reactor_stats(f"unix://{admin_path}")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"reactor pid {running.pid}  ready  up ")
        assert lines[1] == "health: 200 ok"
        assert lines[3].split() == ["SERVER", "STRATEGY", "STATE", "REQUESTS", "REQ/S", "ACTIVE", "REFUSED", "ERRORS"]
        (tcp_row,) = [line for line in lines if line.startswith(f"tcp4 127.0.0.1:{address[1]} ")]
        assert tcp_row.split()[-6:] == ["serving", "4", "-", "0", "1", "0"]
        (pool_line,) = [line for line in lines if line.strip().startswith("workers ")]
        assert pool_line.strip().startswith("workers 1/1 ready (pids ")
        assert "restarts 0, last exit: none" in pool_line

        result = reactor_stats(f"unix://{admin_path}", "--watch", "0.05", "--count", "3")
        assert result.returncode == 0, result.stderr
        frames = [line for line in result.stdout.splitlines() if line.startswith("reactor pid ")]
        assert len(frames) == 3
        rates = [line.split()[-4] for line in result.stdout.splitlines() if line.startswith("tcp4 ")]
        assert rates[0] == "-" and all(re.fullmatch(r"\d+\.\d", rate) for rate in rates[1:]), rates

        result = reactor_stats(f"unix://{admin_path}", "--json", "--watch", "0.01", "--count", "2")
        assert result.returncode == 0, result.stderr
        documents = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(documents) == 2 and all(doc["state"] == "ready" for doc in documents)
        assert running.stop() == 0


def test_reactor_stats_fails_clearly_on_a_dead_or_bad_address(unix_dir: str) -> None:
    result = reactor_stats(f"unix://{unix_dir}/nobody.sock")
    assert result.returncode == 1 and result.stdout == ""
    assert f"cannot read unix://{unix_dir}/nobody.sock" in result.stderr
    result = reactor_stats("http://127.0.0.1:1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    result = reactor_stats("tcp://127.0.0.1:9100", "--count", "x")
    assert result.returncode == 2


# ---------------------------------------------------------------- the library side, in this process


class _Small(rsocketserver.UDPServer):
    max_packet_size = 16


class _DatagramEcho(socketserver.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def test_reactor_stats_counts_truncated_datagrams_and_accept_errors_by_name() -> None:
    with Reactor() as reactor:
        server = _Small(("127.0.0.1", 0), _DatagramEcho)
        reactor.add_server(server)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(EVENT_TIMEOUT)
            client.sendto(b"x" * 100, server.server_address)
            client.sendto(b"small", server.server_address)
            reactor.run_until(lambda: reactor.server_stats(server)["requests"] == 1
                              and reactor.server_stats(server)["dropped"] == 1, EVENT_TIMEOUT)
            assert client.recv(100) == b"small"
        snapshot = reactor.stats()
        assert json.loads(json.dumps(snapshot)) == snapshot  # JSON-serialisable, nothing lost
        (entry,) = snapshot["servers"]
        assert entry["truncated_datagrams"] == 1
        assert entry["accept_errors"] == {"RequestDropped": 1}
        assert entry["counters"]["dropped"] == 1
        metrics = parse_metrics(render_metrics(snapshot))
        assert metrics["reactor_server_accept_errors_total"][0] == (
            {"server": f"udp4 127.0.0.1:{server.server_address[1]}", "family": "inet", "type": "datagram",
             "error": "RequestDropped"}, 1.0)


def test_label_values_are_escaped(unix_dir: str) -> None:
    path = f'{unix_dir}/q"b\\s\nx.sock'
    with Reactor() as reactor:
        reactor.create_server(Protocol, path)
        assert reactor.stats()["servers"][0]["active"] == 0  # a protocol server counts its connections
        metrics = parse_metrics(render_metrics(reactor.stats()))
        ((labels, value),) = metrics["reactor_server_requests_total"]
        assert labels == {"server": f"unix {path}", "family": "unix", "type": "stream"} and value == 0


def test_health_verdicts() -> None:
    def snapshot(state: str = "ready", **server: Any) -> dict[str, Any]:
        entry = {"address": "tcp4 127.0.0.1:1", "state": server.pop("server_state", "serving"), "paused": [],
                 "pool": None}
        return {"state": state, "servers": [dict(entry, **server)]}

    assert health(snapshot()) == {"ok": True, "state": "ready", "reasons": []}
    assert health(snapshot("reloading"))["ok"]
    assert health(snapshot("starting"))["reasons"] == ["starting"]
    assert health(snapshot(paused=["max_connections"]))["reasons"] == [
        "tcp4 127.0.0.1:1: saturated (max_connections)"]
    assert health(snapshot(paused=["max_requests"]))["ok"]  # a recycling worker is no saturation
    assert health(snapshot("draining", server_state="draining"))["reasons"] == [
        "draining", "tcp4 127.0.0.1:1: draining"]
    no_worker = snapshot(pool={"workers": 2, "pids": [5], "ready": []})
    assert health(no_worker)["reasons"] == ["tcp4 127.0.0.1:1: no ready worker"]
    assert health({"servers": []})["ok"]  # a bare Reactor.stats() counts as ready


def test_the_admin_server_answers_on_an_embedding_reactor_and_never_blocks_on_a_client() -> None:
    reactor = Reactor()
    listener = socket.create_server(("127.0.0.1", 0))
    admin = AdminServer(reactor, listener, reactor.stats, io_timeout=0.5)
    admin.start()
    address = AdminAddress("tcp://127.0.0.1", "tcp", listener.getsockname())
    try:
        with reactor_thread(reactor):
            with socket.create_connection(listener.getsockname(), timeout=EVENT_TIMEOUT) as silent:
                status, body = fetch(address, "/stats", timeout=EVENT_TIMEOUT)  # while another client is silent
                assert status == 200 and json.loads(body)["servers"] == []  # the admin is no hosted server
                assert silent.recv(1) == b""  # closed at io_timeout
            assert fetch(address, "/health", timeout=EVENT_TIMEOUT) == (200, b'{"ok": true, "state": "ready", '
                                                                             b'"reasons": []}\n')
            with socket.create_connection(listener.getsockname(), timeout=EVENT_TIMEOUT) as client:
                client.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = client.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.0 200 OK\r\n") and answer.endswith(b"\r\n\r\n")
            assert b"Content-Type: text/plain; version=0.0.4" in answer
            with socket.create_connection(listener.getsockname(), timeout=EVENT_TIMEOUT) as client:
                client.sendall(b"POST /stats HTTP/1.0\r\n\r\n")
                assert client.makefile("rb").readline() == b"HTTP/1.0 405 Method Not Allowed\r\n"
            with socket.create_connection(listener.getsockname(), timeout=EVENT_TIMEOUT) as client:
                client.sendall(b"GET /" + b"x" * (MAX_REQUEST + 10))
                assert client.makefile("rb").readline() == b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
    finally:
        admin.close()
    assert listener.fileno() == -1
    assert "health: 200 ok" in render_view({"servers": []})


def test_a_server_leaving_in_the_background_is_listed_as_draining() -> None:
    from reactor.dispatch import ThreadPool

    started, release = threading.Event(), threading.Event()

    class Held(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            started.set()
            release.wait(EVENT_TIMEOUT)

    with Reactor() as reactor:
        server = rsocketserver.TCPServer(("127.0.0.1", 0), Held)
        address: Any = server.server_address
        reactor.add_server(server, ThreadPool(1))
        try:
            with socket.create_connection(address, timeout=EVENT_TIMEOUT) as client:
                reactor.run_until(lambda: reactor.server_stats(server)["requests"] == 1, EVENT_TIMEOUT)
                assert started.wait(EVENT_TIMEOUT)  # on the pool's thread (it does not wake the loop)
                removed: list[bool] = []
                reactor.call_soon(lambda: reactor.remove_server(server, on_removed=lambda: removed.append(True)))
                reactor.run_once(0)
                assert reactor.servers == []
                (entry,) = reactor.stats()["servers"]
                assert entry["state"] == "draining" and entry["active"] == 1
                assert health(reactor.stats())["reasons"] == [f"tcp4 127.0.0.1:{address[1]}: draining"]
                release.set()
                reactor.run_until(lambda: bool(removed), EVENT_TIMEOUT)
                assert reactor.stats()["servers"] == []
                assert client.recv(1) == b""
        finally:
            release.set()
            server.server_close()
