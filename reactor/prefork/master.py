"""The master's side of a pool: the attachment a Reactor hosts, the only code that talks to hosting.

It forks the arbiter when the server is added, relays commands to it, tracks
the worker pids it reports, adopts a standby that took over from a dead
arbiter, and stops the pool when the server is removed.

Its ``stats()`` never asks a child anything: it serves the last sum of the
workers' stats the arbiter pushed (``_stats.py``), over a zero of every key,
so it returns at once from the loop's thread whatever the children do.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..accept import STATS_GAUGES, HostedServer, HostingOptions, Inline, describe_server, make_nonblocking
from ..hosting import Reactor, Topology
from ._messages import Command, Event, LineChannel, command, parse
from ._process import ABORT_GRACE, Plan, PoolSettings, describe_exit, fork_with_signals_blocked, reap
from ._stats import PoolCounters, valid_stats
from .arbiter import arbiter_main

__all__ = ["PreforkError", "WorkerBootError"]

logger = logging.getLogger(__name__)

#: How often the master looks for the exit of a dead arbiter's workers it adopted (as a subreaper).
_ORPHAN_POLL = 0.1
#: After its control socket closed, how often and how many times the master looks for the
#: arbiter's exit status before reporting it as still running (at most half a second).
_EXIT_STATUS_POLL = 0.01
_EXIT_STATUS_POLLS = 50


class PreforkError(RuntimeError):
    """The pre-fork pool cannot go on (its arbiter and standby died, or it cannot fork)."""


class WorkerBootError(PreforkError):
    """A worker (or an arbiter) failed while starting; respawning stopped instead of looping."""


class MasterSide:
    """The master's attachment: forks the arbiter, relays commands, tracks worker pids.

    Args:
        settings: the pool's settings.
        strategy: the ``Prefork`` that made this attachment.
        reactor, server, options: what ``Topology.attach`` was given.
        on_detached: called once the pool is gone, so the ``Prefork`` can serve again.
    """

    def __init__(self, settings: PoolSettings, strategy: Topology, reactor: Reactor, server: Any,
                 options: HostingOptions, on_detached: Callable[[], None]) -> None:
        self.settings = settings
        self._strategy = strategy
        self._on_detached = on_detached
        self.reactor = reactor
        self._server = server
        self.name = describe_server(server)
        self.options = options
        self._on_drained: Callable[[], None] | None = None
        self._claimed = False
        self.target = settings.workers
        self.workers: set[int] = set()
        self.ready: set[int] = set()
        self.spawned = 0
        #: Reloads given up because a new worker failed to boot (the old workers served on).
        self.reloads_aborted = 0
        #: The last worker exit the arbiter reported: ``{"pid", "code", "reason"}`` (None before any).
        self.last_exit: dict[str, Any] | None = None
        self.arbiter_pid: int | None = None
        self._orphans: set[int] = set()  # a dead arbiter's workers, reaped here if we are their subreaper
        self._orphan_timer: Any = None
        self._channel: LineChannel | None = None
        self._restore_mode: Callable[[], None] | None = None
        self._signals: list[int] = []
        # The shape Inline hosting of this server with these options reports, every key zero:
        # what stats() shows for each key until the workers report it.
        self._zero_stats = HostedServer(reactor, server, Inline(), options).stats()
        #: The sums the arbiters pushed, by arbiter pid: a dead arbiter's counters carry over.
        self._counters = PoolCounters(STATS_GAUGES)

    @property
    def server(self) -> Any:
        return self._server

    @property
    def dispatch(self) -> Topology:
        return self._strategy

    def start(self) -> None:
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if others:
            raise PreforkError(
                f"{self.name}: refusing to fork while other threads run ({', '.join(others)}); "
                "add Prefork servers before starting threads (a ThreadPool starts its threads "
                "with its first request, a Reactor's thread when it is started)")
        plan = Plan(server=self._server, name=self.name, settings=self.settings, options=self.options,
                    master_pid=os.getpid(), stats_gauges=STATS_GAUGES)
        # The master never watches the listener, but nothing else on its loop may either.
        self.reactor.claim(self._server.fileno(), self)
        self._claimed = True
        self._restore_mode = make_nonblocking(self._server, self._server.fileno())
        ours, theirs = socket.socketpair()
        try:
            pid, signal_mask = fork_with_signals_blocked()
        except OSError as exc:
            ours.close()
            theirs.close()
            raise PreforkError(f"{self.name}: cannot fork the arbiter: {exc}") from exc
        if pid == 0:
            arbiter_main(plan, theirs, signal_mask)  # closes `ours` with everything else it must not hold
        theirs.close()
        self.arbiter_pid = pid
        ours.setblocking(False)
        self._channel = LineChannel(ours)
        self.reactor.add_reader(ours, self._on_message)
        if self.settings.handle_signals and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        logger.info("%s: arbiter %d started for %d workers", self.name, pid, self.target)

    def send(self, kind: Command, **fields: Any) -> None:
        if self._channel is not None:
            self._channel.send(command(kind, **fields))

    # -- signals (opt-in) ----------------------------------------------------

    def _other_sides(self) -> list[MasterSide]:
        sides = []
        for server in self.reactor.servers:
            side = self.reactor.attachment_of(server)
            if isinstance(side, MasterSide) and side is not self:
                sides.append(side)
        return sides

    def _release_signal_handlers(self) -> None:
        """Hand the shared handlers to another Prefork server on this reactor, or remove them."""
        if not self._signals:
            return
        heirs = [] if self.reactor.closed else [side for side in self._other_sides() if side.settings.handle_signals]
        if heirs:
            heirs[0]._signals, self._signals = self._signals, []
            return
        for signum in self._signals:
            self.reactor.remove_signal_handler(signum)
        self._signals.clear()

    def _install_signal_handlers(self) -> None:
        # One set of handlers per reactor, routing to every Prefork on it that opted in.
        if any(side._signals for side in self._other_sides()):
            return
        reactor = self.reactor

        def each_pool(kind: Command) -> Callable[[], None]:
            def run() -> None:
                for server in reactor.servers:
                    side = reactor.attachment_of(server)
                    if isinstance(side, MasterSide) and side.settings.handle_signals:
                        side.send(kind)
            return run

        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: reactor.stop,
            signal.SIGINT: reactor.stop,
            signal.SIGHUP: each_pool(Command.RELOAD),
            signal.SIGTTIN: each_pool(Command.INCREASE),
            signal.SIGTTOU: each_pool(Command.DECREASE),
        }
        for signum, handler in handlers.items():
            reactor.add_signal_handler(signum, handler)
            self._signals.append(signum)

    # -- reports from the arbiter --------------------------------------------

    def _on_message(self) -> None:
        assert self._channel is not None
        messages = self._channel.receive()
        if messages is None:
            if self._on_drained is not None:
                self._drained()
            else:
                self._on_arbiter_gone()
            return
        for message in messages:
            self._on_event(message)
            if parse(Event, message.get("event")) is Event.ARBITER and self._on_drained is not None:
                self.send(Command.STOP)  # a standby took over mid-stop: it stops in turn

    def _on_event(self, message: dict[str, Any]) -> None:
        kind, pid = parse(Event, message.get("event")), message.get("pid", 0)
        if kind is Event.SPAWNED:
            self.workers.add(pid)
            self.spawned += 1
        elif kind is Event.READY:
            self.ready.add(pid)
        elif kind is Event.EXITED:
            self.workers.discard(pid)
            self.ready.discard(pid)
            code = message.get("code")
            code = code if isinstance(code, int) else None
            self.last_exit = {"pid": pid, "code": code, "reason": describe_exit(code)}
        elif kind is Event.TARGET:
            self.target = message["workers"]
        elif kind is Event.RELOAD_ABORTED:
            self.reloads_aborted += 1
            logger.error("%s: %s", self.name, message.get("reason", "a reload was aborted"))
        elif kind is Event.BOOT_FAILED:
            error = WorkerBootError(f"{self.name}: {message['reason']}")
            logger.error("%s", error)
            self.reactor.fail(error)
        elif kind is Event.ARBITER:
            self._adopt_arbiter(pid, message.get("reason", "?"))
        elif kind is Event.STATS:
            counters = valid_stats(message.get("counters"))
            if counters is not None and self.arbiter_pid is not None:
                self._counters.report(self.arbiter_pid, counters)

    def _adopt_arbiter(self, pid: int, reason: str) -> None:
        """A standby took over from the dead arbiter: reap the dead one, forget its workers, resync the target."""
        dead = self.arbiter_pid
        code = None
        if dead is not None:
            try:
                # Dead for sure: the standby saw every descriptor of it closed and made sure it ends.
                code = reap(dead, block=True)
            except ChildProcessError:
                pass  # a replacement arbiter is not our child (unless we are a subreaper)
        logger.error("%s: arbiter %s died (%s); arbiter %d took over (%s); its workers stop by themselves",
                     self.name, dead, describe_exit(code), pid, reason)
        if dead is not None:
            self._counters.exited(dead)  # its counters carry over; its workers' gauges are gone
        self.arbiter_pid = pid
        self._orphans |= self.workers
        self.workers.clear()
        self.ready.clear()
        self.send(Command.TARGET, workers=self.target)
        self._reap_orphans()

    def _reap_orphans(self) -> None:
        """Reap the dead arbiter's workers that were re-parented to us (a subreaper master); forget the rest."""
        self._orphan_timer = None
        for pid in list(self._orphans):
            try:
                if reap(pid) is None:
                    continue
            except ChildProcessError:
                pass
            self._orphans.discard(pid)
        if self._orphans and not self.reactor.closed:
            self._orphan_timer = self.reactor.call_later(_ORPHAN_POLL, self._reap_orphans)

    def _on_arbiter_gone(self, attempt: int = 0) -> None:
        # The control socket reaches EOF while the kernel is still tearing the
        # arbiter down: give its exit status a moment to become reapable, so
        # the log says how it died.
        self._close_channel()
        arbiter_pid = self.arbiter_pid
        code = self._reap_arbiter(block=False)
        if code is None and arbiter_pid is not None and attempt < _EXIT_STATUS_POLLS:
            self.reactor.call_later(_EXIT_STATUS_POLL, self._on_arbiter_gone, attempt + 1)
            return
        shown = describe_exit(code) if code is not None else "still running"
        logger.error("%s: the arbiter %s exited unexpectedly (%s) and no standby took over; "
                     "its workers stop by themselves", self.name, arbiter_pid, shown)
        self.workers.clear()
        self.ready.clear()
        if arbiter_pid is not None:
            self._counters.exited(arbiter_pid)
        self.reactor.fail(PreforkError(f"{self.name}: arbiter exited unexpectedly ({shown})"))

    def _reap_arbiter(self, block: bool) -> int | None:
        if self.arbiter_pid is None:
            return None
        try:
            code = reap(self.arbiter_pid, block=block)
        except ChildProcessError:
            self.arbiter_pid = None
            return None
        if code is not None:
            self.arbiter_pid = None
        return code

    def _close_channel(self) -> None:
        if self._channel is not None:
            if not self.reactor.closed:
                self.reactor.remove_reader(self._channel.sock)
            self._channel.sock.close()
            self._channel = None

    # -- stopping ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The pool's snapshot (``Prefork.stats()``): target count, live and ready worker pids,
        arbiter pid, workers started so far; then every key of ``HostedServer.stats()`` for
        this server and options, summed over the workers as the arbiter last reported them."""
        pool: dict[str, Any] = {"workers": self.target, "pids": sorted(self.workers),
                                "ready": sorted(self.ready), "arbiter": self.arbiter_pid, "spawned": self.spawned}
        counts = {**self._zero_stats, **self._counters.total()}
        return {**pool, **{key: count for key, count in counts.items() if key not in pool}}

    def pool_stats(self) -> dict[str, Any]:
        """``Prefork.pool_stats()``: the pool's keys of ``stats()``, plus ``restarts`` and ``last_exit``."""
        return {"workers": self.target, "pids": sorted(self.workers), "ready": sorted(self.ready),
                "arbiter": self.arbiter_pid, "spawned": self.spawned,
                "restarts": max(self.spawned - self.settings.workers, 0),
                "last_exit": dict(self.last_exit) if self.last_exit is not None else None}

    def begin_drain(self, on_drained: Callable[[], None]) -> float:
        """Ask the arbiter to stop the workers gracefully; ``on_drained()`` runs once it has exited.

        Returns:
            ``graceful_timeout``, plus the time the arbiter needs to kill a late worker and exit.
        """
        if self._channel is None:
            on_drained()
            return 0.0
        self._on_drained = on_drained
        self.send(Command.STOP)
        return self.settings.graceful_timeout + ABORT_GRACE + 3.0

    def abort(self) -> None:
        """Tell the arbiter to kill its workers now and exit (``detach()`` waits for that)."""
        self._on_drained = None
        self.send(Command.ABORT)

    def _drained(self) -> None:
        """The arbiter closed the control socket while stopping: it has exited."""
        on_drained, self._on_drained = self._on_drained, None
        self._close_channel()
        if on_drained is not None:
            on_drained()

    def detach(self) -> None:
        """Reap the arbiter (aborting and, failing that, killing it), then restore the socket."""
        try:
            exited = True
            if self._channel is not None:  # not drained: aborted, or detached without a drain
                channel = self._channel
                self._on_drained = None
                if not self.reactor.closed:
                    self.reactor.remove_reader(channel.sock)
                self.send(Command.ABORT)
                exited = self._wait_for_eof(channel, ABORT_GRACE + 3.0)
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
            self._reap_orphans_now()
            self.workers.clear()
            self.ready.clear()
        finally:
            # Only now: a second SIGTERM or Ctrl-C during the drain must not
            # kill the master before it has closed (and unlinked) its socket.
            self._release_signal_handlers()
            if self._restore_mode is not None:
                self._restore_mode()
                self._restore_mode = None
            if self._claimed and not self.reactor.closed:
                self.reactor.release(self._server.fileno(), self)
            self._claimed = False
            self._on_detached()

    def _reap_orphans_now(self) -> None:
        """At detach: wait for the adopted workers of a dead arbiter (they are stopping by themselves)."""
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None
        for pid in sorted(self._orphans):
            try:
                reap(pid, block=True)
            except ChildProcessError:
                pass
        self._orphans.clear()

    def _wait_for_eof(self, channel: LineChannel, timeout: float) -> bool:
        """Read reports until EOF or ``timeout``; True at EOF.

        A standby may take over meanwhile (the arbiter died while stopping):
        it is adopted and told to stop in turn.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            channel.sock.settimeout(remaining)
            messages = channel.receive()
            if messages is None:
                return True
            for message in messages:
                kind = parse(Event, message.get("event"))
                if kind is Event.BOOT_FAILED:
                    continue  # stopping anyway: no error to raise
                self._on_event(message)
                if kind is Event.ARBITER:
                    self.send(Command.STOP)
