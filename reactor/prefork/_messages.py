"""The pre-fork pool's wire protocol: every message kind named once, and the channels that carry them.

Three channels, each with its own small vocabulary:

* the **control socket** (master <-> arbiter): newline-delimited JSON objects.
  The master sends ``{"cmd": <Command>, ...}``; the arbiter sends
  ``{"event": <Event>, ...}``. A line that does not decode is skipped: a
  standby that takes over from a dead arbiter starts with a newline, which
  ends whatever partial line the dead one left behind;
* each worker's **heartbeat pipe** (worker -> arbiter): ``HEARTBEAT`` bytes,
  and ``READY`` once, when the worker serves;
* the **standby pipe** (arbiter -> standby): ``BOOTED`` once the arbiter's
  first workers are ready, ``DONE`` when it exits cleanly. EOF without
  ``DONE`` means the arbiter died.
"""

from __future__ import annotations

import enum
import json
import logging
import socket
from typing import Any

__all__ = ["BOOTED", "Command", "DONE", "Event", "HEARTBEAT", "LineChannel", "READY", "command", "event", "parse"]

logger = logging.getLogger(__name__)


class Command(str, enum.Enum):
    """What the master asks of the arbiter."""

    STOP = "stop"            #: stop every worker gracefully, then exit
    ABORT = "abort"          #: kill every worker now (a second stop), then exit
    RELOAD = "reload"        #: start a new generation of workers; the old one retires as they get ready
    INCREASE = "increase"    #: one worker more
    DECREASE = "decrease"    #: one worker fewer (never below one)
    TARGET = "target"        #: ``workers``: run exactly that many (sent to an arbiter that took over)


class Event(str, enum.Enum):
    """What the arbiter reports to the master."""

    SPAWNED = "spawned"          #: ``pid``: a worker was forked
    READY = "ready"              #: ``pid``: that worker serves
    EXITED = "exited"            #: ``pid``, ``code``: that worker was reaped
    TARGET = "target"            #: ``workers``: the target count changed
    BOOT_FAILED = "boot_failed"  #: ``pid``, ``reason``: the pool stops; the master raises WorkerBootError
    STOPPED = "stopped"          #: every worker is gone; the arbiter exits next
    ARBITER = "arbiter"          #: ``pid``, ``previous``, ``reason``: a standby took over from a dead arbiter


#: Heartbeat pipe: a worker's loop is alive / the worker is ready.
HEARTBEAT = b"."
READY = b"R"
#: Standby pipe: the arbiter's first workers are ready / the arbiter exits cleanly.
BOOTED = b"B"
DONE = b"D"


def command(kind: Command, **fields: Any) -> dict[str, Any]:
    """A control message from the master."""
    return {"cmd": kind.value, **fields}


def event(kind: Event, **fields: Any) -> dict[str, Any]:
    """A report from the arbiter."""
    return {"event": kind.value, **fields}


class LineChannel:
    """Newline-delimited JSON over a stream socket, non-blocking on the reading side."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, message: dict[str, Any], *, resync: bool = False) -> bool:
        """Send one message; ``resync`` first ends any partial line a dead sender left. False if the peer is gone."""
        data = (b"\n" if resync else b"") + json.dumps(message).encode() + b"\n"
        try:
            self.sock.sendall(data)
        except OSError:
            return False  # the other side is gone; its EOF handler deals with it
        return True

    def receive(self) -> list[dict[str, Any]] | None:
        """Messages that arrived; None at EOF. Lines that do not decode to an object are skipped."""
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, TimeoutError):
            return []
        except ConnectionError:
            data = b""
        if not data:
            return None
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        messages = []
        for line in lines:
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict):
                messages.append(message)
            else:
                logger.debug("skipping a partial or garbled control line: %r", line[:80])
        return messages


def parse(enum_type: type[enum.Enum], value: object) -> Any:
    """The member of ``enum_type`` named by ``value``, or None for a kind this side does not know."""
    try:
        return enum_type(value)
    except ValueError:
        return None
