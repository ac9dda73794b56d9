"""Prefork: pre-forked worker processes supervised by an arbiter (reactor/prefork/).

Every test runs the server in a FRESH interpreter (the scripts in
tests/prefork_scripts/), never by forking pytest. The tree is::

    master (our child: the script) -> arbiter -> workers
                                              -> standby (takes over if the arbiter dies)

The scripts print machine-readable lines on stdout (``ready <address>
<master pid>``, ``stats <json>`` in answer to a ``stats`` line on stdin...),
read here with a deadline; their logs go to a file. Every handler replies with
``os.getpid()``, so a test knows which worker served it.

Two tricks keep the tests free of sleeps:

* a ``slow`` request blocks its handler until the client sends a second line.
  With ``threads=0`` a worker busy with one takes no other connection, so
  holding one slow request per worker reaches every worker exactly once
  (``pids_of_every_worker``);
* the process table is polled with ``wait_for``: a reaped process is gone
  (``os.kill(pid, 0)`` raises ProcessLookupError).

Zombies: the master scripts make themselves child subreapers (Linux), so a
worker that the arbiter exited without reaping is adopted by the master and
shows in its ``children`` report (which must be empty after ``close()``)
instead of being reaped by init. Only when the master itself is killed does
the arbiter go to init, which may reap late (some containers' init does), so
there ``exited()`` accepts a zombie.

Every tree is ended in a finally (SIGTERM, then SIGKILL), and any process of
it we learned that still runs our script is killed by pid.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from support import TESTS_DIR, ipv6_available, run_python, spawn_python, wait_for

SCRIPTS = TESTS_DIR / "prefork_scripts"
SERVER = SCRIPTS / "prefork_server.py"

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc"),
                                reason="pre-forking needs os.fork; process checks read /proc")

Address = Any  # ("127.0.0.1", port), ("::1", port) or a Unix path

#: A killed worker is replaced "within a second"; the bound leaves room for a loaded machine
#: (the first fast crash is respawned after a 0.1 s backoff).
REPLACEMENT_BOUND = 2.0


# ---------------------------------------------------------------- processes

def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[0], int(fields[1])


def parent_of(pid: int) -> int:
    state = process_state(pid)
    assert state is not None, f"process {pid} does not exist"
    return state[1]


def gone(pid: int) -> bool:
    """True once ``pid`` has exited and been reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def exited(pid: int) -> bool:
    """True once ``pid`` has exited (reaped, or a zombie: an orphan init has not reaped yet)."""
    state = process_state(pid)
    return state is None or state[0] == "Z"


def signal_pending(pid: int, signum: int) -> bool:
    """True while ``signum`` sent to ``pid`` waits for delivery (/proc/PID/status ShdPnd, SigPnd)."""
    with open(f"/proc/{pid}/status") as fh:
        masks = [int(line.split()[1], 16) for line in fh if line.startswith(("ShdPnd:", "SigPnd:"))]
    return any(mask & (1 << (signum - 1)) for mask in masks)


def runs_script(pid: int, script: Path) -> bool:
    """True if ``pid`` still runs ``script`` (a forked worker keeps its master's argv)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return os.fsencode(script) in fh.read()
    except OSError:
        return False


class LineReader:
    """Lines from a child's stdout, read with a deadline (select on the raw descriptor)."""

    def __init__(self, stream: IO[str]) -> None:
        self._fd = stream.fileno()
        self._buffer = b""
        self._kept: collections.deque[str] = collections.deque()  # read by wait_eof, not yet returned
        self.eof = False

    def readline(self, timeout: float) -> str | None:
        """The next line, or None at EOF; AssertionError if none comes within ``timeout``."""
        if self._kept:
            return self._kept.popleft()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self.eof:
                return None
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self._fd], [], [], max(remaining, 0))
            if not readable:
                raise AssertionError(f"the child printed no line within {timeout:g}s")
            data = os.read(self._fd, 65536)
            if data:
                self._buffer += data
            else:
                self.eof = True
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_eof(self, timeout: float) -> None:
        """Read to EOF, keeping the lines: every process holding the pipe (the whole tree) has exited."""
        deadline = time.monotonic() + timeout
        kept = list(self._kept)
        self._kept.clear()
        while (line := self.readline(max(deadline - time.monotonic(), 0))) is not None:
            kept.append(line)
        self._kept.extend(kept)


class Tree:
    """A server script running as our child: the master of a pre-fork tree."""

    def __init__(self, script: Path, proc: subprocess.Popen[str], stderr: IO[str]) -> None:
        self.script = script
        self.proc = proc
        self.lines = LineReader(proc.stdout)  # type: ignore[arg-type]
        self._stderr = stderr
        self.learned: set[int] = set()  # arbiter and worker pids seen, for the checks and the cleanup

    def expect(self, word: str, timeout: float = 15) -> str:
        """The rest of the next stdout line starting with ``word`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        skipped: list[str] = []
        while True:
            try:
                line = self.lines.readline(max(deadline - time.monotonic(), 0))
            except AssertionError:
                raise AssertionError(f"the child printed no {word!r} line within {timeout:g}s; it printed "
                                     f"{skipped}\nstderr:\n{self.stderr()}") from None
            if line is None:
                raise AssertionError(f"the child closed stdout before printing {word!r}; it printed "
                                     f"{skipped}\nstderr:\n{self.stderr()}")
            head, _, rest = line.partition(" ")
            if head == word:
                return rest
            skipped.append(line)

    def ready(self, timeout: float = 20) -> list[str]:
        """Wait for ``ready ...``; return its words (address first, master pid last)."""
        return self.expect("ready", timeout).split()

    def learn(self, *pids: int) -> None:
        self.learned.update(pid for pid in pids if pid)

    def stats(self) -> dict[str, Any]:
        """``Prefork.stats()`` in the master, asked over stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        stats: dict[str, Any] = json.loads(self.expect("stats"))
        self.learn(*stats["pids"], stats["arbiter"] or 0)
        return stats

    def wait_stats(self, predicate: Callable[[dict[str, Any]], bool], message: str,
                   timeout: float = 10) -> dict[str, Any]:
        """Ask for stats until ``predicate(stats)`` holds; return those stats."""
        last: list[dict[str, Any]] = []

        def check() -> dict[str, Any]:
            stats = self.stats()
            last[:] = [stats]
            return stats if predicate(stats) else {}

        return wait_for(check, timeout=timeout, interval=0.02, message=lambda: f"{message}; last stats: {last}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the master did not exit within {timeout:g}s\nstderr:\n{self.stderr()}") from None

    def stderr(self) -> str:
        self._stderr.flush()
        return Path(self._stderr.name).read_text(errors="replace")

    def close(self) -> None:
        """End the tree whatever state it is in: SIGTERM, then SIGKILL; kill our leftovers by pid."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            for pid in self.learned:
                if not exited(pid) and runs_script(pid, self.script):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._stderr.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Tree]]:
    """``start(script, *args, env=None)`` runs a server script in a fresh interpreter; ended afterwards."""
    trees: list[Tree] = []

    def start_tree(script: Path, *args: str, env: dict[str, str] | None = None) -> Tree:
        stderr = open(tmp_path / f"stderr-{len(trees)}.log", "w+")  # a file: a full pipe would block the tree
        try:
            proc = spawn_python(script, *args, stderr=stderr, env=env)
        except BaseException:
            stderr.close()
            raise
        tree = Tree(script, proc, stderr)
        trees.append(tree)
        return tree

    try:
        yield start_tree
    finally:
        for tree in trees:
            tree.close()


def stop_cleanly(tree: Tree) -> None:
    """SIGTERM the master, then ``exits_cleanly``."""
    tree.signal(signal.SIGTERM)
    exits_cleanly(tree)


def exits_cleanly(tree: Tree) -> None:
    """The master exits 0 having reaped its children, and no process of the tree is left."""
    status = tree.wait(40)
    assert status == 0, f"the master exited with {status}\nstderr:\n{tree.stderr()}"
    assert json.loads(tree.expect("children")) == [], "the master left unreaped children"
    tree.lines.wait_eof(10)  # nobody in the tree holds our stdout pipe any more
    wait_for(lambda: all(gone(pid) for pid in tree.learned), timeout=10,
             message=lambda: f"processes of the tree left: "
                             f"{ {pid: process_state(pid) for pid in tree.learned if not gone(pid)} }")


# ---------------------------------------------------------------- clients

def connect(address: Address) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout=5)


def recv_line(sock: socket.socket) -> bytes:
    """Bytes up to and including a newline, or what came before EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def ask_pid(address: Address) -> int:
    """One short request; the pid of the process that served it."""
    with connect(address) as sock:
        sock.sendall(b"pid\n")
        reply = recv_line(sock)
    assert reply.endswith(b"\n"), f"incomplete reply {reply!r}"
    return int(reply)


