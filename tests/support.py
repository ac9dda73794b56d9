"""Test helpers for the reactor test suite (stdlib only, no reactor import).

Import from tests with ``from support import wait_for, run_python, ...``:
pytest puts ``tests/`` on ``sys.path`` (``pythonpath = tests`` in setup.cfg;
the default "prepend" import mode does it too, because ``tests/`` has no
``__init__.py`` -- keep it that way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import gc
import glob
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

__all__ = [
    "REPO_ROOT",
    "TESTS_DIR",
    "EXAMPLES_DIR",
    "examples_started",
    "LEAKABLE_FD_PREFIXES",
    "ResourceSnapshot",
    "wait_for",
    "short_unix_dir",
    "run_python",
    "spawn_python",
    "python_env",
    "open_fds",
    "fd_target",
    "child_pids",
    "ipv6_available",
    "take_snapshot",
    "find_leaks",
    "check_leaks",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = REPO_ROOT / "examples"

#: File names of the scripts in ``examples/`` that :func:`run_python` or
#: :func:`spawn_python` started, as a script, in this process.
#: tests/test_examples.py checks at the end of a full run that every example is there.
examples_started: set[str] = set()

T = TypeVar("T")
PathOrCode = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------- polling

def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str | Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate()`` until it returns a truthy value; return that value.

    Raises ``AssertionError`` (with ``message``, which may be a callable
    evaluated lazily at failure time) if ``timeout`` seconds pass first.
    The predicate is always evaluated at least once, and once more after the
    deadline, so a zero timeout means "check now".

    This is the ONE place in the test suite where sleeping between polls is
    acceptable; tests must never ``time.sleep()`` to "let things settle".
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    result = predicate()
    if result:
        return result
    if callable(message):
        text = message()
    elif message is None:
        text = f"condition {getattr(predicate, '__name__', predicate)!r} not met"
    else:
        text = message
    raise AssertionError(f"timed out after {timeout:g}s: {text}")


# ---------------------------------------------------------------- a quiet http.server handler

class QuietHTTPHandler(http.server.BaseHTTPRequestHandler):
    """An ordinary ``http.server`` handler: answers GET with ``reply()`` and logs nothing."""

    def reply(self) -> bytes:
        """The body of the answer (override it)."""
        return b"ok\n"

    def do_GET(self) -> None:
        body = self.reply()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


# ---------------------------------------------------------------- a reactor in a thread

@contextlib.contextmanager
def reactor_thread(reactor: Any, *, close: bool = True, timeout: float = 10.0) -> Iterator[threading.Thread]:
    """Run ``reactor.serve_forever()`` in a thread named ``reactor`` for the block.

    Afterwards: ``stop()``, join (failing the test if ``serve_forever()`` does
    not return within ``timeout``) and, with ``close``, ``close()`` the reactor.
    """
    thread = threading.Thread(target=reactor.serve_forever, name="reactor")
    thread.start()
    try:
        yield thread
    finally:
        reactor.stop()
        thread.join(timeout)
        assert not thread.is_alive(), "serve_forever() did not return after stop()"
        if close:
            reactor.close()


# ---------------------------------------------------------------- unix sockets

@contextlib.contextmanager
def short_unix_dir() -> Iterator[str]:
    """Yield a fresh directory with a short path (``/tmp/rxXXXXXXXX``).

    Unix socket paths are limited to 108 bytes (``sun_path``); pytest's
    ``tmp_path`` can get close to that, this stays around 20 bytes.  The
    directory and its contents are removed afterwards.
    """
    path = tempfile.mkdtemp(prefix="rx", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- subprocesses

def python_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child interpreter.

    ``os.environ`` overlaid with ``env``; ``PYTHONPATH`` gets the repo root
    (so ``import reactor`` works without installation) and ``tests/`` (so
    ``import support`` works) prepended to whatever was there.
    """
    result = dict(os.environ)
    if env:
        result.update(env)
    extra = [str(REPO_ROOT), str(TESTS_DIR)]
    existing = result.get("PYTHONPATH")
    if existing:
        extra.append(existing)
    result["PYTHONPATH"] = os.pathsep.join(extra)
    result.setdefault("PYTHONIOENCODING", "utf-8")
    return result


def _python_argv(code_or_path: PathOrCode, args: tuple[str, ...], unbuffered: bool) -> list[str]:
    argv = [sys.executable]
    if unbuffered:
        argv.append("-u")
    if isinstance(code_or_path, os.PathLike) or (
        "\n" not in code_or_path
        and code_or_path.endswith(".py")
        and os.path.isfile(code_or_path)
    ):
        script = Path(code_or_path).resolve()
        if script.parent == EXAMPLES_DIR:
            examples_started.add(script.name)
        argv.append(os.fspath(code_or_path))
    else:
        argv += ["-c", textwrap.dedent(code_or_path)]
    argv += [str(a) for a in args]
    return argv


