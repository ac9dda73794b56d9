"""Process mechanics shared by the pool's roles: forking, descriptor hygiene, reaping, exit codes, timings.

Nothing here knows about a role; the role modules (master, arbiter, standby,
worker) decide when to call what.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..accept import HostingOptions

__all__ = [
    "ABORT_GRACE", "CRASH_BACKOFF_MAX", "CRASH_BACKOFF_MIN", "FAST_CRASH", "ORPHAN_GRACE_MAX", "Plan", "PoolSettings",
    "SignalMask", "WORKER_BOOT_FAILED", "close_inherited_fds", "describe_exit", "fork_with_signals_blocked",
    "forget_inherited_signals", "heartbeat_interval", "ignore_controlled_signals", "logging_fds",
    "next_backoff", "orphan_grace", "reap",
]

SignalMask = set[int | signal.Signals]

#: Exit status of a worker that could not start; it stops respawning.
WORKER_BOOT_FAILED = 3

#: Signals a terminal sends to the whole process group; only the master acts on them.
_CONTROLLED_ELSEWHERE = ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU")
#: Time between SIGABRT (traceback) and SIGKILL for a stuck worker.
ABORT_GRACE = 2.0
#: A worker (or an arbiter, counted from its boot) that dies sooner than this crashes fast...
FAST_CRASH = 1.0
#: ... and is replaced only after a delay that doubles from MIN up to MAX while crashes stay fast.
CRASH_BACKOFF_MIN = 0.1
CRASH_BACKOFF_MAX = 5.0
#: Longest time an arbiter whose master died lets its workers finish before SIGKILL.
ORPHAN_GRACE_MAX = 2.0


@dataclass(frozen=True)
class PoolSettings:
    """A ``Prefork``'s settings, as its constructor took them (see its docstring)."""

    workers: int
    threads: int
    max_requests: int
    max_requests_jitter: int
    heartbeat_timeout: float
    graceful_timeout: float
    handle_signals: bool
    #: Descriptors the user asked every child to keep (``Prefork(keep_fds=...)``).
    keep_fds: frozenset[int]
    on_worker_start: Callable[[], object] | None


@dataclass(frozen=True)
class Plan:
    """Everything a process of the pool knows from its fork: the server and the pool's options."""

    server: Any
    name: str
    settings: PoolSettings
    options: HostingOptions
    #: The master's pid, recorded before the arbiter's fork: once re-parented, getppid() says 1.
    master_pid: int
    #: Keys of the server's stats that are gauges (``accept.STATS_GAUGES``), for the arbiter's sums.
    stats_gauges: frozenset[str]

    @property
    def listener(self) -> int:
        return int(self.server.fileno())


def heartbeat_interval(heartbeat_timeout: float) -> float:
    """How often a worker beats, and how often the arbiter checks: a quarter of the timeout, 20 ms to 1 s."""
    return max(min(heartbeat_timeout / 4, 1.0), 0.02)


def orphan_grace(graceful_timeout: float) -> float:
    """How long the workers of an arbiter that lost its master may finish their requests."""
    return min(graceful_timeout, ORPHAN_GRACE_MAX)


def next_backoff(previous: float) -> float:
    """The delay before replacing a process that crashed fast, after ``previous`` (0: the first fast crash)."""
    return min(max(previous * 2, CRASH_BACKOFF_MIN), CRASH_BACKOFF_MAX)


# -- fork ---------------------------------------------------------------------


def fork_with_signals_blocked() -> tuple[int, SignalMask]:
    """Fork with every signal blocked; return the pid and the mask to restore.

    The parent restores its mask at once. The child restores it only once it
    has its own handlers: until then a signal would run the parent's handler
    and land in the parent's wakeup fd (the parent would think it got it).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return pid, previous


def forget_inherited_signals() -> None:
    """In a fresh child: drop the parent's wakeup fd and Python-level signal handlers."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(signum, signal.SIG_DFL)


def ignore_controlled_signals() -> None:
    """Ignore what a terminal sends the whole process group (Ctrl-C, SIGHUP...): the master decides."""
    for name in _CONTROLLED_ELSEWHERE:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


# -- descriptor hygiene -------------------------------------------------------


def logging_fds() -> set[int]:
    """Descriptors of the streams of the logging handlers configured now (FileHandler, StreamHandler...)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [item for item in logging.Logger.manager.loggerDict.values() if isinstance(item, logging.Logger)]
    fds = set()
    for each in loggers:
        for handler in each.handlers:
            stream = getattr(handler, "stream", None)
            try:
                fd = stream.fileno() if stream is not None else -1
            except (AttributeError, OSError, ValueError):
                continue  # not a file (StringIO), or already closed
            if isinstance(fd, int) and fd >= 0:
                fds.add(fd)
    return fds


def close_inherited_fds(keep: Iterable[int]) -> None:
    """Close every descriptor except stdio, ``keep`` and the logging handlers' streams.

    The first thing a child does, once it has forgotten the parent's signal
    handling (the wakeup fd is one of the numbers closed here). A child holds
    exactly what its role needs: holding anything more keeps another
    server's port listening after the master closed it, or a dead master's
    control socket open (so an arbiter never learns it is gone).

    Closing the numbers is the easy part. The child still has the parent's
    Python objects (other servers' sockets, the master's selector and waker,
    other pools' control sockets), each wrapping one of the numbers closed
    here, and soon the child reuses those numbers for its own descriptors
    (its epoll, its pipes, accepted connections). If an inherited object were
    ever finalized it would close the number AGAIN, this time the child's own
    descriptor. Two things make sure that never happens:

    * ``gc.freeze()``, right here: every object that exists now moves to the
      permanent generation, which the cyclic collector never examines, so no
      inherited object (not even parent garbage awaiting collection) is
      finalized by a collection;
    * the child never drops the last reference to an inherited object: every
      child ends in ``os._exit()`` from inside the frames that hold them (the
      fork call's), and no child code removes anything from the parent's
      containers or closes an inherited object.
    """
    gc.freeze()
    wanted = sorted({0, 1, 2} | logging_fds() | {fd for fd in keep if fd >= 0})
    low = 0
    for fd in wanted:
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, _max_fd())


def _max_fd() -> int:
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        limit = -1
    return limit if limit > 0 else 65536


# -- reaping ------------------------------------------------------------------


def reap(pid: int, *, block: bool = False) -> int | None:
    """Reap child ``pid``: its exit code (``-signum`` if killed), or None while it runs (``block=False``).

    Raises:
        ChildProcessError: ``pid`` is not (or no longer) a child of this process.
    """
    reaped, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    if reaped == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def describe_exit(code: int | None) -> str:
    """``exit status 1``, ``killed by SIGKILL``; ``status unknown`` for None."""
    if code is None:
        return "status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