class SlowRequest:
    """A request whose handler runs until ``finish()``: it keeps its worker (or thread) busy."""

    def __init__(self, address: Address) -> None:
        self.sock = connect(address)
        try:
            self.sock.sendall(b"slow\n")
            words = recv_line(self.sock).split()
            assert words[:1] == [b"started"], f"unexpected reply {words!r}"
            self.pid, self.thread = int(words[1]), int(words[2])
        except BaseException:
            self.sock.close()
            raise

    def finish(self) -> bytes:
        """Let the handler end; its last reply."""
        self.sock.sendall(b"go\n")
        return recv_line(self.sock)

    def close(self) -> None:
        self.sock.close()


def pids_of_every_worker(address: Address, workers: int) -> set[int]:
    """Hold one slow request per worker (threads=0): each lands on a different idle worker."""
    held: list[SlowRequest] = []
    try:
        for _ in range(workers):
            held.append(SlowRequest(address))
        for request in held:
            assert request.finish() == b"done %d\n" % request.pid
    finally:
        for request in held:
            request.close()
    pids = {request.pid for request in held}
    assert len(pids) == workers, f"{workers} held requests were served by {pids}"
    return pids


def ask_pid_datagram(address: Address, client_path: str | None) -> int:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        if client_path is not None:
            sock.bind(client_path)  # a Unix datagram client needs an address to be answered at
        try:
            sock.sendto(b"pid", address)
            reply, _ = sock.recvfrom(1024)
        finally:
            if client_path is not None:
                os.unlink(client_path)
    return int(reply.split()[0])


