"""Self-tests for the test harness (conftest.py / support.py).

These deliberately do not import reactor, so they run even while the library
is being written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support import (
    REPO_ROOT,
    TESTS_DIR,
    check_leaks,
    child_pids,
    fd_target,
    find_leaks,
    ipv6_available,
    open_fds,
    run_python,
    short_unix_dir,
    spawn_python,
    take_snapshot,
    wait_for,
)


# ---------------------------------------------------------------- wait_for

def test_wait_for_returns_the_truthy_value() -> None:
    calls = []

    def predicate() -> int:
        calls.append(None)
        return len(calls) if len(calls) >= 3 else 0

    assert wait_for(predicate, timeout=5) == 3


def test_wait_for_times_out_with_message() -> None:
    with pytest.raises(AssertionError, match="server never came up"):
        wait_for(lambda: False, timeout=0.05, message="server never came up")


def test_wait_for_accepts_lazy_message() -> None:
    state = {"n": 0}

    def message() -> str:
        return f"n is {state['n']}"

    state["n"] = 7  # evaluated at failure time, not at call time
    with pytest.raises(AssertionError, match="n is 7"):
        wait_for(lambda: False, timeout=0, message=message)


# ---------------------------------------------------------------- unix dirs

def test_short_unix_dir_is_short_and_removed() -> None:
    with short_unix_dir() as path:
        assert len(path) < 40
        assert path.startswith("/tmp/rx")
        assert os.path.isdir(path)
        sock_path = os.path.join(path, "a-reasonably-long-socket-name.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(sock_path)
        assert os.path.exists(sock_path)
    assert not os.path.exists(path)


def test_unix_dir_fixture(unix_dir: str) -> None:
    assert len(unix_dir) < 40
    assert os.path.isdir(unix_dir)


# ---------------------------------------------------------------- subprocesses

def test_run_python_uses_a_fresh_interpreter() -> None:
    result = run_python(
        """
        import os, sys
        print(os.getpid(), sys.executable)
        print(sys.argv[1:])
        print("to stderr", file=sys.stderr)
        """,
        "one",
        "two",
    )
    assert result.returncode == 0, result.stderr
    pid, executable = result.stdout.splitlines()[0].split(" ", 1)
    assert int(pid) != os.getpid()
    assert executable == sys.executable
    assert result.stdout.splitlines()[1] == "['one', 'two']"
    assert result.stderr == "to stderr\n"


def test_run_python_sets_pythonpath_env_and_exit_status() -> None:
    result = run_python(
        """
        import os, sys
        import support
        print(os.environ["RX_TEST_VAR"])
        print(sys.path[1:3])
        sys.exit(3)
        """,
        env={"RX_TEST_VAR": "hello"},
    )
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "hello"
    assert str(REPO_ROOT) in lines[1] and str(TESTS_DIR) in lines[1]


def test_run_python_runs_a_script_path(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("import sys\nprint('script', *sys.argv[1:])\n")
    assert run_python(script, "x").stdout == "script x\n"
    assert run_python(str(script), "y").stdout == "script y\n"


def test_run_python_timeout_kills_the_child() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("import time; time.sleep(60)", timeout=0.5)


def test_spawn_python_is_interactive() -> None:
    code = """
        import sys
        for line in sys.stdin:
            print("echo:" + line.strip())
        """
    with spawn_python(code) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("ping\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "echo:ping\n"
        proc.stdin.write("pong\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "echo:pong\n"
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0


# ---------------------------------------------------------------- /proc probes

def test_open_fds_tracks_sockets() -> None:
    fds = open_fds()
    assert {0, 1, 2} <= fds
    assert all(fd_target(fd) is not None for fd in fds)  # no stale listing fd
    assert open_fds() == fds
    a, b = socket.socketpair()
    try:
        assert open_fds() == fds | {a.fileno(), b.fileno()}
        assert (fd_target(a.fileno()) or "").startswith("socket:[")
    finally:
        a.close()
        b.close()
    assert open_fds() == fds


def test_child_pids_includes_zombies_until_reaped() -> None:
    before = child_pids()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert proc.pid in child_pids()
        # Exited but not yet waited for: still a child (zombie).
        wait_for(lambda: _is_zombie(proc.pid), timeout=10)
        assert proc.pid in child_pids()
    finally:
        proc.wait()
    assert child_pids() == before


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        stat = fh.read()
    return stat[stat.rfind(")") + 2] == "Z"


def test_ipv6_available_returns_bool() -> None:
    assert isinstance(ipv6_available(), bool)


# ---------------------------------------------------------------- leak check

def test_leak_check_reports_leaked_socketpair() -> None:
    before = take_snapshot()
    a, b = socket.socketpair()
    try:
        leaks = find_leaks(before)
        assert len(leaks) == 2, leaks
        for sock in (a, b):
            assert any(
                leak.startswith(f"fd {sock.fileno()} -> socket:[") for leak in leaks
            ), leaks
    finally:
        a.close()
        b.close()
    assert find_leaks(before) == []
    assert check_leaks(before) == []


def test_leak_check_reports_pipe_and_reused_fd_number() -> None:
    old = socket.socket()
    old_fd = old.fileno()
    before = take_snapshot()
    r, w = os.pipe()
    try:
        # Same fd number, different object: still a leak.
        os.dup2(r, old_fd)
        leaks = find_leaks(before)
        assert f"fd {old_fd} -> {fd_target(r)}" in leaks
        assert f"fd {r} -> {fd_target(r)}" in leaks
        assert f"fd {w} -> {fd_target(w)}" in leaks
    finally:
        os.close(r)
        os.close(w)
        old.close()  # closes old_fd, now the dup of the pipe


def test_leak_check_ignores_regular_files(tmp_path: Path) -> None:
    before = take_snapshot()
    with open(tmp_path / "f", "w"), open(os.devnull):
        assert find_leaks(before) == []


def test_leak_check_reports_threads_and_waits_for_them() -> None:
    before = take_snapshot()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="leaky-thread")
    thread.start()
    try:
        assert find_leaks(before) == [
            f"thread 'leaky-thread' (ident={thread.ident}, daemon=False)"
        ]
        # check_leaks gives a thread that is about to finish time to do so.
        threading.Timer(0.05, stop.set).start()
        assert check_leaks(before, timeout=5) == []
    finally:
        stop.set()
        thread.join()


def test_leak_check_reports_unreaped_children() -> None:
    before = take_snapshot()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert f"child pid {proc.pid}" in check_leaks(before, timeout=0.05)
    finally:
        proc.wait()
    assert check_leaks(before) == []


def test_no_leaks_fixture_end_to_end(tmp_path: Path) -> None:
    """Run a small suite in a fresh pytest and check what the fixture says."""
    shutil.copy(TESTS_DIR / "conftest.py", tmp_path)
    shutil.copy(TESTS_DIR / "support.py", tmp_path)
    (tmp_path / "test_sample.py").write_text(
        "import socket, threading, pytest\n"
        "KEEP = []\n"
        "def test_clean():\n"
        "    with socket.socket(): pass\n"
        "def test_leaks_socket():\n"
        "    KEEP.append(socket.socket())\n"
        "def test_leaks_thread():\n"
        "    ev = threading.Event(); KEEP.append(ev)\n"
        "    threading.Thread(target=ev.wait, name='stuck', daemon=True).start()\n"
        "@pytest.mark.allow_leaks\n"
        "def test_allowed():\n"
        "    KEEP.append(socket.socket())\n"
        "def test_fails_and_leaks():\n"
        "    s = socket.socket()\n"
        "    assert False, 'plain failure'\n"
        "def test_zz_cleanup():\n"
        "    for obj in KEEP:\n"
        "        getattr(obj, 'close', getattr(obj, 'set', None))()\n"
    )
    result = run_python(
        "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))",
        "-p", "no:cacheprovider", "--strict-markers", "-q", "-rfE",
        str(tmp_path),
        cwd=tmp_path,
        env={"REACTOR_TEST_LEAK_TIMEOUT": "0.2"},
        timeout=60,
    )
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "ERROR at teardown of test_leaks_socket" in out
    assert "ERROR at teardown of test_leaks_thread" in out
    assert "thread 'stuck'" in out
    assert "socket:[" in out
    assert "test_allowed" not in out
    assert "test_clean" not in out
    assert "FAILED test_sample.py::test_fails_and_leaks" in out
    assert "ERROR at teardown of test_fails_and_leaks" not in out
    assert "1 failed, 5 passed, 2 errors" in out
