"""The arbiter process: keeps ``target`` workers alive, single-threaded for its whole life.

It forks, reaps, watches (heartbeats) and replaces the workers, obeys the
master's commands and reports to it over the control socket, and keeps a
standby ready to take its place. It holds its listener, its control socket,
stdio and its own pipes (the workers' heartbeats, their death pipe, its
standby's pipe), and nothing else of the master's.

It also sums the stats the workers send with their heartbeats
(``_stats.PoolCounters``) and reports the sum to the master when it changed,
at most once per quarter heartbeat interval, and once more before it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..loop import EventLoop
from ._messages import BOOTED, DONE, Command, Event, HeartbeatReader, LineChannel, event, parse
from ._process import (ABORT_GRACE, FAST_CRASH, WORKER_BOOT_FAILED, Plan, SignalMask, close_inherited_fds,
                       describe_exit, fork_with_signals_blocked, forget_inherited_signals, heartbeat_interval,
                       ignore_controlled_signals, next_backoff, orphan_grace, reap)
from ._stats import PoolCounters, valid_stats
from .standby import Takeover, fork_standby
from .worker import worker_main

__all__ = ["arbiter_main"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Worker:
    pid: int
    pipe: int
    generation: int
    started: float
    last_seen: float
    ready: bool = False
    retiring: bool = False
    kill_at: float | None = None
    kill_timer: Any = None
    aborted: bool = False
    reader: HeartbeatReader = field(default_factory=HeartbeatReader)


@dataclass
class _ArbiterState:
    target: int
    generation: int = 0
    stopping: bool = False
    crash_backoff: float = 0.0
    respawn_timer: Any = None
    workers: dict[int, _Worker] = field(default_factory=dict)


def arbiter_main(plan: Plan, control: socket.socket, signal_mask: SignalMask,
                 takeover: Takeover | None = None) -> NoReturn:
    """Run the arbiter in a freshly forked child (signals blocked), or in a standby taking over; never returns."""
    code = 1
    try:
        if takeover is None:
            forget_inherited_signals()
            ignore_controlled_signals()
            close_inherited_fds({plan.listener, control.fileno(), *plan.settings.keep_fds})
        _Arbiter(plan, control, signal_mask, takeover).run()
        code = 0
    except BaseException:
        logger.exception("%s: arbiter %d failed", plan.name, os.getpid())
    finally:
        os._exit(code)


class _Arbiter:
    """Keeps ``target`` workers alive; runs in its own single-threaded process."""

    def __init__(self, plan: Plan, control: socket.socket, signal_mask: SignalMask,
                 takeover: Takeover | None) -> None:
        self.plan = plan
        self.name = plan.name
        self.control = control
        self.signal_mask = signal_mask
        self.takeover = takeover
        self.state = _ArbiterState(target=plan.settings.workers)
        self.backoff = takeover.delay if takeover is not None else 0.0
        self.booted_at: float | None = None
        # The standby first, while this process holds nothing but what it will hold too.
        self.standby_pid: int | None
        self.standby_pid, self.standby_pipe = self._fork_standby()
        control.setblocking(False)
        self.channel = LineChannel(control)
        self.reactor = EventLoop()  # hosts no server: the bare loop is enough
        # Workers watch the read end; it reaches EOF when this process dies.
        self.death_read, self.death_write = os.pipe()
        self.orphaned = False
        self.counters = PoolCounters(plan.stats_gauges)
        self.stats_spacing = heartbeat_interval(plan.settings.heartbeat_timeout) / 4
        self.stats_timer: Any = None
        self.stats_sent_at = float("-inf")

    def _fork_standby(self) -> tuple[int, int]:
        plan, control = self.plan, self.control

        def become_arbiter(takeover: Takeover, signal_mask: SignalMask) -> NoReturn:
            arbiter_main(plan, control, signal_mask, takeover)

        return fork_standby(plan, control, self.signal_mask, self.booted_at, self.backoff, become_arbiter)

    def run(self) -> None:
        reactor = self.reactor
        reactor.add_reader(self.channel.sock, self._on_command)
        reactor.add_signal_handler(signal.SIGCHLD, self._reap)
        reactor.add_signal_handler(signal.SIGTERM, self._begin_stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, self.signal_mask)  # what arrived since the fork lands now
        takeover = self.takeover
        if takeover is not None:
            logger.warning("%s: arbiter %d took over from arbiter %d (%s); starting workers in %.1fs",
                           self.name, os.getpid(), takeover.previous, takeover.reason, takeover.delay)
            self.channel.send(event(Event.ARBITER, pid=os.getpid(), previous=takeover.previous,
                                    reason=takeover.reason), resync=True)
        self._schedule_liveness_check()
        if self.backoff:
            self._respawn_later(self.backoff)
        else:
            self._spawn_missing()
        reactor.serve_forever()
        if self.stats_timer is not None:  # the last workers' last reports
            self._send_stats()
        self.channel.send(event(Event.STOPPED))
        self._dismiss_standby()

    def _dismiss_standby(self) -> None:
        """A clean exit: tell the standby (it exits too) and reap it."""
        if self.standby_pid is None:
            return
        try:
            os.write(self.standby_pipe, DONE)
        except OSError:
            pass  # it died already
        os.close(self.standby_pipe)
        try:
            reap(self.standby_pid, block=True)
        except ChildProcessError:
            pass

    # -- commands from the master --------------------------------------------

    def _on_command(self) -> None:
        messages = self.channel.receive()
        if messages is None:
            if not self.state.stopping:
                logger.warning("%s: master %d is gone; stopping the workers (killing them after %.1fs)",
                               self.name, self.plan.master_pid, orphan_grace(self.plan.settings.graceful_timeout))
            self.reactor.remove_reader(self.channel.sock)
            self.orphaned = True
            self._begin_stop()
            return
        for message in messages:
            kind = parse(Command, message.get("cmd"))
            if kind is Command.STOP:
                self._begin_stop()
            elif kind is Command.ABORT:
                self._abort()
            elif kind is Command.RELOAD:
                self._reload()
            elif kind is Command.INCREASE:
                self._set_target(self.state.target + 1)
            elif kind is Command.DECREASE:
                self._set_target(max(self.state.target - 1, 1))
            elif kind is Command.TARGET:
                self._set_target(max(int(message["workers"]), 1))

    def _set_target(self, target: int) -> None:
        state = self.state
        if state.stopping:
            return
        state.target = target
        self.channel.send(event(Event.TARGET, workers=target))
        current = self._current()  # oldest first: the oldest retire
        for worker in current[:max(len(current) - target, 0)]:
            self._retire(worker, self.plan.settings.graceful_timeout)
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
        pid, signal_mask = fork_with_signals_blocked()
        if pid == 0:
            worker_main(self.plan, pipe_write, self.death_read, signal_mask)
        os.close(pipe_write)
        os.set_blocking(pipe_read, False)  # drained at exit: a grandchild may hold the write end
        now = self.reactor.time()
        worker = _Worker(pid, pipe_read, self.state.generation, now, now)
        self.state.workers[pid] = worker
        self.reactor.add_reader(pipe_read, self._on_worker_pipe, worker)
        self.channel.send(event(Event.SPAWNED, pid=pid))

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
        ready, stats = worker.reader.feed(data)
        self._take_stats(worker, stats)
        if ready and not worker.ready:
            worker.ready = True
            self._note_booted()
            self.channel.send(event(Event.READY, pid=worker.pid))
            self._retire_one_outgoing()

    def _drain_pipe(self, worker: _Worker) -> None:
        """Read what an exited worker left in its pipe (its last stats report)."""
        while worker.pipe >= 0:
            try:
                data = os.read(worker.pipe, 4096)
            except BlockingIOError:
                return
            if not data:
                return
            self._take_stats(worker, worker.reader.feed(data)[1])

    # -- stats -------------------------------------------------------------

    def _take_stats(self, worker: _Worker, report: dict[str, Any] | None) -> None:
        stats = valid_stats(report)
        if stats is not None and self.counters.report(worker.pid, stats):
            self._stats_changed()

    def _stats_changed(self) -> None:
        """Report the sum to the master soon: at once, unless a report went less than a spacing ago."""
        if self.stats_timer is None:
            delay = max(self.stats_sent_at + self.stats_spacing - self.reactor.time(), 0.0)
            self.stats_timer = self.reactor.call_later(delay, self._send_stats)

    def _send_stats(self) -> None:
        if self.stats_timer is not None:
            self.stats_timer.cancel()
            self.stats_timer = None
        self.stats_sent_at = self.reactor.time()
        self.channel.send(event(Event.STATS, counters=self.counters.total()))

    def _note_booted(self) -> None:
        """Once the first workers are all ready, tell the standby: a death from now on is not a boot failure."""
        if self.booted_at is not None or sum(w.ready for w in self._current()) < self.state.target:
            return
        self.booted_at = time.monotonic()
        try:
            os.write(self.standby_pipe, BOOTED)
        except OSError:
            pass  # the standby died; the one that replaces it is forked knowing

    def _retire_one_outgoing(self) -> None:
        generation = self.state.generation
        outgoing = sorted((w for w in self.state.workers.values() if w.generation != generation and not w.retiring),
                          key=lambda w: w.started)
        if outgoing:
            self._retire(outgoing[0], self.plan.settings.graceful_timeout)

    def _close_pipe(self, worker: _Worker) -> None:
        if worker.pipe >= 0:
            self.reactor.remove_reader(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = -1

    def _schedule_liveness_check(self) -> None:
        self.reactor.call_later(heartbeat_interval(self.plan.settings.heartbeat_timeout), self._check_liveness)

    def _check_liveness(self) -> None:
        self._schedule_liveness_check()
        now = self.reactor.time()
        timeout = self.plan.settings.heartbeat_timeout
        for worker in list(self.state.workers.values()):
            if worker.retiring or worker.aborted or now - worker.last_seen <= timeout:
                continue
            what = "did not finish booting" if not worker.ready else "sent no heartbeat"
            logger.error("%s: worker %d %s for %.1fs; aborting it (SIGABRT, traceback follows on stderr)",
                         self.name, worker.pid, what, now - worker.last_seen)
            worker.aborted = True
            self._signal(worker, signal.SIGABRT)
            worker.kill_timer = self.reactor.call_later(ABORT_GRACE, self._signal, worker, signal.SIGKILL)
        self._reap()  # belt and braces: a coalesced SIGCHLD must not leave a zombie

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            os.kill(worker.pid, signum)
        except ProcessLookupError:
            pass

    def _retire(self, worker: _Worker, grace: float) -> None:
        """Ask a worker to finish its requests and exit; kill it after ``grace`` (sooner if already due)."""
        kill_at = self.reactor.time() + grace
        if worker.retiring and worker.kill_at is not None and worker.kill_at <= kill_at:
            return
        if not worker.retiring:
            worker.retiring = True
            self._signal(worker, signal.SIGTERM)
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        worker.kill_at = kill_at
        worker.kill_timer = self.reactor.call_at(kill_at, self._signal, worker, signal.SIGKILL)

    # -- reaping -----------------------------------------------------------

    def _reap(self) -> None:
        for worker in list(self.state.workers.values()):
            try:
                code = reap(worker.pid)
            except ChildProcessError:
                code = 0
            if code is not None:
                self._on_exit(worker, code)
        self._reap_standby()

    def _reap_standby(self) -> None:
        if self.standby_pid is None:
            return
        try:
            code = reap(self.standby_pid)
        except ChildProcessError:
            code = 0
        if code is None:
            return
        os.close(self.standby_pipe)
        if self.state.stopping:
            logger.info("%s: standby %d exited (%s) while stopping", self.name, self.standby_pid,
                        describe_exit(code))
            self.standby_pid = None
            return
        logger.warning("%s: standby %d exited (%s); forking a new one", self.name, self.standby_pid,
                       describe_exit(code))
        self.standby_pid, self.standby_pipe = self._fork_standby()

    def _on_exit(self, worker: _Worker, code: int) -> None:
        state = self.state
        del state.workers[worker.pid]
        self._drain_pipe(worker)
        self._close_pipe(worker)
        if self.counters.exited(worker.pid):
            self._stats_changed()  # its gauges are gone
        if worker.kill_timer is not None:
            worker.kill_timer.cancel()
        self.channel.send(event(Event.EXITED, pid=worker.pid, code=code))
        if state.stopping:
            if not state.workers:
                self.reactor.stop()
            return
        if code == WORKER_BOOT_FAILED and self._boot_failure_survived(worker):
            return
        if code == WORKER_BOOT_FAILED:
            reason = f"worker {worker.pid} failed to boot (see its error above); not respawning"
            logger.error("%s: %s", self.name, reason)
            self.channel.send(event(Event.BOOT_FAILED, pid=worker.pid, reason=reason))
            self._begin_stop()
            return
        if worker.retiring or code == 0:
            logger.info("%s: worker %d exited (%s)", self.name, worker.pid, describe_exit(code))
            self._spawn_missing()
            return
        lived = self.reactor.time() - worker.started
        logger.warning("%s: worker %d died (%s) after %.1fs; respawning",
                       self.name, worker.pid, describe_exit(code), lived)
        if lived < FAST_CRASH:
            state.crash_backoff = next_backoff(state.crash_backoff)
            self._respawn_later(state.crash_backoff)
        else:
            state.crash_backoff = 0.0
            self._spawn_missing()

    def _boot_failure_survived(self, failed: _Worker) -> bool:
        """A worker failed to boot; False if that stops the pool: when no worker serves.

        While others serve, one casualty: a reload's new worker aborts the reload (its
        generation retires, the one before it goes on); a worker of an aborted reload is
        forgotten; any other is retried with the crash back-off, logged each time.
        """
        state = self.state
        if failed.retiring or failed.generation < state.generation:
            logger.error("%s: worker %d, already being replaced, failed to boot", self.name, failed.pid)
            return True
        serving = [w for w in state.workers.values() if w.ready and not w.retiring]
        older = [w for w in serving if w.generation < state.generation]
        if older:
            reason = (f"worker {failed.pid} of the reload failed to boot (see its error above); the reload is "
                      f"aborted and {len(older)} worker(s) of before it serve on")
            logger.error("%s: %s", self.name, reason)
            for worker in self._current():
                self._retire(worker, self.plan.settings.graceful_timeout)
            state.generation += 1  # generations only grow: the workers of before are the current ones again
            for worker in older:
                worker.generation = state.generation
            self.channel.send(event(Event.RELOAD_ABORTED, pid=failed.pid, reason=reason))
            return True
        if not serving:
            return False
        state.crash_backoff = next_backoff(state.crash_backoff)
        logger.error("%s: worker %d failed to boot (see its error above) while %d serve; retrying in %.1fs",
                     self.name, failed.pid, len(serving), state.crash_backoff)
        self._respawn_later(state.crash_backoff)
        return True

    # -- stopping ----------------------------------------------------------

    def _abort(self) -> None:
        """Kill every worker now (the master was told "now"); the loop stops once they are reaped."""
        self._begin_stop()
        for worker in list(self.state.workers.values()):
            self._signal(worker, signal.SIGKILL)

    def _begin_stop(self) -> None:
        """Retire every worker: within graceful_timeout, or the orphan grace once the master is gone."""
        state = self.state
        grace = orphan_grace(self.plan.settings.graceful_timeout) if self.orphaned else self.plan.settings.graceful_timeout
        if not state.stopping:
            state.stopping = True
            if state.respawn_timer is not None:
                state.respawn_timer.cancel()
                state.respawn_timer = None
        if not state.workers:
            self.reactor.stop()
            return
        for worker in list(state.workers.values()):
            self._retire(worker, grace)