def not_served(sock: socket.socket) -> bool:
    """True if the connection ends without a reply (closed or reset by the server)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


# ---------------------------------------------------------------- serving

FAMILIES = [
    pytest.param("tcp4", id="tcp4"),
    pytest.param("tcp6", id="tcp6", marks=pytest.mark.skipif(not ipv6_available(), reason="no IPv6")),
    pytest.param("unix", id="unix"),
    pytest.param("udp4", id="udp4"),
    pytest.param("unix-dgram", id="unix-dgram"),
]


def server_args(family: str, unix_dir: str) -> list[str]:
    args = ["--family", family]
    if family.startswith("unix"):
        args += ["--path", os.path.join(unix_dir, "server.sock")]
    return args


def address_of(family: str, shown: str) -> Address:
    if family.startswith("unix"):
        return shown
    return ("::1" if family == "tcp6" else "127.0.0.1", int(shown))


@pytest.mark.parametrize("family", FAMILIES)
def test_requests_are_served_by_the_worker_processes_not_the_master(
        start: Callable[..., Tree], unix_dir: str, family: str) -> None:
    tree = start(SERVER, "--workers", "2", *server_args(family, unix_dir))
    shown, master = tree.ready()
    address = address_of(family, shown)
    stats = tree.stats()
    workers, arbiter = set(stats["pids"]), stats["arbiter"]
    assert len(workers) == 2 and set(stats["ready"]) == workers
    assert int(master) not in workers and arbiter not in workers and arbiter != int(master)
    assert parent_of(arbiter) == int(master)
    assert {parent_of(pid) for pid in workers} == {arbiter}

    if family in ("udp4", "unix-dgram"):
        client = os.path.join(unix_dir, "client.sock") if family == "unix-dgram" else None
        served = {ask_pid_datagram(address, client) for _ in range(20)}
        assert served <= workers
    else:
        served = {ask_pid(address) for _ in range(20)}
        assert served <= workers
        assert pids_of_every_worker(address, 2) == workers
    assert tree.stats()["pids"] == sorted(workers)  # nobody was replaced meanwhile
    stop_cleanly(tree)


def test_a_worker_killed_with_sigkill_is_reaped_and_replaced(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    before = set(tree.stats()["ready"])
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    after = tree.wait_stats(lambda s: victim not in s["pids"] and len(s["ready"]) == 2,
                            "the killed worker was not replaced", timeout=REPLACEMENT_BOUND)
    wait_for(lambda: gone(victim), message=f"worker {victim} was not reaped by the arbiter")
    assert len(set(after["ready"]) - before) == 1
    assert pids_of_every_worker(address, 2) == set(after["ready"])
    stop_cleanly(tree)
    assert f"worker {victim} died (killed by SIGKILL)" in tree.stderr()


def test_sigkill_of_the_master_takes_the_arbiter_and_the_workers_down(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2")
    _, master = tree.ready()
    stats = tree.stats()
    workers, arbiter = stats["pids"], stats["arbiter"]
    # Held stopped until it is re-parented, the arbiter reads the EOF only afterwards.
    os.kill(arbiter, signal.SIGSTOP)
    try:
        tree.signal(signal.SIGKILL)
        assert tree.wait(10) == -signal.SIGKILL
        wait_for(lambda: parent_of(arbiter) != int(master), message="the arbiter was not re-parented")
    finally:
        os.kill(arbiter, signal.SIGCONT)

    wait_for(lambda: all(gone(pid) for pid in workers), timeout=10,
             message=lambda: f"workers left: { {pid: process_state(pid) for pid in workers} }")
    wait_for(lambda: exited(arbiter), timeout=10, message=f"the arbiter {arbiter} is still running")
    tree.lines.wait_eof(10)
    # Re-parented by then, the arbiter names the master it was forked by, not its new parent.
    assert f"master {master} is gone; stopping the workers" in tree.stderr()


def test_an_arbiter_lost_with_its_standby_stops_its_workers_and_fails_serve_forever(
        start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2")
    tree.ready()
    stats = tree.stats()
    arbiter = stats["arbiter"]
    (standby,) = children_of(arbiter) - set(stats["pids"])
    tree.learn(standby)
    os.kill(arbiter, signal.SIGSTOP)  # it cannot replace its standby...
    os.kill(standby, signal.SIGKILL)
    wait_for(lambda: exited(standby), message="the standby did not die")
    os.kill(arbiter, signal.SIGKILL)  # ... nor be replaced by it
    report = json.loads(tree.expect("error"))
    assert report["type"] == "PreforkError" and "arbiter exited unexpectedly" in report["error"]
    assert tree.wait(20) == 2
    # Orphaned, the workers stop by themselves (adopted by the subreaper master, which
    # does not reap them: only their exit is checked).
    wait_for(lambda: all(exited(pid) for pid in stats["pids"]), timeout=10,
             message=lambda: f"workers left: { {pid: process_state(pid) for pid in stats['pids']} }")
    tree.lines.wait_eof(10)
    log = tree.stderr()
    assert "lost its arbiter; stopping" in log
    assert f"the arbiter {arbiter} exited unexpectedly (killed by SIGKILL) and no standby took over" in log, log


# ---------------------------------------------------------------- graceful stop

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_lets_the_request_in_flight_finish_then_exits_cleanly(
        start: Callable[..., Tree], signum: int) -> None:
    tree = start(SERVER, "--workers", "2", "--graceful-timeout", "30")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    workers = set(tree.stats()["ready"])
    slow = SlowRequest(address)
    try:
        (idle,) = workers - {slow.pid}
        tree.signal(signum)
        tree.expect("stopping")
        # The arbiter tells every worker to stop at once: once the idle one is
        # gone, the busy one has been told too, and waits for its request.
        wait_for(lambda: gone(idle), message=f"the idle worker {idle} did not stop")
        assert not exited(slow.pid)
        assert tree.proc.poll() is None
        assert slow.finish() == b"done %d\n" % slow.pid
    finally:
        slow.close()
    exits_cleanly(tree)


def test_sigterm_takes_no_new_connection_after_the_request_in_flight(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2", "--graceful-timeout", "30")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    workers = set(tree.stats()["ready"])
    slow = SlowRequest(address)
    try:
        (idle,) = workers - {slow.pid}
        tree.signal(signal.SIGTERM)
        wait_for(lambda: gone(idle), message=f"the idle worker {idle} did not stop")
        with connect(address) as late:  # waits in the backlog of the stopping tree
            late.sendall(b"pid\n")
            assert slow.finish() == b"done %d\n" % slow.pid
            assert not_served(late), "a worker told to stop took a new connection"
    finally:
        slow.close()
    exits_cleanly(tree)


def test_stop_kills_a_request_still_running_after_graceful_timeout(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "1", "--graceful-timeout", "1")
    port, _ = tree.ready()
    tree.stats()  # learn the pids
    slow = SlowRequest(("127.0.0.1", int(port)))  # never finished
    try:
        tree.signal(signal.SIGTERM)
        exits_cleanly(tree)  # the worker was killed after graceful_timeout, then reaped
        assert not_served(slow.sock)
    finally:
        slow.close()


def test_a_second_sigterm_during_the_graceful_stop_aborts_what_is_left_and_exits_cleanly(
        start: Callable[..., Tree], unix_dir: str) -> None:
    path = os.path.join(unix_dir, "pf.sock")
    tree = start(SERVER, "--family", "unix", "--path", path, "--workers", "2", "--graceful-timeout", "30")
    tree.ready()
    workers = set(tree.stats()["ready"])
    slow = SlowRequest(path)  # would hold the graceful stop for its whole 30 s
    try:
        (idle,) = workers - {slow.pid}
        tree.signal(signal.SIGTERM)
        wait_for(lambda: gone(idle), message=f"the idle worker {idle} did not stop")
        tree.signal(signal.SIGTERM)  # an impatient operator: now
        tree.wait(10)  # well before graceful_timeout: the drain was aborted
        exits_cleanly(tree)
        assert gone(slow.pid)
        assert not_served(slow.sock)
    finally:
        slow.close()
    assert not os.path.exists(path)


def test_stop_right_after_workers_are_forked_does_not_wait_for_graceful_timeout(
        start: Callable[..., Tree]) -> None:
    # Nothing is in flight, so each close() returns at once; a worker that lost
    # its SIGTERM would hold it up for the whole graceful_timeout (30 s), then be killed.
    tree = start(SCRIPTS / "stop_at_once.py", "20", "30")
    for attempt in range(20):
        tree.learn(int(tree.expect("arbiter")))
        assert tree.expect("closed", timeout=10) == str(attempt)
    exits_cleanly(tree)


def test_unix_socket_file_outlives_recycled_workers_and_goes_with_the_master(
        start: Callable[..., Tree], unix_dir: str) -> None:
    path = os.path.join(unix_dir, "pf.sock")
    tree = start(SERVER, "--family", "unix", "--path", path, "--workers", "1", "--max-requests", "2")
    tree.ready()
    first = [ask_pid(path), ask_pid(path)]
    assert first[0] == first[1]
    wait_for(lambda: gone(first[0]), message="the worker did not recycle after max_requests")
    assert os.path.exists(path), "an exiting worker removed the master's socket file"
    replacement = ask_pid(path)
    assert replacement != first[0]
    tree.learn(first[0], replacement)
    stop_cleanly(tree)
    assert json.loads(tree.expect("socket-file")) is False
    assert not os.path.exists(path)


# ---------------------------------------------------------------- supervision

def test_sighup_replaces_every_worker_without_failing_a_request(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2", "--graceful-timeout", "10")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    served: list[int] = []
    failed: list[str] = []
    warmed_up, enough = threading.Event(), threading.Event()

    def load() -> None:
        for count in range(1, 20001):  # bounded even if the test never sets `enough`
            try:
                served.append(ask_pid(address))
            except (OSError, AssertionError, ValueError) as exc:
                failed.append(repr(exc))
            if count == 50:
                warmed_up.set()
            if enough.is_set() and count >= 300:
                return

    client = threading.Thread(target=load, name="sighup-load")
    client.start()
    try:
        assert warmed_up.wait(15)
        before = set(tree.stats()["ready"])
        tree.signal(signal.SIGHUP)
        after = tree.wait_stats(
            lambda s: len(s["ready"]) == 2 and not set(s["pids"]) & before,
            "the workers were not all replaced after SIGHUP", timeout=20)
        wait_for(lambda: all(gone(pid) for pid in before), message="old workers still running")
        mark = len(served) + len(failed)
        wait_for(lambda: len(served) + len(failed) >= mark + 50, timeout=15,
                 message="no requests after the reload")
    finally:
        enough.set()
        client.join(30)
    assert not client.is_alive()
    assert failed == []
    assert set(served) & before and set(served) & set(after["ready"])
    assert set(served) <= before | set(after["ready"])
    stop_cleanly(tree)


def test_sighup_starts_new_workers_while_the_old_ones_finish_their_requests(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2", "--graceful-timeout", "30")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    old = set(tree.stats()["ready"])
    held = [SlowRequest(address), SlowRequest(address)]  # both old workers are busy
    try:
        assert {request.pid for request in held} == old
        tree.signal(signal.SIGHUP)
        stats = tree.wait_stats(lambda s: len(set(s["ready"]) - old) == 2, "no new workers after SIGHUP")
        new = set(stats["ready"]) - old
        assert ask_pid(address) in new
        assert not any(exited(pid) for pid in old)  # still finishing their requests
        for request in held:
            assert request.finish() == b"done %d\n" % request.pid
    finally:
        for request in held:
            request.close()
    wait_for(lambda: all(gone(pid) for pid in old), message="old workers still running after their requests")
    assert set(tree.wait_stats(lambda s: len(s["pids"]) == 2, "the pool did not settle")["ready"]) == new
    assert pids_of_every_worker(address, 2) == new
    stop_cleanly(tree)


def test_sigttin_adds_a_worker_and_sigttou_removes_one_but_never_the_last(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2", "--graceful-timeout", "10")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    initial = set(tree.stats()["ready"])

    tree.signal(signal.SIGTTIN)
    three = tree.wait_stats(lambda s: s["workers"] == 3 and len(s["ready"]) == 3, "SIGTTIN added no worker")
    assert initial < set(three["ready"])

    tree.signal(signal.SIGTTOU)
    two = tree.wait_stats(lambda s: s["workers"] == 2 and len(s["pids"]) == 2, "SIGTTOU removed no worker")
    (retired,) = set(three["pids"]) - set(two["pids"])
    wait_for(lambda: gone(retired), message=f"retired worker {retired} still running")

    tree.signal(signal.SIGTTOU)
    one = tree.wait_stats(lambda s: s["workers"] == 1 and len(s["pids"]) == 1, "second SIGTTOU removed no worker")
    assert ask_pid(address) == one["pids"][0]

    # At one worker SIGTTOU changes nothing: the next SIGTTIN brings the count to 2, not 1.
    # (Send SIGTTIN only once SIGTTOU is delivered: the kernel delivers pending
    # signals lowest number first, and SIGTTIN < SIGTTOU.)
    tree.signal(signal.SIGTTOU)
    wait_for(lambda: not signal_pending(tree.proc.pid, signal.SIGTTOU), message="SIGTTOU never delivered")
    tree.signal(signal.SIGTTIN)
    back = tree.wait_stats(lambda s: s["workers"] == 2 and len(s["ready"]) == 2,
                           "SIGTTOU went below one worker")
    assert one["pids"][0] in back["pids"]
    assert pids_of_every_worker(address, 2) == set(back["ready"])
    stop_cleanly(tree)


def test_a_worker_stuck_in_its_loop_is_aborted_with_a_traceback_and_replaced(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "1", "--heartbeat-timeout", "1", "--graceful-timeout", "5")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    (stuck,) = tree.stats()["ready"]
    with connect(address) as hung:
        hung.sendall(b"hang\n")
        after = tree.wait_stats(lambda s: stuck not in s["pids"] and len(s["ready"]) == 1,
                                "the stuck worker was not replaced", timeout=20)
        wait_for(lambda: gone(stuck), message=f"the stuck worker {stuck} was not reaped")
        assert not_served(hung)
    assert ask_pid(address) == after["ready"][0]
    stop_cleanly(tree)
    log = tree.stderr()
    assert "Fatal Python error: Aborted" in log
    assert "Current thread" in log
    assert re.search(r'File ".*handlers\.py", line \d+ in handle', log), log
    assert f"worker {stuck} sent no heartbeat" in log
    assert f"worker {stuck} died (killed by SIGABRT)" in log


@pytest.mark.parametrize("jitter", [0, 3])
def test_max_requests_recycles_workers_without_failing_a_request(start: Callable[..., Tree], jitter: int) -> None:
    tree = start(SERVER, "--workers", "2", "--max-requests", "5", "--max-requests-jitter", str(jitter))
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    served: list[int] = []
    failed: list[str] = []
    for _ in range(20):
        try:
            served.append(ask_pid(address))
        except (OSError, AssertionError, ValueError) as exc:
            failed.append(repr(exc))
    tree.learn(*served)
    assert failed == []
    per_worker = collections.Counter(served)
    assert len(per_worker) > 2, f"no worker was recycled: {per_worker}"
    assert max(per_worker.values()) <= 5 + jitter, f"a worker served more than its limit: {per_worker}"
    tree.wait_stats(lambda s: len(s["ready"]) == 2, "the pool did not get back to 2 workers")
    stop_cleanly(tree)
    assert "exited (exit status 0)" in tree.stderr()


def test_a_worker_that_fails_to_boot_stops_the_server_with_a_clear_error(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2", "--fail-boot")
    report = json.loads(tree.expect("error", timeout=20))
    assert tree.wait(20) == 2
    assert report["type"] == "WorkerBootError"
    assert "failed to boot" in report["error"] and "not respawning" in report["error"]
    assert report["stats"]["spawned"] <= 2
    assert json.loads(tree.expect("children")) == []
    tree.lines.wait_eof(10)
    log = tree.stderr()
    assert "RuntimeError: boom: the worker cannot open its resources" in log
    booted = set(re.findall(r"worker (\d+) failed to boot", log))
    assert 1 <= len(booted) <= 2, f"respawned workers that cannot boot: {sorted(booted)}"


def test_threads_let_one_worker_serve_requests_concurrently(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "1", "--threads", "2")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    (worker,) = tree.stats()["ready"]
    first = SlowRequest(address)
    try:
        second = SlowRequest(address)  # started while the first still runs: a second thread took it
        try:
            assert first.pid == second.pid == worker
            assert first.thread != second.thread
            assert second.finish() == b"done %d\n" % worker
        finally:
            second.close()
        assert first.finish() == b"done %d\n" % worker
    finally:
        first.close()
    stop_cleanly(tree)


# ---------------------------------------------------------------- in the master

def test_refuses_to_fork_while_another_thread_runs() -> None:
    result = run_python(
        """
        import json, threading
        from reactor import Prefork, PreforkError, Reactor, socketserver
        from support import child_pids

        release = threading.Event()
        helper = threading.Thread(target=release.wait, name="helper-thread")
        helper.start()
        server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.StreamRequestHandler)
        reactor = Reactor()
        try:
            reactor.add_server(server, Prefork(2))
        except PreforkError as exc:
            print("refused", exc)
        else:
            print("forked")
        print("children", json.dumps(sorted(child_pids())))
        print("hosted", len(reactor.servers))
        release.set()
        helper.join()
        reactor.close()
        server.server_close()
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused "), result.stdout
    assert "helper-thread" in lines[0] and "refusing to fork while other threads run" in lines[0]
    assert lines[1:] == ["children []", "hosted 0"]


