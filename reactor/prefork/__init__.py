"""Pre-forked worker processes for one server, supervised like gunicorn's arbiter.

Theory of operation
-------------------
``reactor.add_server(server, dispatch=Prefork(workers=4))`` builds this tree::

    master    the caller's process and Reactor. It owns the listening socket
    |         (bound before any fork) and, for a Unix path, the socket file.
    |         It never touches this server's requests.       (master.py)
    +-- arbiter   forked once, when the server is added. Single-threaded for
        |         its whole life: it forks, reaps, watches and replaces
        |         workers.                                   (arbiter.py)
        +-- standby   forked by the arbiter as it starts; blocks on a pipe
        |             and becomes the arbiter if the arbiter dies. (standby.py)
        +-- worker    a fresh Reactor (its own selector) hosting only this
        +-- worker    server, accepting straight from the inherited socket.
                                                             (worker.py)

Why an arbiter instead of forking workers from the master: forking a process
while other threads run is unsafe (a lock held by another thread stays locked
forever in the child; Python 3.12 warns). A master may well run threads:
a ThreadPool for another server on the same Reactor, an embedding host. A
worker must sometimes be forked *later* (a crash, a heartbeat kill,
``max_requests``, ``reload()``) when those threads are running. So the only
fork the master makes is the arbiter's, at ``add_server`` time, and it
refuses to make it while another thread is alive. Every later fork comes from
the arbiter, which never starts a thread. The master keeps the role a user
sees: it takes commands (and, if asked, signals), forwards them over a
socketpair, and learns the workers' pids from the arbiter's reports
(``_messages.py`` names every message once).

Why a standby: an arbiter can die too (a bug, the OOM killer, ``kill -9``),
and the master may not fork a new one (it may run threads by then). So each
arbiter, while still single-threaded, forks its replacement in advance. The
standby shares the arbiter's end of the control socket, so when it takes
over, the master sees no EOF at all, only an ``arbiter`` report with the new
pid (after a newline that ends any line the dead arbiter left half-written).

Rules
-----
1. Bind before fork; selectors, reactors and thread pools only after it. A
   child never touches its parent's Reactor: the epoll instance is shared
   across fork, and ``epoll_ctl`` in the child would change the parent's.
2. The first thing a child does is forget the signal handling it inherited
   (the parent's wakeup fd and Python-level handlers); the second is to close
   every descriptor its role does not need (``_process.close_inherited_fds``):
   the arbiter keeps its listener, its control socket and its own pipes; a
   standby its listener, the control socket and its pipe; a worker its
   listener, its heartbeat pipe and the arbiter's death pipe. All keep stdio,
   the streams of the logging handlers configured at fork time and
   ``keep_fds``. Nothing of another server survives in a child. Inherited
   Python objects that wrap a closed number are never finalized there
   (``gc.freeze()``, references never dropped), so they cannot close a
   reused number.
3. The listener is non-blocking in every process (the flag lives in the
   shared open file description), so workers that lose an accept race get
   EAGAIN instead of blocking. The master restores the mode at the end.
4. Only the master unlinks a Unix socket path (``UnixSocketPath`` checks the pid).
5. Signals belong to the application. Only with ``handle_signals=True`` does
   the master's Reactor take SIGTERM/SIGINT (stop), SIGHUP (reload),
   SIGTTIN/SIGTTOU (one worker more/fewer). Workers, standbys and the arbiter
   ignore SIGINT/SIGHUP/SIGTTIN/SIGTTOU (a terminal's Ctrl-C reaches the
   whole process group); the master decides and commands.
6. Exit codes are a protocol: 0, the worker stopped as asked or after
   ``max_requests``; ``WORKER_BOOT_FAILED`` (3), it could not start, so
   respawning stops and the master's ``serve_forever()`` raises
   ``WorkerBootError`` -- except for a reload's new worker while workers of
   before the reload still serve: that aborts the reload, and the old ones
   serve on; anything else, a crash: respawn, with a back-off that
   doubles (0.1 s up to 5 s) while crashes come within a second of the start.
7. Arbiters follow the same rules: an arbiter that dies is replaced by its
   standby, after the same back-off if it died within a second of booting its
   first workers; one that dies before they were ready is a boot failure
   (the standby reports it and the pool stops). Its workers stop by
   themselves (rule 8); the master forgets them, reaps the dead arbiter if it
   is its child, and the other servers of the Reactor never notice.
8. Death propagates down: the arbiter and its standby see EOF on the control
   socket when the master dies (even by SIGKILL); the arbiter then SIGTERMs
   the workers and SIGKILLs what is left after the orphan grace,
   ``min(graceful_timeout, 2 s)``, and exits, which ends the standby (a
   standby whose arbiter died with the master finds the control socket at
   EOF and exits instead of taking over). Workers see EOF on the arbiter's
   death pipe and stop by themselves.
9. Liveness: each worker's loop writes a heartbeat byte to its own pipe. A
   worker silent for ``heartbeat_timeout`` (a handler stuck in the loop
   thread) gets SIGABRT, which makes ``faulthandler`` log every thread's
   traceback, then SIGKILL, and is replaced.
10. The arbiter reaps with ``waitpid`` on its own workers' and standby's pids only.
11. Visibility without waiting: a worker's heartbeat carries its server's
    ``HostedServer.stats()`` whenever they changed (and once more as it
    exits); the arbiter sums them (counters carried over from workers that
    exited, gauges over the live ones: ``_stats.py``) and pushes the sum to the
    master, whose ``stats()`` serves the last snapshot and never asks a child.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..accept import HostingOptions, describe_server
from ..hosting import Attachment, Reactor, Topology
from ._messages import Command
from ._process import WORKER_BOOT_FAILED, PoolSettings
from .master import MasterSide, PreforkError, WorkerBootError

__all__ = ["Prefork", "PreforkError", "WorkerBootError", "WORKER_BOOT_FAILED"]


class Prefork(Topology):
    """Serve one server from ``workers`` pre-forked processes, supervised and replaced as needed.

    Args:
        workers: how many worker processes to keep.
        threads: if above 0, each worker runs requests on a ``ThreadPool`` of
            that many threads (like gunicorn's gthread); 0 handles them inline.
        max_requests: recycle a worker gracefully after this many requests
            (0: never); ``max_requests_jitter`` adds up to that many more, at
            random per worker, so workers do not all restart together.
        heartbeat_timeout: a worker whose loop is silent this long (or that
            does not finish booting in this time) is killed and replaced.
        graceful_timeout: on stop, reload or recycle, how long in-flight
            requests may take before the worker is killed. If the master
            dies, the workers get ``min(graceful_timeout, 2 s)`` instead.
        handle_signals: opt in to gunicorn-style signals on the master's
            Reactor (main thread only): SIGTERM and SIGINT stop the reactor
            (closing it then stops the workers gracefully), SIGHUP reloads
            every Prefork pool on it that opted in (new workers first, then
            the old ones retire), SIGTTIN/SIGTTOU add or remove one worker.
            Off by default: signals belong to the application, which may
            install its own handlers or call ``reload()``/``increase()``/``decrease()``.
        keep_fds: descriptors (ints, or objects with ``fileno()``) that the
            arbiter, its standby and the workers keep open. Every other
            descriptor of the master is closed in them right after the fork,
            except stdio and the streams of the logging handlers configured
            at that time (``FileHandler``, ``StreamHandler``), so file logging
            keeps working; a handler that opens its file later
            (``delay=True``) opens its own. Pass here anything else a worker
            must inherit (a ``SysLogHandler``'s socket, a shared file).
        on_worker_start: called in each worker after fork, before it serves
            (open per-process resources here); if it raises, the worker
            fails to boot.

    Availability: POSIX (``os.fork``). The master must be single-threaded
    when the server is added.
    """

    def __init__(
        self,
        workers: int = 2,
        threads: int = 0,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        heartbeat_timeout: float = 30.0,
        graceful_timeout: float = 30.0,
        *,
        handle_signals: bool = False,
        keep_fds: Iterable[Any] = (),
        on_worker_start: Callable[[], object] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if threads < 0 or max_requests < 0 or max_requests_jitter < 0:
            raise ValueError("threads, max_requests and max_requests_jitter must not be negative")
        if heartbeat_timeout <= 0 or graceful_timeout < 0:
            raise ValueError("heartbeat_timeout must be positive and graceful_timeout not negative")
        self.workers = workers
        self.threads = threads
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.heartbeat_timeout = heartbeat_timeout
        self.graceful_timeout = graceful_timeout
        self.handle_signals = handle_signals
        self.keep_fds = tuple(keep_fds)
        for item in self.keep_fds:
            if not isinstance(item, int) and not callable(getattr(item, "fileno", None)):
                raise TypeError(f"keep_fds takes ints or objects with fileno(), not {item!r}")
        self.on_worker_start = on_worker_start
        self._attachment: MasterSide | None = None

    def __repr__(self) -> str:
        return (f"Prefork(workers={self.workers}, threads={self.threads}, "
                f"max_requests={self.max_requests})")

    def attach(self, reactor: Reactor, server: Any, options: HostingOptions) -> Attachment:
        """Fork the arbiter, which forks the workers; see the module docstring."""
        if self._attachment is not None:
            raise ValueError(f"{self!r} already serves {describe_server(self._attachment.server)}")
        settings = PoolSettings(
            workers=self.workers, threads=self.threads, max_requests=self.max_requests,
            max_requests_jitter=self.max_requests_jitter, heartbeat_timeout=self.heartbeat_timeout,
            graceful_timeout=self.graceful_timeout, handle_signals=self.handle_signals,
            keep_fds=frozenset(item if isinstance(item, int) else int(item.fileno()) for item in self.keep_fds),
            on_worker_start=self.on_worker_start)
        self._attachment = MasterSide(settings, self, reactor, server, options, on_detached=self._detached)
        return self._attachment

    def _detached(self) -> None:
        self._attachment = None

    # -- control (master side) ----------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live workers, as last reported by the arbiter."""
        return sorted(self._attachment.workers) if self._attachment else []

    @property
    def arbiter_pid(self) -> int | None:
        """Pid of the arbiter process, while there is one (a new one after a standby took over)."""
        return self._attachment.arbiter_pid if self._attachment else None

    @property
    def reloads_aborted(self) -> int:
        """Reloads given up so far because a new worker failed to boot (the old workers served on)."""
        return self._attachment.reloads_aborted if self._attachment else 0

    def reload(self) -> None:
        """Rolling restart: start a new set of workers, retiring an old one as each new one is ready.

        If a new worker fails to boot while workers of before the reload still serve, the
        reload is aborted: the new workers retire, the old ones serve on (and the pool is
        filled up to its size again, as after any exit), and ``reloads_aborted`` grows.
        """
        self._command(Command.RELOAD)

    def increase(self) -> None:
        """Run one worker more."""
        self._command(Command.INCREASE)

    def decrease(self) -> None:
        """Run one worker fewer (never below one); the oldest retires gracefully."""
        self._command(Command.DECREASE)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the pool and of its server's counters (what ``Reactor.server_stats()`` returns).

        The pool's own keys: ``workers`` (the target count), ``pids`` (live
        workers), ``ready`` (those serving), ``arbiter`` (its pid) and
        ``spawned`` (workers started so far). Then exactly the keys that
        ``Inline`` or ``ThreadPool`` hosting of the same server with the same
        options reports (``HostedServer.stats()``: requests, dropped, ... and,
        with connection options, admitted, refused_by_rule, ..., open), each
        summed over the workers: a counter over every worker the pool ever
        ran (it never goes backwards when a worker is replaced or recycled), a
        gauge (``open``, ``admitting``) over the live ones. The sums are the
        workers' last reports, sent with their heartbeats, so they lag by up
        to about a heartbeat interval (``heartbeat_timeout / 4``, at most 1 s);
        a worker killed outright loses the counts of its last interval. Every
        key is present, zero until something happened. A ``Prefork`` that
        serves no server (not added yet, or removed) has only the pool's keys.

        Never waits for a child: it returns the last sums the arbiter pushed
        to the master's loop.
        """
        if self._attachment is None:
            return {"workers": self.workers, "pids": [], "ready": [], "arbiter": None, "spawned": 0}
        return self._attachment.stats()

    def pool_stats(self) -> dict[str, Any]:
        """The pool's own numbers, for ``Reactor.stats()``: the pool's keys of ``stats()``
        (``workers``, ``pids``, ``ready``, ``arbiter``, ``spawned``), plus ``restarts``, workers
        started beyond the first ``workers`` (replacements of crashed or recycled workers, and
        those of reloads and of SIGTTIN), and ``last_exit``, the last worker exit the arbiter
        reported: ``{"pid", "code", "reason"}`` (``code`` is ``-signum`` for a signal, ``reason``
        says it in words, e.g. ``killed by SIGKILL``), None before any.
        """
        if self._attachment is None:
            return {"workers": self.workers, "pids": [], "ready": [], "arbiter": None, "spawned": 0,
                    "restarts": 0, "last_exit": None}
        return self._attachment.pool_stats()

    def _command(self, kind: Command) -> None:
        if self._attachment is None:
            raise RuntimeError(f"{self!r} is not serving")
        self._attachment.send(kind)
