"""The dispatch-strategy examples: thread_pool.py, prefork.py, mixed.py and line_protocol.py.

Each runs in a fresh interpreter: once with ``--once`` (its own clients; the
output is checked line by line), and once serving, talked to by a real client
from here, then stopped with a signal (exit 0, a ``stopped`` line, no socket
file and no process left behind).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from support import REPO_ROOT, run_python, spawn_python, wait_for

EXAMPLES = REPO_ROOT / "examples"
THREAD_POOL = EXAMPLES / "thread_pool.py"
PREFORK = EXAMPLES / "prefork.py"
MIXED = EXAMPLES / "mixed.py"
LINE_PROTOCOL = EXAMPLES / "line_protocol.py"

CLIENT_TIMEOUT = 5.0
TCP4_LISTENING = r"listening on tcp4 127\.0\.0\.1:(\d+)"

needs_fork = pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc"),
                                reason="pre-forking needs os.fork; process checks read /proc")
STOP_SIGNALS = pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])


# ---------------------------------------------------------------- helpers


def run_once(example: Path, *args: str) -> list[str]:
    """Run ``example --once``; check it exited 0 with nothing on stderr; return its stdout lines."""
    result = run_python(example, "--once", *args, timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stderr == ""
    return result.stdout.splitlines()


def match_lines(lines: list[str], patterns: list[str]) -> list[re.Match[str]]:
    """Each line fully matches its pattern, and there are as many lines as patterns."""
    matches = []
    for number, (line, pattern) in enumerate(zip(lines, patterns), 1):
        match = re.fullmatch(pattern, line)
        assert match, f"line {number}: {line!r} does not match {pattern!r}\nall lines:\n" + "\n".join(lines)
        matches.append(match)
    assert len(lines) == len(patterns), "\n".join(lines)
    return matches


def pids(text: str) -> list[int]:
    return [int(word) for word in text.split()]


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (scans /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
            found.add(int(entry))
    return found


def assert_all_gone(learned: set[int]) -> None:
    wait_for(lambda: not any(exists(pid) for pid in learned), timeout=5,
             message=lambda: f"processes left behind: {sorted(pid for pid in learned if exists(pid))}")


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def stream_exchange(family: int, address: Any, *lines: bytes) -> bytes:
    """Connect, send ``lines``, return the first line of the answer."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.connect(address)
        for line in lines:
            sock.sendall(line)
        return read_line(sock)


