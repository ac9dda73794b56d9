"""Whole-process upgrade (SIGUSR2): the command run as an operator would, real signals, real sockets.

The old master is the test's child (``Running``); the new master it starts is
its child, orphaned when the old one exits, so the test ends it by the pid
the old one logged (``upgraded`` event) and waits until it is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reactor import Reactor
from reactor.systemd import Notifier
from reactor.upgrade import FDS_VARIABLE, READY_VARIABLE, Successor, Upgrade
from support import REPO_ROOT, wait_for
from test_cli import EVENT_TIMEOUT, Running, ask, ask_datagram, descendants_of, tcp_address


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie nobody reaped: it holds nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


@contextlib.contextmanager
def ended_on_exit(pids: list[int]) -> Iterator[list[int]]:
    """SIGTERM every pid appended to ``pids`` (new masters the test learnt of) on exit, and wait until gone."""
    try:
        yield pids
    finally:
        for pid in pids:
            if not _gone(pid):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            wait_for(lambda: _gone(pid), EVENT_TIMEOUT, message=f"new master {pid} did not exit")


def _listener_nonblocking(pid: int, port: int) -> bool:
    """Is ``pid``'s TCP listener on ``port`` non-blocking? (O_NONBLOCK, from /proc/PID/fdinfo)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            inode = fields[9]
    assert inode is not None
    for link in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(link) == f"socket:[{inode}]":
                flags = next(line for line in Path(f"/proc/{pid}/fdinfo/{link.name}").read_text().splitlines()
                             if line.startswith("flags:"))
                return bool(int(flags.split()[1], 8) & os.O_NONBLOCK)
    raise AssertionError(f"process {pid} has no descriptor of the listener on port {port}")


def _upgrade(running: Running, pids: list[int]) -> int:
    """SIGUSR2 to the old master; the new master's pid once it took over (added to ``pids``)."""
    start = len(running.events)
    running.send(signal.SIGUSR2)
    upgrading = running.event("upgrading", start=start)
    pids.append(upgrading["new_pid"])
    upgraded = running.event("upgraded", start=start)
    assert upgraded["new_pid"] == upgrading["new_pid"]
    return int(upgraded["new_pid"])


def test_usr2_hands_tcp_and_unix_listeners_to_a_new_master_and_the_old_one_exits_0_twice(unix_dir: str) -> None:
    pid_file = os.path.join(unix_dir, "pid")
    path = os.path.join(unix_dir, "who.sock")
    with ended_on_exit([]) as pids, Running(["--pid-file", pid_file, "cli_apps:WhoHandler",
                                             "--bind", "tcp://127.0.0.1:0", "--bind", f"unix://{path}"]) as running:
        address = tcp_address(next(e for e in running.ready() if "port" in e))
        old = running.pid
        assert ask(address, b"").split()[0] == str(old).encode()
        assert Path(pid_file).read_text() == f"{old}\n"
        new = _upgrade(running, pids)
        assert new != old
        assert running.proc.wait(EVENT_TIMEOUT) == 0
        # The new master serves both addresses; the socket file is still there, the pid file is its own.
        assert ask(address, b"").split()[0] == str(new).encode()
        assert ask(path, b"", socket.AF_UNIX).split()[0] == str(new).encode()
        assert os.path.exists(path)
        assert Path(pid_file).read_text() == f"{new}\n"
        assert _listener_nonblocking(new, address[1])  # the old master's leaving did not restore blocking
        # And again: the new master upgrades as the first one did (what it inherited, it passes on).
        start = len(running.events)
        os.kill(new, signal.SIGUSR2)
        newer = running.wait_for(lambda e: e.get("pid") == new and e.get("event") == "upgrading",
                                 "second upgrade", start=start)["new_pid"]
        pids.append(newer)
        running.wait_for(lambda e: e.get("pid") == new and e.get("event") == "upgraded", "second upgrade done",
                         start=start)
        running.wait_for(lambda e: e.get("pid") == new and e.get("event") == "stopped", "second master stopped",
                         start=start)
        wait_for(lambda: _gone(new), EVENT_TIMEOUT)
        assert ask(address, b"").split()[0] == str(newer).encode()
        assert ask(path, b"", socket.AF_UNIX).split()[0] == str(newer).encode()
        assert Path(pid_file).read_text() == f"{newer}\n"
        # The last master owns what it inherited: it removes the socket file and the pid file when it stops.
        start = len(running.events)
        os.kill(newer, signal.SIGTERM)
        running.wait_for(lambda e: e.get("pid") == newer and e.get("event") == "stopped", "last master stopped",
                         start=start)
        wait_for(lambda: _gone(newer), EVENT_TIMEOUT)
        assert not os.path.exists(path)
        assert not os.path.exists(pid_file)