def test_compat_tcpserver_with_prefork_serves_from_workers_and_stops_on_sigterm(
        start: Callable[..., Tree]) -> None:
    tree = start(SCRIPTS / "compat_server.py")
    port, master = tree.ready()
    address = ("127.0.0.1", int(port))
    workers = pids_of_every_worker(address, 2)
    arbiters = {parent_of(pid) for pid in workers}
    tree.learn(*workers, *arbiters)
    assert int(master) not in workers
    assert len(arbiters) == 1 and parent_of(arbiters.pop()) == int(master)
    assert {ask_pid(address) for _ in range(10)} <= workers
    tree.signal(signal.SIGTERM)
    assert tree.wait(40) == 0, tree.stderr()
    tree.expect("stopped")
    assert json.loads(tree.expect("children")) == []
    tree.lines.wait_eof(10)
    wait_for(lambda: all(gone(pid) for pid in tree.learned), timeout=10, message="processes of the tree left")


def admin(path: str, command: str) -> Any:
    with connect(path) as sock:
        sock.sendall(command.encode() + b"\n")
        return json.loads(recv_line(sock))


def test_mixed_reactor_respawns_a_prefork_worker_after_the_thread_pool_started(
        start: Callable[..., Tree], unix_dir: str) -> None:
    admin_path = os.path.join(unix_dir, "admin.sock")
    tree = start(SCRIPTS / "mixed_server.py", admin_path, env={"PYTHONWARNINGS": "always::DeprecationWarning"})
    tcp_port, udp_port, master = tree.ready()
    tcp, udp = ("127.0.0.1", int(tcp_port)), ("127.0.0.1", int(udp_port))
    workers = set(admin(admin_path, "workers"))
    tree.learn(*workers, admin(admin_path, "stats")["prefork"]["arbiter"])
    assert pids_of_every_worker(tcp, 2) == workers

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        for _ in range(3):
            sock.sendto(b"hello", udp)
            pid, thread_name = sock.recvfrom(1024)[0].decode().split(" ", 1)
            assert int(pid) == int(master) and "-worker-" in thread_name
    stats = admin(admin_path, "stats")
    assert stats["pool"]["threads"] >= 1 and len(stats["threads"]) > 1  # the master now runs threads

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)

    def replacement_ready() -> set[int]:
        pids = set(admin(admin_path, "workers"))
        return pids if victim not in pids and len(pids) == 2 else set()

    replaced = wait_for(replacement_ready, timeout=REPLACEMENT_BOUND, message="the killed worker was not replaced")
    tree.learn(*replaced)
    wait_for(lambda: gone(victim), message=f"worker {victim} was not reaped")
    assert pids_of_every_worker(tcp, 2) == replaced
    assert admin(admin_path, "stats")["prefork"]["spawned"] == 3

    stop_cleanly(tree)
    assert json.loads(tree.expect("socket-file")) is False
    assert not os.path.exists(admin_path)
    assert "multi-threaded" not in tree.stderr()  # every later fork came from the single-threaded arbiter