def datagram_exchange(address: Any, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(CLIENT_TIMEOUT)
        sock.sendto(data, address)
        return sock.recvfrom(65535)[0]


class Serving:
    """An example serving in a fresh interpreter; stdout read line by line with deadlines."""

    def __init__(self, script: Path, proc: subprocess.Popen[str], stderr: IO[str]) -> None:
        self.script = script
        self.proc = proc
        self._stderr = stderr
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._buffer = b""
        self._eof = False
        self.learned: set[int] = set()  # pids of the example's processes, for the checks and the cleanup

    def readline(self, timeout: float) -> str | None:
        """The next stdout line, or None at EOF (every process holding the pipe exited)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if self._eof:
                return None
            readable, _, _ = select.select([self._fd], [], [], max(deadline - time.monotonic(), 0))
            if not readable:
                raise AssertionError(f"no line from {self.script.name} within {timeout:g}s\n"
                                     f"stderr:\n{self.stderr()}")
            data = os.read(self._fd, 65536)
            self._buffer += data
            self._eof = not data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Skip stdout lines until one fully matches ``pattern``; return the match."""
        deadline = time.monotonic() + timeout
        skipped: list[str] = []
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0))
            if line is None:
                raise AssertionError(f"stdout closed before a line matching {pattern!r}; skipped {skipped}\n"
                                     f"stderr:\n{self.stderr()}")
            match = re.fullmatch(pattern, line)
            if match:
                return match
            skipped.append(line)

    def stop(self, signum: int, timeout: float = 30) -> tuple[int, list[str]]:
        """Send ``signum``; return the exit status and the lines printed until EOF."""
        self.proc.send_signal(signum)
        rest = []
        deadline = time.monotonic() + timeout
        while (line := self.readline(max(deadline - time.monotonic(), 0))) is not None:
            rest.append(line)
        return self.proc.wait(max(deadline - time.monotonic(), 1)), rest

    def stderr(self) -> str:
        self._stderr.flush()
        return Path(self._stderr.name).read_text(errors="replace")

    def close(self) -> None:
        """End whatever is left: SIGTERM then SIGKILL the example; SIGKILL our leftovers by pid."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            for pid in self.learned:
                with contextlib.suppress(OSError):
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        ours = os.fsencode(self.script) in fh.read()
                    if ours:
                        os.kill(pid, signal.SIGKILL)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self._stderr.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serving]]:
    """``serve(example, *args)`` starts the example serving; it is ended afterwards whatever happened."""
    started: list[Serving] = []

    def start(script: Path, *args: str) -> Serving:
        stderr = open(tmp_path / f"stderr-{len(started)}.log", "w+")  # a file: a full pipe would block
        try:
            proc = spawn_python(script, *args, stdin=subprocess.DEVNULL, stderr=stderr)
        except BaseException:
            stderr.close()
            raise
        started.append(Serving(script, proc, stderr))
        return started[-1]

    try:
        yield start
    finally:
        for serving in started:
            serving.close()


def stopped_cleanly(serving: Serving, signum: int, last_line: str) -> list[str]:
    """Stop ``serving`` with ``signum``: exit 0, nothing on stderr, ``last_line`` last; return what it printed."""
    status, rest = serving.stop(signum)
    assert status == 0, f"exit status {status}; printed {rest}\nstderr:\n{serving.stderr()}"
    assert serving.stderr() == ""
    assert rest and rest[-1] == last_line, rest
    return rest


# ---------------------------------------------------------------- thread_pool.py


def test_thread_pool_once_shows_a_full_pool_then_serves_every_client_on_four_threads() -> None:
    lines = run_once(THREAD_POOL)
    worker = r"pool-worker-[1-4]"
    matches = match_lines(lines, [
        TCP4_LISTENING,
        "12 clients connected; each sent 'job N' and holds back its 'go' line",
        re.escape("pool full: pool.stats() = {'threads': 4, 'idle': 0, 'running': 4, 'queued': 2, 'done': 0}"),
        re.escape("taken: 6 (4 running, 2 queued); waiting in the kernel backlog: 6"),
        "all 12 clients sent 'go'",
        *[rf"client {n}: 'job {n} done by ({worker})'" for n in range(1, 13)],
        re.escape("pool idle: pool.stats() = {'threads': 4, 'idle': 4, 'running': 0, 'queued': 0, 'done': 12}"),
        "worker threads seen: pool-worker-1, pool-worker-2, pool-worker-3, pool-worker-4",
        re.escape("ok: 12 clients served by 4 worker threads (max_workers=4, max_pending=2)"),
    ])
    served_by = [match.group(1) for match in matches[5:17]]
    # Jobs 1-4 were running at the same time when the pool was full: four different threads.
    assert len(set(served_by[:4])) == 4, served_by


@STOP_SIGNALS
def test_thread_pool_serves_a_client_until_a_signal(serve: Callable[..., Serving], signum: int) -> None:
    serving = serve(THREAD_POOL)
    port = int(serving.expect(TCP4_LISTENING).group(1))
    serving.expect(r"serving with ThreadPool\(max_workers=4, max_pending=2\) until Ctrl-C or SIGTERM")
    answer = stream_exchange(socket.AF_INET, ("127.0.0.1", port), b"job 7\n", b"go\n")
    assert answer == b"job 7 done by pool-worker-1\n"
    stopped_cleanly(serving, signum, f"stopped by {signal.Signals(signum).name}")


def test_thread_pool_handler_answers_only_after_the_second_line(serve: Callable[..., Serving]) -> None:
    serving = serve(THREAD_POOL)
    port = int(serving.expect(TCP4_LISTENING).group(1))
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(b"job 1\n")
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # the handler is still waiting for "go"
        sock.settimeout(CLIENT_TIMEOUT)
        sock.sendall(b"go\n")
        assert read_line(sock) == b"job 1 done by pool-worker-1\n"
    stopped_cleanly(serving, signal.SIGTERM, "stopped by SIGTERM")


# ---------------------------------------------------------------- prefork.py


def check_prefork_once(lines: list[str], listening: str, *, recycled: bool) -> tuple[int, list[int], list[int]]:
    """Check prefork.py --once output; return the master pid, the first workers and the pids that served."""
    matches = match_lines(lines, [
        listening,
        r"master (\d+), workers (\d+ \d+)",
        *[rf"client {n}: sent b'hello {n}\\n', received b'served by worker (\d+)\\n'" for n in range(1, 11)],
        r"Prefork\.worker_pids: \[([\d, ]*)\]",
        r"Prefork\.stats\(\), the pool's keys: \{'workers': 2, 'pids': \[([\d, ]*)\], 'ready': \[([\d, ]*)\], "
        r"'arbiter': (\d+), 'spawned': (\d+)\}",
        r"10 requests served by (\d+) worker processes: (.*)",
        r"server_stats\(server\)\['requests'\], summed over the workers: 10",
        "stopped: the workers and the arbiter have exited",
    ])
    master = int(matches[1].group(1))
    first_workers = pids(matches[1].group(2))
    served = [int(match.group(1)) for match in matches[2:12]]
    assert master not in served
    last_workers = pids(matches[12].group(1).replace(",", ""))
    assert pids(matches[13].group(1).replace(",", "")) == last_workers
    counts = {pid: served.count(pid) for pid in sorted(set(served))}
    assert matches[14].group(1) == str(len(counts))
    assert matches[14].group(2) == ", ".join(f"{pid} ({count})" for pid, count in counts.items())
    if not recycled:
        assert set(served) <= set(first_workers)
        assert last_workers == first_workers
        assert pids(matches[13].group(2).replace(",", "")) == first_workers  # ready
        assert matches[13].group(4) == "2"  # spawned
    learned = {master, int(matches[13].group(3)), *first_workers, *last_workers, *served}
    assert_all_gone(learned - {master})
    return master, first_workers, served


@needs_fork
def test_prefork_once_every_answer_names_a_worker_never_the_master() -> None:
    check_prefork_once(run_once(PREFORK), TCP4_LISTENING, recycled=False)


@needs_fork
def test_prefork_once_max_requests_recycles_workers() -> None:
    _, first_workers, served = check_prefork_once(run_once(PREFORK, "--max-requests", "3"), TCP4_LISTENING,
                                                  recycled=True)
    assert max(served.count(pid) for pid in served) <= 3
    assert len(set(served)) >= 4  # 10 requests, at most 3 per worker
    assert set(served) - set(first_workers), "no replacement worker served a request"


@needs_fork
def test_prefork_once_on_a_unix_socket_removes_the_file(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "pf.sock")
    check_prefork_once(run_once(PREFORK, "--path", path), "listening on unix " + re.escape(path),
                       recycled=False)
    assert not os.path.exists(path)


def start_prefork(serve: Callable[..., Serving], *args: str) -> tuple[Serving, Any, int, list[int]]:
    """Start prefork.py serving; return it, its address, the master pid and the worker pids (all learned)."""
    serving = serve(PREFORK, *args)
    listening = serving.expect(r"listening on (tcp4 127\.0\.0\.1:(\d+)|unix (\S+))")
    address = ("127.0.0.1", int(listening.group(2))) if listening.group(2) else listening.group(3)
    started = serving.expect(r"master (\d+), workers ([\d ]+)")
    master, workers = int(started.group(1)), pids(started.group(2))
    arbiters = children_of(master)
    assert len(arbiters) == 1, arbiters
    arbiter = arbiters.pop()
    standbys = children_of(arbiter) - set(workers)
    assert len(standbys) == 1, (workers, standbys)  # the arbiter's children: the printed pids and its standby
    serving.learned.update(children_of(master), workers, standbys)
    return serving, address, master, workers


def ask_prefork(address: Any) -> int:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    answer = stream_exchange(family, address, b"hi\n")
    match = re.fullmatch(rb"served by worker (\d+)\n", answer)
    assert match, answer
    return int(match.group(1))


def workers_now(serving: Serving, predicate: Callable[[list[int]], bool], timeout: float = 20) -> list[int]:
    """Wait for a ``workers now <pids>`` line whose pids satisfy ``predicate``; learn every pid seen."""
    deadline = time.monotonic() + timeout
    while True:
        workers = pids(serving.expect(r"workers now ([\d ]+)", max(deadline - time.monotonic(), 0)).group(1))
        serving.learned.update(workers)
        if predicate(workers):
            return workers


@needs_fork
@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", ["tcp", "unix"])
@STOP_SIGNALS
def test_prefork_serves_until_a_signal_and_leaves_no_process(serve: Callable[..., Serving], unix_dir: str,
                                                            family: str, signum: int) -> None:
    path = os.path.join(unix_dir, "pf.sock")
    serving, address, master, workers = start_prefork(serve, *(["--path", path] if family == "unix" else []))
    if family == "unix":
        assert address == path and os.path.exists(path)
    assert ask_prefork(address) in workers
    stopped_cleanly(serving, signum, "stopped: the workers and the arbiter have exited")
    assert_all_gone(serving.learned)
    assert not os.path.exists(path)


@needs_fork
@pytest.mark.timeout(60)
def test_prefork_sigttin_adds_a_worker_and_sigttou_removes_the_oldest(serve: Callable[..., Serving]) -> None:
    serving, address, master, workers = start_prefork(serve)
    serving.proc.send_signal(signal.SIGTTIN)
    more = workers_now(serving, lambda now: len(now) == 3)
    assert set(workers) < set(more)
    serving.proc.send_signal(signal.SIGTTOU)
    fewer = workers_now(serving, lambda now: len(now) == 2)
    added = set(more) - set(workers)
    assert added < set(fewer) < set(more), (workers, more, fewer)  # one of the first two retired
    assert ask_prefork(address) in fewer
    stopped_cleanly(serving, signal.SIGTERM, "stopped: the workers and the arbiter have exited")
    assert_all_gone(serving.learned)


@needs_fork
@pytest.mark.timeout(60)
def test_prefork_sighup_replaces_every_worker(serve: Callable[..., Serving]) -> None:
    serving, address, master, workers = start_prefork(serve, "--workers", "3")
    assert len(workers) == 3
    serving.proc.send_signal(signal.SIGHUP)
    new = workers_now(serving, lambda now: len(now) == 3 and not set(now) & set(workers))
    assert not any(exists(pid) for pid in workers)  # the master heard they exited: they have
    assert ask_prefork(address) in new
    stopped_cleanly(serving, signal.SIGTERM, "stopped: the workers and the arbiter have exited")
    assert_all_gone(serving.learned)


# ---------------------------------------------------------------- mixed.py


@needs_fork
def test_mixed_once_talks_to_three_strategies_and_prints_the_admin_answers() -> None:
    lines = run_once(MIXED)
    matches = match_lines(lines, [
        TCP4_LISTENING + re.escape("  (echo, Prefork(workers=2, threads=0, max_requests=0))"),
        r"listening on udp4 127\.0\.0\.1:\d+" + re.escape("  (echo, ThreadPool(max_workers=4, max_pending=4))"),
        r"listening on unix (/tmp/rx-mixed-\w+)/admin\.sock  \(admin, Inline\)",
        r"master (\d+), workers (\d+ \d+)",
        r"tcp echo \(Prefork\): sent b'hello prefork\\n', received b'worker (\d+) echoes: hello prefork\\n'",
        re.escape("udp echo (ThreadPool): sent b'hello pool', received b'udp-pool-worker-1 echoes: hello pool'"),
        re.escape(r"admin (Inline): sent b'stats\n', received b'requests tcp-echo=1 udp-echo=1 admin=1; "
                  r"pool threads=1 idle=1 running=0 queued=0 done=1\n'"),
        r"admin \(Inline\): sent b'workers\\n', received b'workers (\d+ \d+)\\n'",
        re.escape("admin (Inline): sent b'restart\\n', received b\"error: unknown command 'restart'\\n\""),
        "ok: three servers, three dispatch strategies, one reactor",
        "stopped",
    ])
    temp_dir = matches[2].group(1)
    master, workers = int(matches[3].group(1)), pids(matches[3].group(2))
    assert int(matches[4].group(1)) in workers
    assert master not in workers
    assert pids(matches[7].group(1)) == workers
    assert not os.path.exists(temp_dir)
    assert_all_gone(set(workers))


def start_mixed(serve: Callable[..., Serving], *args: str) -> tuple[Serving, Any, Any, str, list[int]]:
    """Start mixed.py serving; return it, the TCP, UDP and admin addresses, and the worker pids (learned)."""
    serving = serve(MIXED, *args)
    tcp = ("127.0.0.1", int(serving.expect(TCP4_LISTENING + r"  \(echo, Prefork\(.*\)\)").group(1)))
    udp = ("127.0.0.1", int(serving.expect(r"listening on udp4 127\.0\.0\.1:(\d+)  \(echo, ThreadPool\(.*\)\)")
                        .group(1)))
    admin = serving.expect(r"listening on unix (\S+)  \(admin, Inline\)").group(1)
    started = serving.expect(r"master (\d+), workers ([\d ]+)")
    master, workers = int(started.group(1)), pids(started.group(2))
    serving.learned.update(children_of(master), workers)
    return serving, tcp, udp, admin, workers


def ask_admin(path: str, command: bytes) -> bytes:
    return stream_exchange(socket.AF_UNIX, path, command)


@needs_fork
@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["--path", "default temp dir"])
def test_mixed_serves_until_sigterm_and_leaves_no_process_or_socket_file(
        serve: Callable[..., Serving], unix_dir: str, where: str) -> None:
    path = os.path.join(unix_dir, "admin.sock")
    serving, tcp, udp, admin, workers = start_mixed(serve, *(["--path", path] if where == "--path" else []))
    if where == "--path":
        assert admin == path
    assert os.path.exists(admin)

    served_by, _, echoed = stream_exchange(socket.AF_INET, tcp, b"over tcp\n").partition(b" echoes: ")
    assert echoed == b"over tcp\n"
    assert served_by.startswith(b"worker ") and int(served_by[7:]) in workers, served_by
    assert datagram_exchange(udp, b"over udp") == b"udp-pool-worker-1 echoes: over udp"
    assert ask_admin(admin, b"workers\n") == b"workers " + " ".join(map(str, workers)).encode() + b"\n"
    stats = ask_admin(admin, b"stats\n")
    assert re.fullmatch(rb"requests tcp-echo=1 udp-echo=1 admin=2; pool threads=1 idle=[01] running=[01] "
                        rb"queued=0 done=[01]\n", stats), stats
    assert ask_admin(admin, b"frobnicate\n") == b"error: unknown command 'frobnicate'\n"

    stopped_cleanly(serving, signal.SIGTERM, "stopped")
    assert not os.path.exists(admin)
    if where != "--path":
        assert not os.path.exists(os.path.dirname(admin))
    assert_all_gone(serving.learned)


@needs_fork
@pytest.mark.timeout(60)
def test_mixed_admin_counts_each_servers_requests(serve: Callable[..., Serving]) -> None:
    serving, tcp, udp, admin, workers = start_mixed(serve)
    for n in range(3):
        assert stream_exchange(socket.AF_INET, tcp, b"%d\n" % n).endswith(b" echoes: %d\n" % n)
    for n in range(2):
        assert datagram_exchange(udp, b"%d" % n).endswith(b" echoes: %d" % n)
    stats = ask_admin(admin, b"stats\n")
    assert stats.startswith(b"requests tcp-echo=3 udp-echo=2 admin=1; pool "), stats
    stopped_cleanly(serving, signal.SIGTERM, "stopped")
    assert_all_gone(serving.learned)


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
    return inodes


def udp_inode(port: int) -> int:
    """The inode of the UDP socket bound to 127.0.0.1:``port`` (from /proc/net/udp)."""
    with open("/proc/net/udp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}":
                return int(fields[9])
    raise AssertionError(f"no UDP socket on 127.0.0.1:{port}")


def unix_inode(path: str) -> int:
    """The inode of the Unix socket bound to ``path`` (from /proc/net/unix)."""
    with open("/proc/net/unix") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if len(fields) == 8 and fields[7] == path:
                return int(fields[6])
    raise AssertionError(f"no Unix socket bound to {path}")


@needs_fork
@pytest.mark.skipif(not os.path.exists("/proc/net/unix"), reason="reads /proc/net/udp and /proc/net/unix")
def test_mixed_workers_do_not_inherit_the_other_servers_sockets(serve: Callable[..., Serving]) -> None:
    serving, tcp, udp, admin, workers = start_mixed(serve)
    master = serving.proc.pid
    others = {udp_inode(udp[1]), unix_inode(admin)}
    assert others <= socket_inodes(master)
    for worker in workers:
        assert not others & socket_inodes(worker), f"worker {worker} holds the UDP or the admin socket"
    stopped_cleanly(serving, signal.SIGTERM, "stopped")
    assert_all_gone(serving.learned)


# ---------------------------------------------------------------- line_protocol.py


LINE_PROTOCOL_TRANSCRIPT = """\
[1] connected; says nothing (its handler waits on a pool thread meanwhile)
[2] > SET color blue
[2] < OK
[2] > GET color
[2] < VALUE blue
[2] > SET motto hello, world
[2] < OK
[2] > GET motto
[2] < VALUE hello, world
[2] > DEL color
[2] < OK
[2] > GET color
[2] < NOT_FOUND
[2] > DEL color
[2] < NOT_FOUND
[2] > FETCH color
[2] < ERROR unknown command 'FETCH'
[2] > GET
[2] < ERROR wrong number of arguments: usage: GET <key>
[2] > GET color motto
[2] < ERROR wrong number of arguments: usage: GET <key>
[2] > SET color
[2] < ERROR wrong number of arguments: usage: SET <key> <value>
[2] > QUIT now
[2] < ERROR wrong number of arguments: usage: QUIT
[2] > (an empty line)
[2] < ERROR empty line
[2] > b'SET name caf\\xe9' (not UTF-8)
[2] < ERROR line is not valid UTF-8
[2] > set name caf\u00e9
[2] < OK
[2] > GET name
[2] < VALUE caf\u00e9
[2] > QUIT
[2] < OK
[2] (closed by the server)
[3] > GET motto
[3] < VALUE hello, world
[3] > SET big xxx... (2009 bytes with the newline)
[3] < ERROR line too long (limit 1024 bytes)
[3] (closed by the server)
[1] (closed by the server)
[1] closed after at least the 1s idle timeout, without an answer
ok: 19 commands answered as expected; line limit, bad input and idle timeout handled
"""


def test_line_protocol_once_prints_the_scripted_session() -> None:
    lines = run_once(LINE_PROTOCOL)
    assert re.fullmatch(TCP4_LISTENING, lines[0]), lines[0]
    assert lines[1:] == LINE_PROTOCOL_TRANSCRIPT.splitlines()


class KeyValueClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)

    def __enter__(self) -> KeyValueClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def send(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\n")
        return read_line(self.sock)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(100) == b""
        except ConnectionResetError:
            return True


def start_line_protocol(serve: Callable[..., Serving], *args: str) -> tuple[Serving, int]:
    serving = serve(LINE_PROTOCOL, *args)
    port = int(serving.expect(TCP4_LISTENING).group(1))
    serving.expect(r"serving \(idle timeout [\d.]+s\) until Ctrl-C or SIGTERM")
    return serving, port


@STOP_SIGNALS
def test_line_protocol_serves_clients_until_a_signal(serve: Callable[..., Serving], signum: int) -> None:
    serving, port = start_line_protocol(serve)
    with KeyValueClient(port) as first, KeyValueClient(port) as second:
        assert first.send(b"SET greeting hi there") == b"OK\n"
        assert second.send(b"GET greeting") == b"VALUE hi there\n"  # one store for every connection
        assert second.send(b"DEL greeting") == b"OK\n"
        assert first.send(b"GET greeting") == b"NOT_FOUND\n"
        assert first.send(b"QUIT") == b"OK\n"
        assert first.closed_by_server()
        assert second.send(b"GET greeting") == b"NOT_FOUND\n"  # the other connection is still served
    stopped_cleanly(serving, signum, f"stopped by {signal.Signals(signum).name}")


def test_line_protocol_accepts_a_line_at_the_limit_and_refuses_one_byte_more(
        serve: Callable[..., Serving]) -> None:
    serving, port = start_line_protocol(serve)
    head = b"SET k "
    at_limit = head + b"v" * (1024 - len(head) - 1)  # 1024 bytes with the newline
    with KeyValueClient(port) as client:
        assert client.send(at_limit) == b"OK\n"
        assert client.send(b"GET k") == b"VALUE " + at_limit[len(head):] + b"\n"
        assert client.send(at_limit + b"v") == b"ERROR line too long (limit 1024 bytes)\n"
        assert client.closed_by_server()
    stopped_cleanly(serving, signal.SIGTERM, "stopped by SIGTERM")


def test_line_protocol_refuses_a_line_that_never_ends_once_past_the_limit(serve: Callable[..., Serving]) -> None:
    serving, port = start_line_protocol(serve)
    with KeyValueClient(port) as client:
        client.sock.sendall(b"SET k " + b"v" * 5000)  # no newline: the server must not wait for one
        assert read_line(client.sock) == b"ERROR line too long (limit 1024 bytes)\n"
        assert client.closed_by_server()
    stopped_cleanly(serving, signal.SIGTERM, "stopped by SIGTERM")


def test_line_protocol_closes_an_idle_connection_without_a_reply(serve: Callable[..., Serving]) -> None:
    serving, port = start_line_protocol(serve, "--idle-timeout", "0.3")
    with KeyValueClient(port) as idle, KeyValueClient(port) as busy:
        assert busy.send(b"SET a 1") == b"OK\n"
        assert idle.closed_by_server()  # within CLIENT_TIMEOUT; without the idle timeout, recv times out
        busy.sock.sendall(b"GET a")  # half a line, then silence
        assert busy.closed_by_server()
    stopped_cleanly(serving, signal.SIGTERM, "stopped by SIGTERM")


def test_line_protocol_bad_input_keeps_the_connection_usable(serve: Callable[..., Serving]) -> None:
    serving, port = start_line_protocol(serve)
    with KeyValueClient(port) as client:
        assert client.send(b"\xff\xfe") == b"ERROR line is not valid UTF-8\n"
        assert client.send(b"   ") == b"ERROR empty line\n"
        assert client.send(b"PING") == b"ERROR unknown command 'PING'\n"
        assert client.send(b"DEL") == b"ERROR wrong number of arguments: usage: DEL <key>\n"
        assert client.send(b"set k two words\r") == b"OK\n"  # a CRLF line ending is fine
        assert client.send(b"get k") == b"VALUE two words\n"
    stopped_cleanly(serving, signal.SIGTERM, "stopped by SIGTERM")
