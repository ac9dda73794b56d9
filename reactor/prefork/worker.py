"""The worker process: a fresh Reactor serving the pool's one server, beating a heartbeat to its arbiter.

A worker is forked by its arbiter and holds only its listener, its heartbeat
pipe (write end), the arbiter's death pipe (read end), stdio and the
descriptors kept on purpose. It stops on SIGTERM, after ``max_requests``, or
when the death pipe reaches EOF (its arbiter is gone).

Its heartbeat carries its server's stats: each beat is a stats record when
``HostedServer.stats()`` changed since the last record sent, a heartbeat byte
otherwise; a last record follows once it stopped serving, so a worker that
exits cleanly loses no count (``_messages.py``).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import random
import signal
from collections.abc import Callable
from typing import Any, NoReturn

from ..accept import DEFAULT_INLINE_IO_TIMEOUT, Dispatch, HostedServer, Job, PauseReason
from ..dispatch import ThreadPool
from ..hosting import Reactor
from ._messages import HEARTBEAT, READY, stats_record
from ._process import (WORKER_BOOT_FAILED, Plan, SignalMask, close_inherited_fds, forget_inherited_signals,
                       heartbeat_interval, ignore_controlled_signals)

__all__ = ["worker_main"]

logger = logging.getLogger(__name__)


class _Heartbeat:
    """The worker's end of its heartbeat pipe: beats, and its server's stats when they changed."""

    def __init__(self, fd: int, stats: Callable[[], dict[str, int]], on_gone: Callable[[], None]) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.stats = stats
        self.on_gone = on_gone
        self._reported: dict[str, int] | None = None

    def send(self, data: bytes) -> bool:
        """Write ``data`` whole; False if it was not (``on_gone()`` ran if the arbiter is gone)."""
        try:
            # A write below PIPE_BUF bytes is atomic: all, or BlockingIOError.
            return os.write(self.fd, data) == len(data)
        except BlockingIOError:
            return False  # the arbiter has unread beats already
        except BrokenPipeError:
            self.on_gone()
            return False

    def beat(self) -> None:
        """One beat: the stats if they changed since the last report, else a heartbeat byte."""
        stats = self.stats()
        if stats == self._reported:
            self.send(HEARTBEAT)
        elif self.send(stats_record(stats)):
            self._reported = stats

    def last_report(self) -> None:
        """The stats once more as the worker exits, if they changed since the last report."""
        stats = self.stats()
        if stats != self._reported:
            self.send(stats_record(stats))


class _RequestLimit(Dispatch):
    """Wraps a strategy; after ``limit`` requests, stops taking more and stops the worker's loop."""

    def __init__(self, inner: Dispatch, limit: int, reactor: Reactor) -> None:
        self.inner = inner
        self.limit = limit
        self.reactor = reactor
        self.count = 0

    @property
    def runs_in_loop_thread(self) -> bool:  # type: ignore[override]
        return self.inner.runs_in_loop_thread

    @property
    def default_io_timeout(self) -> float | None:  # type: ignore[override]
        return self.inner.default_io_timeout

    def bind(self, hosted: HostedServer) -> None:
        self.inner.bind(hosted)

    def begin_drain(self, hosted: HostedServer, on_drained: Callable[[], None]) -> float:
        return self.inner.begin_drain(hosted, on_drained)

    def abort(self, hosted: HostedServer) -> None:
        self.inner.abort(hosted)

    def unbind(self, hosted: HostedServer) -> None:
        self.inner.unbind(hosted)

    def owns_current_thread(self) -> bool:
        return self.inner.owns_current_thread()

    def submit(self, hosted: HostedServer, request: Any, client_address: Any) -> None:
        self._counted(hosted)
        self.inner.submit(hosted, request, client_address)

    def submit_job(self, hosted: HostedServer, job: Job) -> None:
        self._counted(hosted)  # a keep-alive connection's next request counts as one
        self.inner.submit_job(hosted, job)

    def _counted(self, hosted: HostedServer) -> None:
        self.count += 1
        if self.count >= self.limit:
            hosted.pause(PauseReason.RECYCLING)
            self.reactor.stop()


def worker_main(plan: Plan, heartbeat: int, death_pipe: int, signal_mask: SignalMask) -> NoReturn:
    """Run one worker in a freshly forked child (signals blocked); never returns."""
    code = WORKER_BOOT_FAILED
    try:
        forget_inherited_signals()
        ignore_controlled_signals()
        close_inherited_fds({plan.listener, heartbeat, death_pipe, *plan.settings.keep_fds})
        faulthandler.enable(all_threads=True)  # SIGABRT from the arbiter logs every thread's stack
        if plan.settings.on_worker_start is not None:
            plan.settings.on_worker_start()
        reactor = Reactor()
        inner: Dispatch = (ThreadPool(plan.settings.threads, drain_timeout=plan.settings.graceful_timeout)
                           if plan.settings.threads else Dispatch())
        limit = plan.settings.max_requests
        if limit and plan.settings.max_requests_jitter:
            limit += random.randint(0, plan.settings.max_requests_jitter)
        # Only a worker that recycles pays for counting its requests.
        dispatch = _RequestLimit(inner, limit, reactor) if limit else inner
        # A handler blocked on a silent client also silences the heartbeat: by default, give up
        # on the client well before the arbiter gives up on the worker.
        inner.default_io_timeout = min(DEFAULT_INLINE_IO_TIMEOUT, plan.settings.heartbeat_timeout / 2)
        reactor.add_server(plan.server, dispatch, **plan.options.keywords())
        pipe = _Heartbeat(heartbeat, reactor.attachment_of(plan.server).stats, on_gone=reactor.stop)
        interval = heartbeat_interval(plan.settings.heartbeat_timeout)

        def beat_periodically() -> None:
            reactor.call_later(interval, beat_periodically)
            pipe.beat()

        def on_arbiter_death() -> None:
            reactor.remove_reader(death_pipe)
            logger.warning("%s: worker %d lost its arbiter; stopping", plan.name, os.getpid())
            reactor.stop()

        reactor.add_reader(death_pipe, on_arbiter_death)
        reactor.add_signal_handler(signal.SIGTERM, reactor.stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)  # a SIGTERM held since the fork lands now
        reactor.call_later(interval, beat_periodically)
        pipe.send(READY)
        code = 1  # from here on, an unexpected exit is a crash, not a boot failure
        reactor.serve_forever()
        reactor.remove_server(plan.server)  # drains a ThreadPool within graceful_timeout
        pipe.last_report()
        code = 0
    except BaseException as exc:
        if code == WORKER_BOOT_FAILED:
            logger.error("%s: worker %d failed to boot: %r", plan.name, os.getpid(), exc,
                         exc_info=not isinstance(exc, KeyboardInterrupt))
        else:
            logger.exception("%s: worker %d failed", plan.name, os.getpid())
    finally:
        os._exit(code)