def run_python(
    code_or_path: PathOrCode,
    *args: str,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``sys.executable`` in a FRESH interpreter and wait for it.

    Use it for anything that must not touch the pytest process: fork(),
    signal handlers, lowered rlimits, os._exit, ...

    ``code_or_path`` is a ``Path``/``PathLike`` or a string ending in ``.py``
    naming an existing file (run as a script), otherwise source code (it is
    dedented, so triple-quoted indented blocks are fine).  ``args`` become
    ``sys.argv[1:]``.  ``env`` is overlaid on ``os.environ`` (see
    :func:`python_env`).  stdout/stderr are captured as text; the exit status
    is NOT checked (look at ``.returncode``).  On timeout the child is killed
    and ``subprocess.TimeoutExpired`` propagates.
    """
    return subprocess.run(
        _python_argv(code_or_path, args, unbuffered=False),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=python_env(env),
        cwd=cwd,
        check=False,
    )


def spawn_python(
    code_or_path: PathOrCode,
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen[str]:
    """Start a fresh ``python -u`` child to interact with; return the Popen.

    stdin/stdout/stderr are line-buffered text pipes by default (override any
    of them through ``popen_kwargs``, e.g. ``stderr=subprocess.STDOUT``).

    The caller owns the child and its pipes: use ``with spawn_python(...) as
    proc:`` (closes the pipes and waits) or ``proc.communicate()``, otherwise
    the leak check reports the pipe fds and the unreaped child pid.
    """
    kwargs: dict[str, Any] = {
        "stdin": subprocess.PIPE,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "text": True,
        "bufsize": 1,
        "env": python_env(env),
        "cwd": cwd,
    }
    kwargs.update(popen_kwargs)
    return subprocess.Popen(_python_argv(code_or_path, args, unbuffered=True), **kwargs)


# ---------------------------------------------------------------- /proc probes

def _fd_is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return False
        raise
    return True


def open_fds() -> set[int]:
    """Numbers of the file descriptors currently open in this process.

    Read from ``/proc/self/fd``; the descriptor used to list that directory
    (already closed when ``listdir`` returns) is excluded.
    """
    listed = {int(name) for name in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if _fd_is_open(fd)}


def fd_target(fd: int) -> str | None:
    """``readlink(/proc/self/fd/N)``: ``socket:[123]``, ``pipe:[4]``,
    ``anon_inode:[eventpoll]``, a file path, ... or None if ``fd`` is closed."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def child_pids() -> set[int]:
    """PIDs of this process's direct children, zombies included.

    Read from ``/proc/self/task/*/children`` (every thread, since a child
    belongs to the thread that forked it); falls back to scanning
    ``/proc/*/stat`` when the kernel lacks CONFIG_PROC_CHILDREN.
    """
    files = glob.glob("/proc/self/task/*/children")
    if files:
        pids: set[int] = set()
        for name in files:
            try:
                with open(name) as fh:
                    pids.update(int(p) for p in fh.read().split())
            except OSError:  # thread exited meanwhile
                continue
        return pids
    return _child_pids_by_scan()


def _child_pids_by_scan() -> set[int]:
    me = os.getpid()
    pids: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # "pid (comm) state ppid ..." -- comm may contain spaces/parens.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            pids.add(int(entry))
    return pids


def ipv6_available() -> bool:
    """True if a TCP socket can be bound to ``::1``."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- leak check

#: Only descriptors whose readlink target starts with one of these count for
#: the leak check: they are what a server can leak (sockets, pipes, epoll /
#: eventfd / signalfd / timerfd).  Regular files, /dev/*, ttys are ignored, so
#: pytest's capture temp files, logging handlers etc. never false-positive.
LEAKABLE_FD_PREFIXES = ("socket:", "pipe:", "anon_inode:")


@dataclasses.dataclass(frozen=True)
class ResourceSnapshot:
    """What the process holds at one moment (see :func:`take_snapshot`)."""

    fds: frozenset[tuple[int, str]]  # (fd, readlink target), leakable kinds only
    threads: frozenset[threading.Thread]
    children: frozenset[int]


def take_snapshot() -> ResourceSnapshot:
    fds = set()
    for fd in open_fds():
        target = fd_target(fd)
        if target is not None and target.startswith(LEAKABLE_FD_PREFIXES):
            fds.add((fd, target))
    return ResourceSnapshot(
        fds=frozenset(fds),
        threads=frozenset(threading.enumerate()),
        children=frozenset(child_pids()),
    )


def find_leaks(before: ResourceSnapshot, after: ResourceSnapshot | None = None) -> list[str]:
    """Human-readable descriptions of what ``after`` (default: now) holds
    that ``before`` did not: fds (number + target; an fd number re-used for
    a different object counts as new), live threads, child pids.
    An empty list means no leak."""
    if after is None:
        after = take_snapshot()
    leaks = [
        f"fd {fd} -> {target}" for fd, target in sorted(after.fds - before.fds)
    ]
    leaks += [
        f"thread {t.name!r} (ident={t.ident}, daemon={t.daemon})"
        for t in sorted(after.threads - before.threads, key=lambda t: t.ident or 0)
        if t.is_alive()
    ]
    leaks += [f"child pid {pid}" for pid in sorted(after.children - before.children)]
    return leaks


def check_leaks(before: ResourceSnapshot, timeout: float = 2.0) -> list[str]:
    """Leaks relative to ``before`` that persist for ``timeout`` seconds.

    Runs ``gc.collect()`` first (sockets in reference cycles), then gives
    threads started by the test time to finish and children time to be
    reaped (e.g. by another thread), collecting again before the final
    verdict.  Returns ``[]`` when clean (fast path: no waiting at all).
    """
    gc.collect()
    if not find_leaks(before):
        return []
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not find_leaks(before), timeout=timeout, interval=0.01)
        return []
    gc.collect()
    return find_leaks(before)
