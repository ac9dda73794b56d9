"""Pre-forked worker processes for one server, supervised like gunicorn's arbiter.

Theory of operation
-------------------
``reactor.add_server(server, dispatch=Prefork(workers=4))`` builds this tree::

    master    the caller's process and Reactor. It owns the listening socket
    |         (bound before any fork) and, for a Unix path, the socket file.
    |         It never touches this server's requests.
    +-- arbiter   forked once, when the server is added. Single-threaded for
        |         its whole life: it forks, reaps, watches and replaces workers.
        +-- worker    a fresh Reactor (its own selector) hosting only this
        +-- worker    server, accepting straight from the inherited socket.

Why an arbiter instead of forking workers from the master: forking a process
while other threads run is unsafe (a lock held by another thread stays locked
forever in the child; Python 3.12 warns). A master may well run threads:
a ThreadPool for another server on the same Reactor, an embedding host. A
worker must sometimes be forked *later* (a crash, a heartbeat kill,
``max_requests``, SIGHUP, SIGTTIN) when those threads are running. So the
only fork the master makes is the arbiter's, at ``add_server`` time, and it
refuses to make it while another thread is alive. Every later fork comes from
the arbiter, which never starts a thread. The master keeps the role a user
sees: it takes the signals, forwards them as commands over a socketpair, and
learns the workers' pids from the arbiter's reports.

Rules
-----
1. Bind before fork; selectors, reactors and thread pools only after it. A
   child never touches its parent's Reactor: the epoll instance is shared
   across fork, and ``epoll_ctl`` in the child would change the parent's.
2. The first thing a child does is forget the signal handling it inherited
   (the parent's wakeup fd and Python-level handlers).
3. The listener is non-blocking in every process (the flag lives in the
   shared open file description), so workers that lose an accept race get
   EAGAIN instead of blocking. The master restores the mode at the end.
4. Only the master unlinks a Unix socket path (``UnixSocketPath`` checks the pid).
5. Signals are recorded and handled in each process's loop. Workers and the
   arbiter ignore SIGINT/SIGHUP/SIGTTIN/SIGTTOU (a terminal's Ctrl-C reaches
   the whole process group); the master decides and commands.
6. Exit codes are a protocol: 0, the worker stopped as asked or after
   ``max_requests``; ``WORKER_BOOT_FAILED`` (3), it could not start, so
   respawning stops and the master's ``serve_forever()`` raises
   ``WorkerBootError``; anything else, a crash: respawn, with backoff when
   crashes come fast.
7. Death propagates down: the arbiter sees EOF on its control socket when the
   master dies (even by SIGKILL) and stops the workers; workers see EOF on the
   arbiter's death pipe and stop by themselves.
8. Liveness: each worker's loop writes a heartbeat byte to its own pipe. A
   worker silent for ``heartbeat_timeout`` (a handler stuck in the loop
   thread) gets SIGABRT, which makes ``faulthandler`` log every thread's
   traceback, then SIGKILL, and is replaced.
9. The arbiter reaps with ``waitpid`` on its own workers' pids only.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import random
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, NoReturn

from ._hosting import Attachment, Dispatch, HostedServer, describe_server, make_nonblocking
from .dispatch import ThreadPool
from .loop import Reactor

__all__ = ["Prefork", "PreforkError", "WorkerBootError", "WORKER_BOOT_FAILED"]

logger = logging.getLogger(__name__)

_SignalMask = set[int | signal.Signals]

#: Exit status of a worker that could not start; it stops respawning.
WORKER_BOOT_FAILED = 3

_PAUSED_RECYCLING = "max_requests"
_CONTROLLED_ELSEWHERE = ("SIGINT", "SIGHUP", "SIGTTIN", "SIGTTOU")
#: Time between SIGABRT (traceback) and SIGKILL for a stuck worker.
_ABORT_GRACE = 2.0
_CRASH_BACKOFF_MIN = 0.1
_CRASH_BACKOFF_MAX = 5.0
#: A worker that dies sooner than this after starting counts as crashing fast.
_FAST_CRASH = 1.0


class PreforkError(RuntimeError):
    """The pre-fork pool cannot go on (its arbiter died, or it cannot fork)."""


class WorkerBootError(PreforkError):
    """A worker failed while starting; respawning stopped instead of looping."""


class Prefork(Dispatch):
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
            requests may take before the worker is killed.
        handle_signals: opt in to gunicorn-style signals on the master's
            Reactor (main thread only): SIGTERM and SIGINT stop the reactor
            (closing it then stops the workers gracefully), SIGHUP reloads
            every Prefork pool on it (new workers first, then the old ones
            retire), SIGTTIN/SIGTTOU add or remove one worker. Off by default:
            signals belong to the application, which may install its own
            handlers or call ``reload()``/``increase()``/``decrease()``.
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
        self.on_worker_start = on_worker_start
        self._attachment: _MasterSide | None = None

    def __repr__(self) -> str:
        return (f"Prefork(workers={self.workers}, threads={self.threads}, "
                f"max_requests={self.max_requests})")

    def attach(self, reactor: Reactor, server: Any, *, service_interval: float | None,
               handle_timeouts: bool) -> Attachment:
        """Fork the arbiter, which forks the workers; see the module docstring."""
        if self._attachment is not None:
            raise ValueError(f"{self!r} already serves {describe_server(self._attachment.server)}")
        self._attachment = _MasterSide(self, reactor, server, service_interval, handle_timeouts)
        return self._attachment

    # -- control (master side) ----------------------------------------------

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live workers, as last reported by the arbiter."""
        return sorted(self._attachment.workers) if self._attachment else []

    @property
    def arbiter_pid(self) -> int | None:
        """Pid of the arbiter process, while there is one."""
        return self._attachment.arbiter_pid if self._attachment else None

    def reload(self) -> None:
        """Rolling restart: start a new set of workers, retiring an old one as each new one is ready."""
        self._command("reload")

    def increase(self) -> None:
        """Run one worker more."""
        self._command("increase")

    def decrease(self) -> None:
        """Run one worker fewer (never below one); the oldest retires gracefully."""
        self._command("decrease")

    def stats(self) -> dict[str, Any]:
        """A snapshot: target count, live worker pids, ready pids, arbiter pid, workers started so far."""
        side = self._attachment
        if side is None:
            return {"workers": self.workers, "pids": [], "ready": [], "arbiter": None, "spawned": 0}
        return {"workers": side.target, "pids": sorted(side.workers), "ready": sorted(side.ready),
                "arbiter": side.arbiter_pid, "spawned": side.spawned}

    def _command(self, name: str) -> None:
        if self._attachment is None:
            raise RuntimeError(f"{self!r} is not serving")
        self._attachment.send({"cmd": name})


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _forget_inherited_signals() -> None:
    """In a fresh child: drop the parent's wakeup fd and Python-level signal handlers."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(signum, signal.SIG_DFL)


def _fork_with_signals_blocked() -> tuple[int, _SignalMask]:
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


def _ignore_controlled_signals() -> None:
    for name in _CONTROLLED_ELSEWHERE:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class _LineChannel:
    """Newline-delimited JSON over a stream socket, non-blocking on the reading side."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> bool:
        data = json.dumps(message).encode() + b"\n"
        try:
            self.sock.sendall(data)
        except OSError:
            return False  # the other side is gone; its EOF handler deals with it
        return True

    def receive(self) -> list[dict[str, Any]] | None:
        """Messages that arrived; None at EOF."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except ConnectionError:
            data = b""
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]


# ---------------------------------------------------------------------------
# Master side
# ---------------------------------------------------------------------------


class _MasterSide:
    """The master's attachment: forks the arbiter, relays commands, tracks worker pids."""

    def __init__(self, prefork: Prefork, reactor: Reactor, server: Any,
                 service_interval: float | None, handle_timeouts: bool) -> None:
        self.prefork = prefork
        self.reactor = reactor
        self._server = server
        self.name = describe_server(server)
        self.service_interval = service_interval
        self.handle_timeouts = handle_timeouts
        self.target = prefork.workers
        self.workers: set[int] = set()
        self.ready: set[int] = set()
        self.spawned = 0
        self.arbiter_pid: int | None = None
        self.master_pid = os.getpid()
        self._channel: _LineChannel | None = None
        self._restore_mode: Callable[[], None] | None = None
        self._signals: list[int] = []

    @property
    def server(self) -> Any:
        return self._server

    @property
    def dispatch(self) -> Dispatch:
        return self.prefork

    def start(self) -> None:
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            raise PreforkError(
                f"{self.name}: refusing to fork while other threads run ({', '.join(others)}); "
                "add Prefork servers before starting threads (a ThreadPool starts its threads "
                "with its first request, a Reactor's thread when it is started)")
        self._restore_mode = make_nonblocking(self._server, self._server.fileno())
        ours, theirs = socket.socketpair()
        self.master_pid = os.getpid()  # the arbiter may be re-parented: getppid() then says 1
        try:
            pid, signal_mask = _fork_with_signals_blocked()
        except OSError as exc:
            ours.close()
            theirs.close()
            raise PreforkError(f"{self.name}: cannot fork the arbiter: {exc}") from exc
        if pid == 0:
            ours.close()
            _arbiter_main(self, theirs, signal_mask)
        theirs.close()
        self.arbiter_pid = pid
        ours.setblocking(False)
        self._channel = _LineChannel(ours)
        self.reactor.add_reader(ours, self._on_message)
        if self.prefork.handle_signals and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        logger.info("%s: arbiter %d started for %d workers", self.name, pid, self.target)

    def send(self, message: dict[str, Any]) -> None:
        if self._channel is not None:
            self._channel.send(message)

    def _other_prefork_sides(self) -> list[_MasterSide]:
        sides = []
        for server in self.reactor.servers:
            strategy = self.reactor.dispatch_of(server)
            if isinstance(strategy, Prefork) and strategy._attachment not in (None, self):
                sides.append(strategy._attachment)
        return sides

    def _release_signal_handlers(self) -> None:
        """Hand the shared handlers to another Prefork server on this reactor, or remove them."""
        if not self._signals:
            return
        heirs = [] if self.reactor.closed else self._other_prefork_sides()
        if heirs:
            heirs[0]._signals, self._signals = self._signals, []
            return
        for signum in self._signals:
            self.reactor.remove_signal_handler(signum)
        self._signals.clear()

    def _install_signal_handlers(self) -> None:
        # One set of handlers per reactor, routing to every Prefork on it.
        if any(side._signals for side in self._other_prefork_sides()):
            return
        reactor = self.reactor

        def each_prefork(action: Callable[[Prefork], None]) -> Callable[[], None]:
            def run() -> None:
                for server in reactor.servers:
                    strategy = reactor.dispatch_of(server)
                    if isinstance(strategy, Prefork):
                        action(strategy)
            return run

        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: reactor.stop,
            signal.SIGINT: reactor.stop,
            signal.SIGHUP: each_prefork(Prefork.reload),
            signal.SIGTTIN: each_prefork(Prefork.increase),
            signal.SIGTTOU: each_prefork(Prefork.decrease),
        }
        for signum, handler in handlers.items():
            reactor.add_signal_handler(signum, handler)
            self._signals.append(signum)

    def _on_message(self) -> None:
        assert self._channel is not None
        messages = self._channel.receive()
        if messages is None:
            self._on_arbiter_gone()
            return
        for message in messages:
            event, pid = message.get("event"), message.get("pid", 0)
            if event == "spawned":
                self.workers.add(pid)
                self.spawned += 1
            elif event == "ready":
                self.ready.add(pid)
            elif event == "exited":
                self.workers.discard(pid)
                self.ready.discard(pid)
            elif event == "target":
                self.target = message["workers"]
            elif event == "boot_failed":
                error = WorkerBootError(f"{self.name}: {message['reason']}")
                logger.error("%s", error)
                self.reactor.fail(error)

    def _on_arbiter_gone(self) -> None:
        self._close_channel()
        arbiter_pid = self.arbiter_pid
        code = self._reap_arbiter(block=False)
        shown = _describe_exit(code) if code is not None else "still running"
        logger.error("%s: the arbiter %s exited unexpectedly (%s); its workers stop by themselves",
                     self.name, arbiter_pid, shown)
        self.workers.clear()
        self.ready.clear()
        self.reactor.fail(PreforkError(f"{self.name}: arbiter exited unexpectedly ({shown})"))

    def _reap_arbiter(self, block: bool) -> int | None:
        if self.arbiter_pid is None:
            return None
        try:
            pid, status = os.waitpid(self.arbiter_pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.arbiter_pid = None
            return None
        if pid == 0:
            return None
        self.arbiter_pid = None
        return _exit_code(status)

    def _close_channel(self) -> None:
        if self._channel is not None:
            if not self.reactor.closed:
                self.reactor.remove_reader(self._channel.sock)
            self._channel.sock.close()
            self._channel = None

    def detach(self) -> None:
        """Stop the workers gracefully (within graceful_timeout), then the arbiter; restore the socket."""
        try:
            exited = True
            if self._channel is not None:
                channel = self._channel
                channel.send({"cmd": "stop"})
                if not self.reactor.closed:
                    self.reactor.remove_reader(channel.sock)
                exited = self._wait_for_eof(channel.sock, self.prefork.graceful_timeout + _ABORT_GRACE + 3.0)
                channel.sock.close()
                self._channel = None
            if self.arbiter_pid is not None:
                if not exited:
                    logger.error("%s: arbiter %d did not stop in time; killing it", self.name, self.arbiter_pid)
                    try:
                        os.kill(self.arbiter_pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                # The arbiter closes its control socket only by exiting, so
                # after EOF (or SIGKILL) this wait is short.
                self._reap_arbiter(block=True)
            self.workers.clear()
            self.ready.clear()
        finally:
            # Only now: a second SIGTERM or Ctrl-C during the drain must not
            # kill the master before it has closed (and unlinked) its socket.
            self._release_signal_handlers()
            if self._restore_mode is not None:
                self._restore_mode()
                self._restore_mode = None
            self.prefork._attachment = None

    @staticmethod
    def _wait_for_eof(sock: socket.socket, timeout: float) -> bool:
        """Read until EOF or ``timeout``; True at EOF."""
        sock.settimeout(timeout)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass  # reset: the peer is gone too
        return True


# ---------------------------------------------------------------------------
# Arbiter
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    pid: int
    pipe: int
    generation: int
    started: float
    last_seen: float
    ready: bool = False
    retiring: bool = False
    kill_timer: Any = None
    aborted: bool = False


@dataclass
class _ArbiterState:
    target: int
    generation: int = 0
    stopping: bool = False
    crash_backoff: float = 0.0
    respawn_timer: Any = None
    workers: dict[int, _Worker] = field(default_factory=dict)


def _arbiter_main(master: _MasterSide, control: socket.socket, signal_mask: _SignalMask) -> NoReturn:
    code = 1
    try:
        _forget_inherited_signals()
        _ignore_controlled_signals()
        _Arbiter(master, control, signal_mask).run()
        code = 0
    except BaseException:
        logger.exception("%s: arbiter failed", master.name)
    finally:
        os._exit(code)


class _Arbiter:
    """Keeps ``target`` workers alive; runs in its own single-threaded process."""

    def __init__(self, master: _MasterSide, control: socket.socket, signal_mask: _SignalMask) -> None:
        self.signal_mask = signal_mask
        self.prefork = master.prefork
        self.server = master.server
        self.name = master.name
        self.service_interval = master.service_interval
        self.handle_timeouts = master.handle_timeouts
        self.master_pid = master.master_pid
        self.state = _ArbiterState(target=master.target)
        control.setblocking(False)
        self.channel = _LineChannel(control)
        self.reactor = Reactor()
        # Workers watch the read end; it reaches EOF when this process dies.
        self.death_read, self.death_write = os.pipe()

    def run(self) -> None:
        reactor = self.reactor
        reactor.add_reader(self.channel.sock, self._on_command)
        reactor.add_signal_handler(signal.SIGCHLD, self._reap)
        reactor.add_signal_handler(signal.SIGTERM, self._begin_stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.signal_mask)  # what arrived since the fork lands now
        self._schedule_liveness_check()
        self._spawn_missing()
        reactor.serve_forever()
        self.channel.send({"event": "stopped"})

    # -- commands from the master --------------------------------------------

    def _on_command(self) -> None:
        messages = self.channel.receive()
        if messages is None:
            if not self.state.stopping:
                logger.warning("%s: master %d is gone; stopping the workers", self.name, self.master_pid)
            self.reactor.remove_reader(self.channel.sock)
            self._begin_stop()
            return
        for message in messages:
            command = message.get("cmd")
            if command == "stop":
                self._begin_stop()
            elif command == "reload":
                self._reload()
            elif command == "increase":
                self._set_target(self.state.target + 1)
            elif command == "decrease":
                self._set_target(max(self.state.target - 1, 1))

    def _set_target(self, target: int) -> None:
        state = self.state
        if state.stopping:
            return
        state.target = target
        self.channel.send({"event": "target", "workers": target})
        current = self._current()  # oldest first: the oldest retire
        for worker in current[:max(len(current) - target, 0)]:
            self._retire(worker)
        self._spawn_missing()

    def _reload(self) -> None:
        state = self.state
        if state.stopping:
            return
        state.generation += 1
        logger.info("%s: reloading: starting %d new workers", self.name, state.target)
        self._spawn_missing()

    # -- spawning ----------------------------------------------------------

    def _current(self) -> list[_Worker]:
        """Workers of the current generation that are not retiring, oldest first."""
        generation = self.state.generation
        return sorted((w for w in self.state.workers.values() if w.generation == generation and not w.retiring),
                      key=lambda w: w.started)

    def _spawn_missing(self) -> None:
        state = self.state
        if state.stopping or state.respawn_timer is not None:
            return
        for _ in range(state.target - len(self._current())):
            self._spawn()

    def _respawn_later(self, delay: float) -> None:
        def respawn() -> None:
            self.state.respawn_timer = None
            self._spawn_missing()

        if self.state.respawn_timer is None:
            self.state.respawn_timer = self.reactor.call_later(delay, respawn)

    def _spawn(self) -> None:
        pipe_read, pipe_write = os.pipe()
        pid, signal_mask = _fork_with_signals_blocked()
        if pid == 0:
            os.close(pipe_read)
            _worker_main(self, pipe_write, signal_mask)
        os.close(pipe_write)
        now = self.reactor.time()
        worker = _Worker(pid, pipe_read, self.state.generation, now, now)
        self.state.workers[pid] = worker
        self.reactor.add_reader(pipe_read, self._on_worker_pipe, worker)
        self.channel.send({"event": "spawned", "pid": pid})

    # -- liveness ----------------------------------------------------------

    def _on_worker_pipe(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.pipe, 4096)
        except BlockingIOError:
            return
        if not data:
            self._close_pipe(worker)  # it exited; SIGCHLD reaps it
            return
        worker.last_seen = self.reactor.time()
        if b"R" in data and not worker.ready:
            worker.ready = True
            self.channel.send({"event": "ready", "pid": worker.pid})
            self._retire_one_outgoing()

    def _retire_one_outgoing(self) -> None:
        generation = self.state.generation
        outgoing = sorted((w for w in self.state.workers.values() if w.generation != generation and not w.retiring),
                          key=lambda w: w.started)
        if outgoing:
            self._retire(outgoing[0])

    def _close_pipe(self, worker: _Worker) -> None:
        if worker.pipe >= 0:
            self.reactor.remove_reader(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = -1

    def _schedule_liveness_check(self) -> None:
        interval = max(min(self.prefork.heartbeat_timeout / 4, 1.0), 0.02)
        self.reactor.call_later(interval, self._check_liveness)

    def _check_liveness(self) -> None:
        self._schedule_liveness_check()
        now = self.reactor.time()
        timeout = self.prefork.heartbeat_timeout
        for worker in list(self.state.workers.values()):
            if worker.retiring or worker.aborted or now - worker.last_seen <= timeout:
                continue
            what = "did not finish booting" if not worker.ready else "sent no heartbeat"
            logger.error("%s: worker %d %s for %.1fs; aborting it (SIGABRT, traceback follows on stderr)",
                         self.name, worker.pid, what, now - worker.last_seen)
            worker.aborted = True
            self._signal(worker, signal.SIGABRT)
            worker.kill_timer = self.reactor.call_later(_ABORT_GRACE, self._signal, worker, signal.SIGKILL)
        self._reap()  # belt and braces: a coalesced SIGCHLD must not leave a zombie

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass

    def _retire(self, worker: _Worker) -> None:
        """Ask a worker to finish its requests and exit; kill it after graceful_timeout."""
        if worker.retiring:
            return
        worker.retiring = True
        self._signal(worker, signal.SIGTERM)
        worker.kill_timer = self.reactor.call_later(self.prefork.graceful_timeout, self._signal, worker,
                                                    signal.SIGKILL)

    # -- reaping -----------------------------------------------------------

    def _reap(self) -> None:
        for worker in list(self.state.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid:
                self._on_exit(worker, _exit_code(status))

    def _on_exit(self, worker: _Worker, code: int) -> None:
        state = self.state
        del state.workers[worker.pid]
        self._close_pipe(worker)
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        self.channel.send({"event": "exited", "pid": worker.pid, "code": code})
        if state.stopping:
            if not state.workers:
                self.reactor.stop()
            return
        if code == WORKER_BOOT_FAILED:
            reason = f"worker {worker.pid} failed to boot (see its error above); not respawning"
            logger.error("%s: %s", self.name, reason)
            self.channel.send({"event": "boot_failed", "pid": worker.pid, "reason": reason})
            self._begin_stop()
            return
        if worker.retiring or code == 0:
            logger.info("%s: worker %d exited (%s)", self.name, worker.pid, _describe_exit(code))
            self._spawn_missing()
            return
        lived = self.reactor.time() - worker.started
        logger.warning("%s: worker %d died (%s) after %.1fs; respawning",
                       self.name, worker.pid, _describe_exit(code), lived)
        if lived < _FAST_CRASH:
            state.crash_backoff = min(max(state.crash_backoff * 2, _CRASH_BACKOFF_MIN), _CRASH_BACKOFF_MAX)
            self._respawn_later(state.crash_backoff)
        else:
            state.crash_backoff = 0.0
            self._spawn_missing()

    # -- stopping ----------------------------------------------------------

    def _begin_stop(self) -> None:
        state = self.state
        if state.stopping:
            return
        state.stopping = True
        if state.respawn_timer is not None:
            state.respawn_timer.cancel()
            state.respawn_timer = None
        if not state.workers:
            self.reactor.stop()
            return
        for worker in list(state.workers.values()):
            self._retire(worker)


# ---------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------


class _RequestLimit(Dispatch):
    """Wraps a strategy; after ``limit`` requests, stops taking more and stops the worker's loop."""

    def __init__(self, inner: Dispatch, limit: int, reactor: Reactor) -> None:
        self.inner = inner
        self.limit = limit
        self.reactor = reactor
        self.count = 0

    def bind(self, hosted: HostedServer) -> None:
        self.inner.bind(hosted)

    def unbind(self, hosted: HostedServer) -> None:
        self.inner.unbind(hosted)

    def owns_current_thread(self) -> bool:
        return self.inner.owns_current_thread()

    def submit(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        self.count += 1
        if self.count >= self.limit:
            hosted.pause(_PAUSED_RECYCLING)
            self.reactor.stop()
        self.inner.submit(hosted, request, client_address)


def _worker_main(arbiter: _Arbiter, heartbeat: int, signal_mask: _SignalMask) -> NoReturn:
    code = WORKER_BOOT_FAILED
    prefork = arbiter.prefork
    try:
        _forget_inherited_signals()
        _ignore_controlled_signals()
        # What the worker inherited from the arbiter and must not keep open.
        arbiter.channel.sock.close()
        os.close(arbiter.death_write)
        for other in arbiter.state.workers.values():
            if other.pipe >= 0:
                os.close(other.pipe)
        faulthandler.enable(all_threads=True)  # SIGABRT from the arbiter logs every thread's stack
        if prefork.on_worker_start is not None:
            prefork.on_worker_start()
        reactor = Reactor()
        inner: Dispatch = (ThreadPool(prefork.threads, drain_timeout=prefork.graceful_timeout)
                           if prefork.threads else Dispatch())
        limit = prefork.max_requests
        if limit and prefork.max_requests_jitter:
            limit += random.randint(0, prefork.max_requests_jitter)
        # Only a worker that recycles pays for counting its requests.
        dispatch = _RequestLimit(inner, limit, reactor) if limit else inner
        reactor.add_server(arbiter.server, dispatch,
                           service_interval=arbiter.service_interval, handle_timeouts=arbiter.handle_timeouts)
        os.set_blocking(heartbeat, False)

        def beat(marker: bytes = b".") -> None:
            try:
                os.write(heartbeat, marker)
            except BlockingIOError:
                pass  # the arbiter has unread beats already
            except BrokenPipeError:
                reactor.stop()  # the arbiter is gone

        def beat_periodically() -> None:
            reactor.call_later(interval, beat_periodically)
            beat()

        def on_arbiter_death() -> None:
            reactor.remove_reader(arbiter.death_read)
            logger.warning("%s: worker %d lost its arbiter; stopping", arbiter.name, os.getpid())
            reactor.stop()

        interval = max(min(prefork.heartbeat_timeout / 4, 1.0), 0.02)
        reactor.add_reader(arbiter.death_read, on_arbiter_death)
        reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)  # a SIGTERM held since the fork lands now
        reactor.call_later(interval, beat_periodically)
        beat(b"R")
        code = 1  # from here on, an unexpected exit is a crash, not a boot failure
        reactor.serve_forever()
        reactor.remove_server(arbiter.server)  # drains a ThreadPool within graceful_timeout
        code = 0
    except BaseException as exc:
        if code == WORKER_BOOT_FAILED:
            logger.error("%s: worker %d failed to boot: %r", arbiter.name, os.getpid(), exc,
                         exc_info=not isinstance(exc, KeyboardInterrupt))
        else:
            logger.exception("%s: worker %d failed", arbiter.name, os.getpid())
    finally:
        os._exit(code)