def test_a_prefork_server_leaves_the_masters_signal_handlers_alone_unless_asked() -> None:
    result = run_python(
        """
        import json, signal
        from reactor import Prefork, Reactor, socketserver

        def mine(signum, frame):
            pass

        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, mine)
        before = {int(s): repr(signal.getsignal(s)) for s in watched}
        report = {}
        for opt_in in (False, True):
            server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.StreamRequestHandler)
            reactor = Reactor()
            reactor.add_server(server, Prefork(1, graceful_timeout=5, handle_signals=opt_in) if opt_in
                               else Prefork(1, graceful_timeout=5))
            report[str(opt_in)] = sorted(int(s) for s in watched if repr(signal.getsignal(s)) != before[int(s)])
            reactor.close()
        report["after"] = sorted(int(s) for s in watched if repr(signal.getsignal(s)) != before[int(s)])
        print(json.dumps(report))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["False"] == [], "a Prefork server took signals it was not asked to"
    assert report["True"] == sorted(int(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                                     signal.SIGTTIN, signal.SIGTTOU))
    assert report["after"] == []


# ---------------------------------------------------------------- isolation between servers

SHARED = SCRIPTS / "shared_server.py"


def start_shared(start: Callable[..., Tree], unix_dir: str, *args: str) -> tuple[Tree, dict[str, Any]]:
    """The shared_server.py script: two Prefork pools, a ThreadPool and an Inline server on one Reactor."""
    tree = start(SHARED, unix_dir, *args)
    info: dict[str, Any] = json.loads(tree.expect("ready", timeout=20))
    shared_stats(tree)
    return tree, info


def shared_stats(tree: Tree) -> dict[str, Any]:
    """Both pools' ``Prefork.stats()``; learns every pid (standbys too) for the cleanup."""
    assert tree.proc.stdin is not None
    tree.proc.stdin.write("stats\n")
    tree.proc.stdin.flush()
    stats: dict[str, Any] = json.loads(tree.expect("stats"))
    for pool in stats.values():
        tree.learn(*pool["pids"], pool["arbiter"] or 0)
        if pool["arbiter"]:
            tree.learn(*children_of(pool["arbiter"]))
    return stats


def tell(tree: Tree, line: str) -> None:
    assert tree.proc.stdin is not None
    tree.proc.stdin.write(line + "\n")
    tree.proc.stdin.flush()


def children_of(pid: int) -> set[int]:
    pids: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                pids.update(int(p) for p in fh.read().split())
    except OSError:
        pass
    return pids


def fd_targets(pid: int) -> dict[int, str]:
    targets = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            targets[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
    return targets


def kinds(targets: dict[int, str]) -> dict[str, list[str]]:
    """Descriptors above stdio, grouped: socket, pipe, eventpoll, file, other."""
    grouped: dict[str, list[str]] = collections.defaultdict(list)
    for fd, target in targets.items():
        if fd <= 2:
            continue
        if target.startswith("socket:"):
            grouped["socket"].append(target)
        elif target.startswith("pipe:"):
            grouped["pipe"].append(target)
        elif target == "anon_inode:[eventpoll]":
            grouped["eventpoll"].append(target)
        elif target.startswith("/"):
            grouped["file"].append(target)
        else:
            grouped["other"].append(target)
    return grouped


def test_each_child_holds_only_its_own_listener_pipes_and_the_files_it_was_asked_to_keep(
        start: Callable[..., Tree], unix_dir: str) -> None:
    tree, info = start_shared(start, unix_dir)
    master = fd_targets(info["master"])
    master_sockets = {target for target in master.values() if target.startswith("socket:")}
    stats = shared_stats(tree)
    checked = []
    for name, pool in stats.items():
        arbiter, workers = pool["arbiter"], set(pool["pids"])
        standbys = children_of(arbiter) - workers
        listener = info["inodes"][name]
        files = sorted([info["log"], info["kept"]] if name == "a" else [info["log"]])
        arbiter_fds = fd_targets(arbiter)
        arbiter_pipes = set(kinds(arbiter_fds)["pipe"])
        control = [t for t in kinds(arbiter_fds)["socket"] if t not in master_sockets]
        roles = [("arbiter", arbiter, 1, 4, 2 + len(workers) + len(standbys))]
        roles += [("worker", pid, 1, 3, 2) for pid in workers]
        roles += [("standby", pid, 0, 2, 1) for pid in standbys]
        for role, pid, epolls, sockets, pipes in roles:
            fds = fd_targets(pid)
            grouped = kinds(fds)
            where = f"{name} {role} {pid}: {fds}"
            assert [fds.get(fd) for fd in (0, 1, 2)] == [master.get(fd) for fd in (0, 1, 2)], where
            assert set(grouped["socket"]) & master_sockets == {listener}, where
            assert grouped["socket"].count(listener) == 1, where
            assert len(grouped["socket"]) == sockets, where
            assert len(grouped["eventpoll"]) == epolls, where
            assert len(grouped["pipe"]) == pipes and set(grouped["pipe"]) <= arbiter_pipes, where
            assert sorted(grouped["file"]) == files, where
            assert grouped["other"] == [], where
            if role == "standby":
                assert set(grouped["socket"]) - {listener} <= set(control), where
            checked.append(role)
    assert checked.count("worker") == 4 and checked.count("arbiter") == 2
    stop_cleanly(tree)
    assert "arbiter" in Path(info["log"]).read_text(), "file logging does not work in the children"


def test_a_port_closed_in_the_master_is_free_at_once(start: Callable[..., Tree], unix_dir: str) -> None:
    tree, info = start_shared(start, unix_dir)
    assert ask_pid(("127.0.0.1", info["pooled"])) == info["master"]
    tell(tree, "close-pooled")
    tree.expect("closed-pooled")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", info["pooled"]))  # EADDRINUSE if a child still listens on it
    with pytest.raises(ConnectionRefusedError):
        ask_pid(("127.0.0.1", info["pooled"]))
    stop_cleanly(tree)


def test_sigkill_of_the_master_ends_every_pool_within_seconds_even_with_a_request_in_flight(
        start: Callable[..., Tree], unix_dir: str) -> None:
    tree, info = start_shared(start, unix_dir, "--graceful-timeout", "30")
    slow = SlowRequest(("127.0.0.1", info["a"]))
    try:
        stats = shared_stats(tree)
        everyone = set(tree.learned)
        assert slow.pid in everyone and len(everyone) >= 6  # 2 arbiters, 4 workers (and the standbys)
        tree.signal(signal.SIGKILL)
        assert tree.wait(10) == -signal.SIGKILL
        wait_for(lambda: all(exited(pid) for pid in everyone), timeout=5,
                 message=lambda: f"left: { {pid: process_state(pid) for pid in everyone if not exited(pid)} }")
        assert not_served(slow.sock)
    finally:
        slow.close()
    tree.lines.wait_eof(10)
    log = Path(info["log"]).read_text()
    assert log.count(f"master {info['master']} is gone") == len(stats), log


# ---------------------------------------------------------------- a lost arbiter, crash loops

def test_a_killed_arbiter_is_replaced_while_the_other_servers_keep_answering(
        start: Callable[..., Tree], unix_dir: str) -> None:
    tree, info = start_shared(start, unix_dir)
    before = shared_stats(tree)
    victim, old_workers = before["a"]["arbiter"], set(before["a"]["pids"])
    answered: list[int] = []
    failures: list[str] = []
    enough = threading.Event()

    def load() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            for _ in range(100000):  # bounded even if the test never sets `enough`
                if enough.is_set():
                    return
                try:
                    assert ask_pid(("127.0.0.1", info["pooled"])) == info["master"]
                    udp.sendto(b"pid", ("127.0.0.1", info["udp"]))
                    assert int(udp.recvfrom(1024)[0].split()[0]) == info["master"]
                except (OSError, AssertionError, ValueError) as exc:
                    failures.append(repr(exc))
                    return
                answered.append(1)

    client = threading.Thread(target=load, name="other-servers-load")
    client.start()
    try:
        wait_for(lambda: len(answered) >= 20 or failures, timeout=15, message="the other servers do not answer")
        os.kill(victim, signal.SIGKILL)

        def replaced() -> dict[str, Any]:
            stats = shared_stats(tree)
            pool = stats["a"]
            ok = (pool["arbiter"] not in (None, victim) and len(pool["ready"]) == 2
                  and not set(pool["pids"]) & old_workers)
            return stats if ok else {}

        after = wait_for(replaced, timeout=10, interval=0.02, message="the killed arbiter was not replaced")
        wait_for(lambda: gone(victim), message=f"the dead arbiter {victim} was not reaped")
        wait_for(lambda: all(exited(pid) for pid in old_workers), message="the dead arbiter's workers still run")
        assert pids_of_every_worker(("127.0.0.1", info["a"]), 2) == set(after["a"]["ready"])
        mark = len(answered)
        wait_for(lambda: len(answered) >= mark + 20 or failures, timeout=15, message="no answers after")
    finally:
        enough.set()
        client.join(30)
    assert not client.is_alive()
    assert failures == []
    assert after["b"]["arbiter"] == before["b"]["arbiter"] and after["b"]["pids"] == before["b"]["pids"]
    stopping = time.monotonic()
    stop_cleanly(tree)
    assert time.monotonic() - stopping < 15, "the new arbiter's workers did not stop at once (graceful_timeout is 30 s)"
    log = tree.stderr()
    assert re.search(rf"arbiter {victim} died \(killed by SIGKILL\); arbiter {after['a']['arbiter']} took over",
                     log), log


def test_arbiters_that_die_right_after_booting_are_replaced_with_growing_delays(
        start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "1")
    port, _ = tree.ready()
    arbiter = tree.stats()["arbiter"]
    waited = []
    for _ in range(3):
        os.kill(arbiter, signal.SIGKILL)
        killed = time.monotonic()
        stats = tree.wait_stats(lambda s: s["arbiter"] not in (None, arbiter) and len(s["ready"]) == 1,
                                "the arbiter was not replaced", timeout=15)
        waited.append(time.monotonic() - killed)
        arbiter = stats["arbiter"]
    assert ask_pid(("127.0.0.1", int(port))) == stats["ready"][0]
    stop_cleanly(tree)
    delays = [float(d) for d in re.findall(r"took over from arbiter \d+ .*; starting workers in ([\d.]+)s",
                                           tree.stderr())]
    assert len(delays) == 3 and 0 < delays[0] < delays[1] < delays[2], tree.stderr()
    assert all(took >= delay for took, delay in zip(waited, delays)), (waited, delays)


def test_workers_that_crash_right_after_starting_are_respawned_with_growing_delays(
        start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "1", "--crash-after-start")
    started = [float(tree.expect("worker-started").split()[1]) for _ in range(5)]
    gaps = [later - earlier for earlier, later in zip(started, started[1:])]
    # The delays double from CRASH_BACKOFF_MIN: 0.1, 0.2, 0.4, 0.8 s (plus each fork's own time).
    assert gaps[0] >= 0.09, gaps
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[3] >= 0.75, gaps
    stop_cleanly(tree)


def test_an_arbiter_that_dies_before_its_workers_are_ready_is_a_boot_failure(
        start: Callable[..., Tree], unix_dir: str) -> None:
    gate_path = os.path.join(unix_dir, "gate.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gate:
        gate.settimeout(15)
        gate.bind(gate_path)
        gate.listen(4)
        tree = start(SERVER, "--workers", "2", "--boot-gate", gate_path)
        waiting = [gate.accept()[0] for _ in range(2)]  # both workers are booting, none is ready
        try:
            (arbiter,) = children_of(tree.proc.pid)
            tree.learn(arbiter, *children_of(arbiter))
            os.kill(arbiter, signal.SIGKILL)
            report = json.loads(tree.expect("error", timeout=20))
        finally:
            for conn in waiting:
                conn.close()  # the workers' on_worker_start fails: they exit
    assert report["type"] == "WorkerBootError", report
    assert f"arbiter {arbiter} died before its first workers were ready; not replacing it" in report["error"]
    assert tree.wait(20) == 2
    assert report["stats"]["arbiter"] in (None, arbiter)  # nobody took over
    tree.lines.wait_eof(10)


def test_a_dead_standby_is_replaced_and_the_new_one_takes_over_later(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "1")
    port, _ = tree.ready()
    stats = tree.stats()
    arbiter = stats["arbiter"]

    def standbys() -> set[int]:
        return children_of(arbiter) - set(tree.stats()["pids"])

    (first,) = standbys()
    os.kill(first, signal.SIGKILL)
    (second,) = wait_for(lambda: (found := standbys()) and first not in found and found,
                         message="the arbiter forked no new standby")
    tree.learn(first, second)
    wait_for(lambda: gone(first), message=f"the dead standby {first} was not reaped")
    os.kill(arbiter, signal.SIGKILL)
    after = tree.wait_stats(lambda s: s["arbiter"] == second and len(s["ready"]) == 1,
                            "the new standby did not take over")
    assert ask_pid(("127.0.0.1", int(port))) == after["ready"][0]
    stop_cleanly(tree)
    log = tree.stderr()
    assert f"standby {first} exited (killed by SIGKILL); forking a new one" in log
    assert f"arbiter {second} took over from arbiter {arbiter}" in log


def test_the_control_channel_skips_a_line_a_dead_sender_left_half_written() -> None:
    from reactor.prefork._messages import Command, LineChannel, command

    left, right = socket.socketpair()
    with left, right:
        right.settimeout(5)
        sender, receiver = LineChannel(left), LineChannel(right)
        left.sendall(b'{"event": "spaw')  # the dead arbiter's last words
        assert receiver.receive() == []
        assert sender.send(command(Command.TARGET, workers=3), resync=True)
        assert receiver.receive() == [{"cmd": "target", "workers": 3}]
        left.sendall(b"[1, 2]\nnot json\n")
        assert receiver.receive() == []
        left.close()
        assert receiver.receive() is None


def test_master_and_arbiter_killed_together_leave_no_process(start: Callable[..., Tree]) -> None:
    tree = start(SERVER, "--workers", "2")
    tree.ready()
    stats = tree.stats()
    arbiter = stats["arbiter"]
    (standby,) = children_of(arbiter) - set(stats["pids"])
    everyone = {arbiter, standby, *stats["pids"]}
    tree.learn(*everyone)
    os.kill(arbiter, signal.SIGSTOP)  # so that it dies after the master, not before
    tree.signal(signal.SIGKILL)
    assert tree.wait(10) == -signal.SIGKILL
    os.kill(arbiter, signal.SIGKILL)
    wait_for(lambda: all(exited(pid) for pid in everyone), timeout=5,
             message=lambda: f"left: { {pid: process_state(pid) for pid in everyone if not exited(pid)} }")
    tree.lines.wait_eof(10)
    assert "took over" not in tree.stderr()


# ---------------------------------------------------------------- server_stats: one shape, summed

STATS_SERVER = SCRIPTS / "stats_server.py"
#: The keys a Prefork adds to the server's own stats.
POOL_KEYS = {"workers", "pids", "ready", "arbiter", "spawned"}
#: The counters and gauges the stats tests cause, or must find untouched.
KNOWN_COUNTERS = ("requests", "dropped", "replies_lost", "exhausted", "io_timeouts", "admitted", "refused_by_rule",
                  "refused_by_limit", "proxy_errors", "tls_failures", "timeouts", "closed_early", "open", "admitting")


def server_stats(tree: Tree) -> dict[str, Any]:
    """``Reactor.server_stats(server)`` in the script's master, asked over stdin."""
    assert tree.proc.stdin is not None
    tree.proc.stdin.write("stats\n")
    tree.proc.stdin.flush()
    stats: dict[str, Any] = json.loads(tree.expect("stats"))
    tree.learn(*stats.get("pids", ()), stats.get("arbiter") or 0)
    return stats


def refused_from(address: Address, source: str) -> bool:
    """True if a connection from the loopback address ``source`` ends unserved."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.bind((source, 0))
        sock.connect(address)
        try:
            sock.sendall(b"pid\n")
        except ConnectionError:
            return True
        return not_served(sock)


def wait_counts(tree: Tree, expected: dict[str, int], timeout: float = 10) -> dict[str, Any]:
    """Ask for ``server_stats`` until the keys of ``expected`` have exactly those values; return the stats."""
    last: list[dict[str, Any]] = []

    def check() -> dict[str, Any]:
        stats = server_stats(tree)
        last[:] = [stats]
        return stats if {key: stats.get(key) for key in expected} == expected else {}

    return wait_for(check, timeout=timeout, interval=0.05,
                    message=lambda: f"server_stats never reached {expected}; last: {last}")


def stop_by_eof(tree: Tree) -> None:
    """Close the script's stdin (it stops and closes its reactor), then ``exits_cleanly``."""
    assert tree.proc.stdin is not None
    tree.proc.stdin.close()
    exits_cleanly(tree)


def test_server_stats_of_a_prefork_pool_sum_every_workers_counters(start: Callable[..., Tree]) -> None:
    tree = start(STATS_SERVER, "--admission", "--workers", "2")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    served = pids_of_every_worker(address, 2)  # both workers count
    for _ in range(4):
        served.add(ask_pid(address))
    for _ in range(3):
        assert refused_from(address, "127.0.0.2")  # denied by the rule
    expected = dict.fromkeys(KNOWN_COUNTERS, 0)
    expected.update(requests=6 + 3, admitted=6, refused_by_rule=3)
    stats = wait_counts(tree, expected)
    assert served <= set(stats["pids"]) and len(stats["pids"]) == 2
    assert POOL_KEYS <= set(stats)
    stop_by_eof(tree)


def test_server_stats_never_go_backwards_when_a_killed_worker_is_replaced(start: Callable[..., Tree]) -> None:
    tree = start(STATS_SERVER, "--admission", "--workers", "2")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    first = pids_of_every_worker(address, 2)
    for _ in range(3):
        ask_pid(address)
    assert refused_from(address, "127.0.0.2")
    counts = {"requests": 6, "admitted": 5, "refused_by_rule": 1, "open": 0}
    wait_counts(tree, counts)  # every count reported, so the victim's are all in the arbiter's sum
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    seen: list[dict[str, Any]] = []

    def replaced() -> bool:
        stats = server_stats(tree)
        seen.append(stats)
        return victim not in stats["pids"] and len(stats["ready"]) == 2

    wait_for(replaced, timeout=REPLACEMENT_BOUND + 5, interval=0.02,
             message=lambda: f"the killed worker was not replaced; last stats: {seen[-1:]}")
    for stats in seen:
        assert {key: stats[key] for key in counts} == counts, f"the counts changed when {victim} died: {stats}"
    for _ in range(2):
        ask_pid(address)
    wait_counts(tree, {"requests": 8, "admitted": 7, "refused_by_rule": 1})
    stop_by_eof(tree)
    assert f"worker {victim} died (killed by SIGKILL)" in tree.stderr()


def test_server_stats_survive_the_arbiter_when_its_standby_takes_over(start: Callable[..., Tree]) -> None:
    tree = start(STATS_SERVER, "--admission", "--workers", "2")
    port, _ = tree.ready()
    address = ("127.0.0.1", int(port))
    for _ in range(3):
        ask_pid(address)
    assert refused_from(address, "127.0.0.2")
    counts = {"requests": 4, "admitted": 3, "refused_by_rule": 1, "open": 0}
    before = wait_counts(tree, counts)
    arbiter = before["arbiter"]
    os.kill(arbiter, signal.SIGKILL)
    seen: list[dict[str, Any]] = []

    def taken_over() -> bool:
        stats = server_stats(tree)
        seen.append(stats)
        return stats["arbiter"] != arbiter and len(stats["ready"]) == 2

    wait_for(taken_over, timeout=15, interval=0.02,
             message=lambda: f"no standby took over with new workers; last stats: {seen[-1:]}")
    for stats in seen:
        assert {key: stats[key] for key in counts} == counts, f"the counts changed when {arbiter} died: {stats}"
    ask_pid(address)
    wait_counts(tree, {"requests": 5, "admitted": 4, "refused_by_rule": 1})
    stop_by_eof(tree)


@pytest.mark.parametrize("admission", [False, True], ids=["plain", "admission"])
def test_inline_thread_pool_and_prefork_report_the_same_keys(start: Callable[..., Tree], admission: bool) -> None:
    shapes = {}
    for strategy in ("inline", "threadpool", "prefork"):
        tree = start(STATS_SERVER, "--strategy", strategy, *(["--admission"] if admission else []))
        tree.ready()
        stats = server_stats(tree)
        if strategy == "prefork":
            assert POOL_KEYS <= set(stats)
            stats = {key: value for key, value in stats.items() if key not in POOL_KEYS}
        assert set(stats.values()) == {0}, f"{strategy}: nothing happened yet, every key is zero: {stats}"
        shapes[strategy] = set(stats)
        stop_by_eof(tree)
    assert shapes["inline"] == shapes["threadpool"] == shapes["prefork"], shapes
    assert set(KNOWN_COUNTERS[:5]) <= shapes["inline"]
    assert (set(KNOWN_COUNTERS) <= shapes["inline"]) is admission


RELOAD_BOOT_FAILURE_SCRIPT = r"""
import json, os, signal, sys
from reactor import Prefork, Reactor, socketserver

flag = sys.argv[1]

def on_worker_start():
    try:
        os.rename(flag, flag + ".used")  # exactly one worker gets the flag, and fails to boot
    except FileNotFoundError:
        return
    raise RuntimeError("the new code does not start")

class Pid(socketserver.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(f"{os.getpid()}\n".encode())

reactor = Reactor()
server = socketserver.TCPServer(("127.0.0.1", 0), Pid)
pool = Prefork(2, on_worker_start=on_worker_start)
reactor.add_server(server, pool)
reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
reactor.add_signal_handler(signal.SIGHUP, pool.reload)

def report():
    reactor.call_later(0.05, report)
    stats = pool.stats()
    print(json.dumps({"ready": len(stats["ready"]), "pids": stats["pids"], "aborted": pool.reloads_aborted}),
          flush=True)

print(json.dumps(server.server_address), flush=True)
reactor.call_soon(report)
reactor.serve_forever()
reactor.close()
server.server_close()
"""


def test_a_reload_whose_new_worker_fails_to_boot_is_aborted_and_the_old_workers_serve_on(tmp_path: Path) -> None:
    import json

    flag = tmp_path / "fail-next-boot"
    with spawn_python(RELOAD_BOOT_FAILURE_SCRIPT, str(flag)) as proc:
        assert proc.stdout is not None
        address = tuple(json.loads(proc.stdout.readline()))
        try:
            def state() -> dict[str, int]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                assert line, "the pool process ended"
                return json.loads(line)

            while state()["ready"] < 2:
                pass
            flag.write_text("")
            proc.send_signal(signal.SIGHUP)
            while state()["aborted"] < 1:
                pass
            while state()["ready"] < 2:  # filled up again
                pass
            with socket.create_connection(address, timeout=10) as client:
                client.sendall(b"who\n")
                assert client.makefile("rb").readline().strip().isdigit()  # still serving
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""


def test_a_replacement_that_fails_to_boot_while_others_serve_is_retried_not_fatal(tmp_path: Path) -> None:
    import json

    flag = tmp_path / "fail-next-boot"
    with spawn_python(RELOAD_BOOT_FAILURE_SCRIPT, str(flag)) as proc:
        assert proc.stdout is not None
        address = tuple(json.loads(proc.stdout.readline()))
        try:
            def state() -> dict[str, Any]:
                line = proc.stdout.readline()  # type: ignore[union-attr]
                assert line, "the pool process ended"
                return json.loads(line)

            while (current := state())["ready"] < 2:
                pass
            flag.write_text("")
            os.kill(current["pids"][0], signal.SIGKILL)  # its replacement fails to boot once
            while (current := state())["ready"] < 2 or flag.exists():
                pass
            assert (tmp_path / "fail-next-boot.used").exists() and current["aborted"] == 0
            with socket.create_connection(address, timeout=10) as client:
                client.sendall(b"who\n")
                assert int(client.makefile("rb").readline()) in current["pids"]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        assert "failed to boot (see its error above) while 1 serve; retrying" in (proc.stderr.read() or "")