class _Client(threading.Thread):
    """Request/reply on a new connection each time, until told to stop: which pids answered, what failed."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(name="upgrade-client")
        self.address = address
        self.stop = threading.Event()
        self.answered_by: list[int] = []
        self.failures: list[str] = []

    def run(self) -> None:
        count = 0
        while not self.stop.is_set():
            count += 1
            line = f"request {count}\n".encode()
            try:
                with socket.create_connection(self.address, timeout=EVENT_TIMEOUT) as client:
                    client.sendall(line)
                    answer = client.makefile("rb").readline()
            except OSError as exc:
                self.failures.append(f"request {count}: {exc!r}")
                continue
            pid, _, echoed = answer.partition(b" ")
            if echoed != line:
                self.failures.append(f"request {count}: answered {answer!r}")
                continue
            self.answered_by.append(int(pid))


@contextlib.contextmanager
def _clients(address: tuple[str, int], count: int) -> Iterator[list[_Client]]:
    clients = [_Client(address) for _ in range(count)]
    for client in clients:
        client.start()
    try:
        yield clients
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(EVENT_TIMEOUT)


def test_no_request_fails_across_an_upgrade_under_load(unix_dir: str) -> None:
    with ended_on_exit([]) as pids, Running(["cli_apps:PidEchoHandler", "--bind", "tcp://127.0.0.1:0",
                                             "--dispatch", "threads:8"]) as running:
        address = tcp_address(running.ready()[0])
        old = running.pid
        with socket.create_connection(address, timeout=EVENT_TIMEOUT) as long_lived, \
                _clients(address, 3) as clients:
            reader = long_lived.makefile("rb")

            def round_trip(text: bytes) -> int:
                long_lived.sendall(text)
                pid, _, echoed = reader.readline().partition(b" ")
                assert echoed == text
                return int(pid)

            def answered() -> list[int]:
                return [pid for client in clients for pid in client.answered_by]

            def failed() -> list[str]:
                return [failure for client in clients for failure in client.failures]

            assert round_trip(b"before\n") == old
            wait_for(lambda: len(answered()) >= 50 or failed(), EVENT_TIMEOUT)
            new = _upgrade(running, pids)
            # The old master keeps serving the connection it has while it drains...
            wait_for(lambda: new in answered() or failed(), EVENT_TIMEOUT)
            assert running.proc.poll() is None
            assert [round_trip(f"during {n}\n".encode()) for n in range(3)] == [old] * 3
            reader.close()
            long_lived.close()
            # ...and exits once that connection is done; new connections never failed meanwhile.
            assert running.proc.wait(EVENT_TIMEOUT) == 0
            served = len(answered())
            wait_for(lambda: len(answered()) >= served + 50 or failed(), EVENT_TIMEOUT)
        assert failed() == []
        assert old in answered() and new in answered()
        assert {client.answered_by[-1] for client in clients} == {new}


def _write_module(directory: str, name: str, text: str) -> None:
    Path(directory, f"{name}.py").write_text(
        "import os, socketserver\n\n\n"
        "class Handler(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        f"        self.wfile.write(f'{{os.getpid()}} {text}\\n'.encode())\n")


def test_a_new_master_that_fails_to_start_leaves_the_old_one_serving(unix_dir: str) -> None:
    app = os.path.join(unix_dir, "app")
    os.mkdir(app)
    _write_module(app, "upgraded_app", "one")
    pid_file = os.path.join(unix_dir, "pid")
    path = os.path.join(unix_dir, "app.sock")
    with ended_on_exit([]) as pids, Running(["--pid-file", pid_file, "--app-dir", app, "upgraded_app:Handler",
                                             "--bind", f"unix://{path}"],
                                            env={"PYTHONDONTWRITEBYTECODE": "1"}) as running:
        running.ready()
        old = running.pid
        Path(app, "upgraded_app.py").write_text("def broken(:\n")
        start = len(running.events)
        running.send(signal.SIGUSR2)
        upgrading = running.event("upgrading", start=start)
        pids.append(upgrading["new_pid"])
        failed = running.event("upgrade_failed", start=start)
        assert failed["pid"] == old and failed["new_pid"] == upgrading["new_pid"]
        reaped = running.event("upgrade_reaped", start=start)
        assert reaped["status"] == 1
        assert any(e.get("pid") == upgrading["new_pid"] and e.get("event") == "startup_failed"
                   for e in running.events), running.lines
        # Still serving, on its socket file, with its pid file.
        assert ask(path, b"", socket.AF_UNIX) == f"{old} one\n".encode()
        assert Path(pid_file).read_text() == f"{old}\n"
        # Fixed on disk: the next SIGUSR2 upgrades, and the new code serves.
        _write_module(app, "upgraded_app", "two")
        new = _upgrade(running, pids)
        assert running.proc.wait(EVENT_TIMEOUT) == 0
        assert ask(path, b"", socket.AF_UNIX) == f"{new} two\n".encode()


def test_upgrade_with_prefork_workers_and_a_second_usr2_ignored(unix_dir: str) -> None:
    app = os.path.join(unix_dir, "app")
    os.mkdir(app)
    gate = os.path.join(unix_dir, "gate")
    # The new master's import waits at a FIFO the test opens, so the second SIGUSR2 surely comes mid-upgrade.
    Path(app, "gated_app.py").write_text(
        "import os, socketserver\n"
        f"if os.path.exists({gate!r}):\n"
        f"    open({gate!r}).read()\n\n\n"
        "class Handler(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(f'{os.getpid()}\\n'.encode())\n")
    with ended_on_exit([]) as pids, Running(["--app-dir", app, "gated_app:Handler", "--bind", "tcp://127.0.0.1:0",
                                             "--dispatch", "prefork:2"]) as running:
        address = tcp_address(running.ready()[0])
        old = running.pid
        old_workers = descendants_of(old)
        assert int(ask(address, b"")) in old_workers
        os.mkfifo(gate)
        start = len(running.events)
        running.send(signal.SIGUSR2)
        upgrading = running.event("upgrading", start=start)
        pids.append(upgrading["new_pid"])
        running.send(signal.SIGUSR2)
        ignored = running.event("upgrade_ignored", start=start)
        assert ignored["pid"] == old
        # Let the new master's import go on: open the FIFO's write end once it waits at the read end.
        writer = wait_for(lambda: _open_fifo_writer(gate), EVENT_TIMEOUT)
        os.close(writer)
        upgraded = running.event("upgraded", start=start)
        new = upgraded["new_pid"]
        assert new == upgrading["new_pid"]
        assert running.proc.wait(EVENT_TIMEOUT) == 0
        wait_for(lambda: all(_gone(pid) for pid in old_workers), EVENT_TIMEOUT)
        new_workers = descendants_of(new)
        for _ in range(10):
            assert int(ask(address, b"")) in new_workers
        assert _listener_nonblocking(new, address[1])


def _open_fifo_writer(path: str) -> int | None:
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return None


def _receive(sock: socket.socket) -> tuple[int, str]:
    """One notification and the pid that sent it (SCM_CREDENTIALS)."""
    data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = 0
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[:4], "little", signed=True)
    return pid, data.decode()


def test_sd_notify_mainpid_moves_to_the_new_master_and_stopping_is_not_sent(unix_dir: str) -> None:
    notify_path = os.path.join(unix_dir, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        notify.settimeout(EVENT_TIMEOUT)
        got: list[tuple[int, str]] = []

        def until(predicate: Any) -> None:
            deadline = time.monotonic() + EVENT_TIMEOUT
            while not any(predicate(pid, message) for pid, message in got):
                assert time.monotonic() < deadline, got
                got.append(_receive(notify))

        env = {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"}
        # systemd gives the main process WATCHDOG_PID; `exec` keeps the shell's pid for the command.
        with ended_on_exit([]) as pids, Running(["cli_apps:WhoHandler", "--bind", "tcp://127.0.0.1:0"], env=env,
                                                argv=["sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh"]) as running:
            running.ready()
            old = running.pid
            until(lambda pid, m: pid == old and m.startswith("READY=1"))
            until(lambda pid, m: pid == old and m == "WATCHDOG=1")
            new = _upgrade(running, pids)
            until(lambda pid, m: pid == old and m.startswith(f"MAINPID={new}\n"))
            assert running.proc.wait(EVENT_TIMEOUT) == 0
            until(lambda pid, m: pid == new and m == "WATCHDOG=1")  # WATCHDOG_PID named the old one
            assert any(pid == new and m.startswith("READY=1") for pid, m in got), (new, got)
            assert not any(m.startswith("STOPPING=1") for _, m in got), got
            os.kill(new, signal.SIGTERM)
            until(lambda pid, m: pid == new and m.startswith("STOPPING=1"))


def test_a_stop_signal_during_an_upgrade_ends_the_new_master_and_cleans_up(unix_dir: str) -> None:
    app = os.path.join(unix_dir, "app")
    os.mkdir(app)
    gate = os.path.join(unix_dir, "gate")
    Path(app, "gated_app.py").write_text(
        "import os, socketserver\n"
        f"if os.path.exists({gate!r}):\n"
        f"    open({gate!r}).read()\n\n\n"
        "class Handler(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        self.wfile.write(b'gated\\n')\n")
    pid_file = os.path.join(unix_dir, "pid")
    path = os.path.join(unix_dir, "gated.sock")
    with ended_on_exit([]) as pids, Running(["--pid-file", pid_file, "--app-dir", app, "gated_app:Handler",
                                             "--bind", f"unix://{path}"]) as running:
        running.ready()
        os.mkfifo(gate)
        running.send(signal.SIGUSR2)
        new = running.event("upgrading")["new_pid"]
        pids.append(new)
        # The new master waits in its import, reading the FIFO until the writer we hold is closed.
        writer = wait_for(lambda: _open_fifo_writer(gate), EVENT_TIMEOUT)
        try:
            running.send(signal.SIGTERM)
            aborted = running.event("upgrade_aborted")
            assert aborted["new_pid"] == new
        finally:
            os.close(writer)
        assert running.proc.wait(EVENT_TIMEOUT) == 0
        assert _gone(new)  # ended and reaped before the old master exited
        assert not os.path.exists(path) and not os.path.exists(pid_file)


# ---------------------------------------------------------------- the old master's side, in-process


def _upgrade_with(script: str, timeout: float) -> tuple[Upgrade, Reactor, dict[str, Any]]:
    reactor = Reactor()
    upgrade = Upgrade([sys.executable, "-c", script], cwd=os.getcwd(), notifier=Notifier(environ={}),
                      timeout=timeout)
    outcome: dict[str, Any] = {}
    assert upgrade.start(reactor, [], [], on_ready=lambda pid: outcome.setdefault("ready", pid),
                         on_failed=lambda: outcome.setdefault("failed", True))
    return upgrade, reactor, outcome


#: A successor that never reports (and never exits by itself): it waits for nothing, forever.
_SILENT = "import select; select.select([], [], [])"


def test_a_new_master_not_ready_in_time_is_terminated_and_reaped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "reactor.upgrade")
    upgrade, reactor, outcome = _upgrade_with(_SILENT, timeout=0.2)
    try:
        assert upgrade.in_progress
        reactor.run_until(lambda: "failed" in outcome, EVENT_TIMEOUT)
        assert outcome == {"failed": True} and not upgrade.in_progress and not upgrade.handed_over
        assert "not ready within 0.2 s" in caplog.text
        assert "killed by SIGTERM" in caplog.text
    finally:
        reactor.close()


def test_a_new_master_that_reports_garbage_is_ended(caplog: pytest.LogCaptureFixture) -> None:
    script = ("import os, select\n"
              "os.write(int(os.environ['REACTOR_UPGRADE_READY_FD']), b'READY 1\\n')\n" + _SILENT)
    upgrade, reactor, outcome = _upgrade_with(script, timeout=EVENT_TIMEOUT)
    try:
        reactor.run_until(lambda: "failed" in outcome, EVENT_TIMEOUT)
        assert "instead of READY" in caplog.text
    finally:
        reactor.close()


def test_a_ready_new_master_is_handed_over_and_a_second_start_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    script = ("import os, select\n"
              "assert 'REACTOR_UPGRADE_FDS' in os.environ\n"
              "os.write(int(os.environ['REACTOR_UPGRADE_READY_FD']), f'READY {os.getpid()}\\n'.encode())\n"
              + _SILENT)
    upgrade, reactor, outcome = _upgrade_with(script, timeout=EVENT_TIMEOUT)
    try:
        reactor.run_until(lambda: "ready" in outcome, EVENT_TIMEOUT)
        assert upgrade.handed_over and not upgrade.in_progress
        assert not upgrade.start(reactor, [], [], on_ready=print, on_failed=print)
        assert "already in progress" in caplog.text
    finally:
        reactor.close()
        pid = outcome.get("ready")
        if pid is not None:  # a successor that took over runs on: ours (the test's child) to end
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def test_inherited_descriptors_and_udp_are_handed_over_too(unix_dir: str) -> None:
    # fd://N: a listener this test made and passed, as a supervisor would; and a UDP server beside it.
    with socket.create_server(("127.0.0.1", 0)) as listener, ended_on_exit([]) as pids, \
            Running(["cli_apps:WhoHandler", "--bind", f"fd://{listener.fileno()}",
                     "--serve", "cli_apps:DatagramEchoHandler", "--bind", "udp://127.0.0.1:0"],
                    pass_fds=[listener.fileno()]) as running:
        udp = tcp_address(next(e for e in running.ready() if e["bind"].startswith("udp")))
        address = listener.getsockname()
        new = _upgrade(running, pids)
        assert running.proc.wait(EVENT_TIMEOUT) == 0
        assert ask(address, b"").split()[0] == str(new).encode()
        assert ask_datagram(udp, b"still here", socket.AF_INET) == b"still here"
        assert not os.get_blocking(listener.fileno())  # one file description: the new master's mode


def test_the_example_unit_lets_the_new_master_notify() -> None:
    unit = (REPO_ROOT / "examples" / "systemd" / "reactor-demo.service").read_text()
    assert re.search(r"^Type=notify$", unit, re.M) and re.search(r"^NotifyAccess=all$", unit, re.M)


# ---------------------------------------------------------------- the new master's side, in-process


def test_the_successor_takes_its_variables_out_of_the_environment_and_reports_ready(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    st = os.stat(path)
    read_end, write_end = os.pipe()
    env = {FDS_VARIABLE: json.dumps([{"server": 0, "bind": 0, "url": f"unix://{path}", "fd": listener.detach(),
                                      "path": path, "device": st.st_dev, "inode": st.st_ino}]),
           READY_VARIABLE: str(write_end), "WATCHDOG_USEC": "1000000", "OTHER": "kept"}
    try:
        successor = Successor.from_environment(env)
        assert successor is not None
        assert env == {"WATCHDOG_USEC": "1000000", "OTHER": "kept", "WATCHDOG_PID": str(os.getpid())}
        bind = type("Bind", (), {"url": f"unix://{path}"})()
        assert successor.take(1, [bind]) is None  # another server's
        (taken_bind, sock), = successor.take(0, [bind]) or []
        assert taken_bind is bind and sock.gettimeout() == 0.0 and not sock.get_inheritable()
        listener_record = type("Listener", (), {"bind": bind, "sock": sock, "unix_path": None})()
        assert not successor.reported
        successor.ready([listener_record])
        assert successor.reported
        assert os.read(read_end, 100) == f"READY {os.getpid()}\n".encode()
        assert os.read(read_end, 100) == b""  # and closed
        assert listener_record.unix_path.owner_pid == os.getpid() and listener_record.unix_path.is_ours()
        sock.close()
    finally:
        os.close(read_end)
        with contextlib.suppress(OSError):
            os.close(write_end)


@pytest.mark.parametrize("env, message", [
    ({FDS_VARIABLE: "[]"}, "go together"),
    ({FDS_VARIABLE: "not json", READY_VARIABLE: "0"}, "is malformed"),
    ({FDS_VARIABLE: '[{"server": 0}]', READY_VARIABLE: "0"}, "is malformed"),
])
def test_malformed_upgrade_variables_are_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Successor.from_environment(env)
    assert env == {}
    assert Successor.from_environment({}) is None


def test_the_admin_endpoint_goes_along_with_an_upgrade(unix_dir: str) -> None:
    from reactor.admin import fetch, parse_admin_url

    admin = parse_admin_url(f"unix://{os.path.join(unix_dir, 'admin.sock')}")
    with ended_on_exit([]) as pids, Running(["--admin", admin.url, "cli_apps:WhoHandler",
                                             "--bind", "tcp://127.0.0.1:0"]) as running:
        running.ready()
        status, body = fetch(admin, "/stats")
        assert status == 200 and json.loads(body)["process"]["pid"] == running.pid
        new = _upgrade(running, pids)
        assert running.proc.wait(EVENT_TIMEOUT) == 0
        # The new master answers on the same admin socket file (it could not have bound it again).
        status, body = fetch(admin, "/stats")
        assert status == 200 and json.loads(body)["process"]["pid"] == new
        assert fetch(admin, "/health")[0] == 200
        start = len(running.events)
        os.kill(new, signal.SIGTERM)
        running.wait_for(lambda e: e.get("pid") == new and e.get("event") == "stopped", "new master stopped",
                         start=start)
        wait_for(lambda: _gone(new), EVENT_TIMEOUT)
        assert not os.path.exists(admin.address)  # the new master owned it, and removed it
