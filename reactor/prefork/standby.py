"""The standby process: an arbiter's understudy, which takes over on the same control socket if the arbiter dies.

Each arbiter forks one standby as it starts, while it is still
single-threaded. The standby holds only the listener, the arbiter's end of
the control socket (the same descriptor, inherited), a pipe from the arbiter
and stdio, and blocks reading that pipe:

* ``BOOTED``: the arbiter's first workers are ready (the time is noted);
* ``DONE``: the arbiter exits cleanly (also when its master died: it stops
  its workers first); so does the standby;
* EOF without ``DONE``: the arbiter died. If the control socket is at EOF
  too, the master is gone as well, and the standby just exits. If the
  arbiter never booted, that counts as a boot failure: the standby reports
  it to the master and exits, which ends the pool. Otherwise the standby
  becomes the new arbiter on the same control socket (the master sees no
  EOF), after a back-off delay if the dead one lived less than
  ``FAST_CRASH`` after booting.

The dead arbiter's workers stop by themselves (their death pipe reaches EOF).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from ._messages import BOOTED, DONE, Event, LineChannel, event
from ._process import (FAST_CRASH, Plan, SignalMask, close_inherited_fds, fork_with_signals_blocked,
                       forget_inherited_signals, ignore_controlled_signals, next_backoff)

__all__ = ["Takeover", "fork_standby"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Takeover:
    """Why a standby became the arbiter."""

    previous: int   #: the dead arbiter's pid
    lived: float    #: seconds it lived after booting its first workers
    delay: float    #: back-off before the new arbiter forks workers (0: at once)

    @property
    def reason(self) -> str:
        return f"arbiter {self.previous} died {self.lived:.1f}s after booting"


#: What a standby runs when it takes over: the arbiter's main, given the Takeover and the signal mask to restore.
BecomeArbiter = Callable[[Takeover, SignalMask], NoReturn]


def fork_standby(plan: Plan, control: socket.socket, signal_mask: SignalMask, booted_at: float | None,
                 backoff: float, become_arbiter: BecomeArbiter) -> tuple[int, int]:
    """Fork a standby for the calling arbiter; return its pid and the write end of its pipe.

    ``signal_mask``: the arbiter's own mask once it runs (it may fork its
    standby while every signal is still blocked); ``booted_at``: when the
    arbiter booted (``time.monotonic()``), None if not yet; ``backoff``: the
    delay the arbiter itself was started after.
    """
    arbiter = os.getpid()
    read_end, write_end = os.pipe()
    pid, _ = fork_with_signals_blocked()
    if pid == 0:
        _standby_main(plan, control, arbiter, read_end, booted_at, backoff, become_arbiter, signal_mask)
    os.close(read_end)
    return pid, write_end


def _standby_main(plan: Plan, control: socket.socket, arbiter: int, pipe: int, booted_at: float | None,
                  backoff: float, become_arbiter: BecomeArbiter, signal_mask: SignalMask) -> NoReturn:
    code = 1
    try:
        forget_inherited_signals()
        ignore_controlled_signals()
        close_inherited_fds({plan.listener, control.fileno(), pipe, *plan.settings.keep_fds})
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)  # SIGTERM ends a standby; its arbiter replaces it
        takeover = _wait_for_the_arbiter(plan, control, arbiter, pipe, booted_at, backoff)
        if takeover is None:
            code = 0
        else:
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            become_arbiter(takeover, previous)
    except BaseException:
        logger.exception("%s: standby %d failed", plan.name, os.getpid())
    finally:
        os._exit(code)


def _wait_for_the_arbiter(plan: Plan, control: socket.socket, arbiter: int, pipe: int, booted_at: float | None,
                          backoff: float) -> Takeover | None:
    """Block until the arbiter exits; a Takeover if this standby must replace it, None if not."""
    while True:
        data = os.read(pipe, 64)
        if not data:
            break
        if DONE in data:
            return None
        if BOOTED in data and booted_at is None:
            booted_at = time.monotonic()
    os.close(pipe)
    # EOF: every write end is closed, so the arbiter is exiting. While it is
    # still our parent it has not finished; make sure it never runs beside us.
    if os.getppid() == arbiter:
        try:
            os.kill(arbiter, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _master_gone(control):
        logger.info("%s: arbiter %d and its master are gone; the standby exits", plan.name, arbiter)
        return None
    if booted_at is None:
        reason = f"arbiter {arbiter} died before its first workers were ready; not replacing it"
        logger.error("%s: %s", plan.name, reason)
        LineChannel(control).send(event(Event.BOOT_FAILED, pid=arbiter, reason=reason), resync=True)
        return None
    lived = time.monotonic() - booted_at
    return Takeover(arbiter, lived, next_backoff(backoff) if lived < FAST_CRASH else 0.0)


def _master_gone(control: socket.socket) -> bool:
    """True if the control socket is at EOF: the master died too, nobody is left to serve."""
    try:
        return control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # nothing to read: the master is there
    except OSError:
        return True
