"""The pre-fork pool's wire protocol: every message kind named once, and the channels that carry them.

Three channels, each with its own small vocabulary:

* the **control socket** (master <-> arbiter): newline-delimited JSON objects.
  The master sends ``{"cmd": <Command>, ...}``; the arbiter sends
  ``{"event": <Event>, ...}``. A line that does not decode is skipped: a
  standby that takes over from a dead arbiter starts with a newline, which
  ends whatever partial line the dead one left behind;
* each worker's **heartbeat pipe** (worker -> arbiter): ``HEARTBEAT`` bytes,
  ``READY`` once, when the worker serves, and *stats records*: ``STATS``, its
  server's ``HostedServer.stats()`` as a JSON object, a newline. A worker
  sends a record instead of a heartbeat byte when its stats changed since the
  last record it sent, so at most one per heartbeat interval, and a last one
  as it exits. Each record is one ``write()`` of less than ``PIPE_BUF``
  bytes, so it arrives whole or not at all; :class:`HeartbeatReader` splits
  the stream anyway without trusting that (JSON never holds ``STATS`` nor a
  raw newline, so a record cut short is dropped at the next one);
* the **standby pipe** (arbiter -> standby): ``BOOTED`` once the arbiter's
  first workers are ready, ``DONE`` when it exits cleanly. EOF without
  ``DONE`` means the arbiter died.

The arbiter sums the workers' records (``_stats.PoolCounters``) and reports
the sum to the master as a ``stats`` event when it changed, at most once per
quarter of a heartbeat interval.
"""

from __future__ import annotations

import enum
import json
import logging
import socket
from typing import Any

__all__ = ["BOOTED", "Command", "DONE", "Event", "HEARTBEAT", "HeartbeatReader", "LineChannel", "READY", "STATS",
           "command", "event", "parse", "stats_record"]

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
    RELOAD_ABORTED = "reload_aborted"  #: ``pid``, ``reason``: a reload's new worker failed to boot; the old serve on
    STOPPED = "stopped"          #: every worker is gone; the arbiter exits next
    ARBITER = "arbiter"          #: ``pid``, ``previous``, ``reason``: a standby took over from a dead arbiter
    STATS = "stats"              #: ``counters``: the workers' stats summed (see ``_stats.PoolCounters``)


#: Heartbeat pipe: a worker's loop is alive / the worker is ready.
HEARTBEAT = b"."
READY = b"R"
#: Heartbeat pipe: starts a stats record (ASCII record separator), which ends at the next newline.
STATS = b"\x1e"
#: Longest stats record the reader waits for the end of; a longer one is garbage and dropped.
_RECORD_MAX = 65536
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


def stats_record(stats: dict[str, int]) -> bytes:
    """A worker's stats as one heartbeat-pipe record."""
    return STATS + json.dumps(stats, separators=(",", ":")).encode() + b"\n"


class HeartbeatReader:
    """Splits what arrives on one worker's heartbeat pipe into markers and stats records (sans-IO)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> tuple[bool, dict[str, Any] | None]:
        """Take bytes read from the pipe.

        Returns:
            Whether ``READY`` was among them, and the last complete stats
            record that decodes to a JSON object (None if none did).
        """
        buffer = self._buffer + data
        ready = False
        latest: dict[str, Any] | None = None
        while True:
            start = buffer.find(STATS)
            if start < 0:
                ready = ready or READY in buffer
                buffer = b""
                break
            ready = ready or READY in buffer[:start]
            end = buffer.find(b"\n", start)
            if end < 0:
                buffer = buffer[start:] if len(buffer) - start <= _RECORD_MAX else b""
                break
            record = buffer[start + 1:end]
            buffer = buffer[end + 1:]
            restart = record.rfind(STATS)
            if restart >= 0:  # a record cut short, then a whole one: keep the whole one
                record = record[restart + 1:]
            try:
                decoded = json.loads(record)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                latest = decoded
            else:
                logger.debug("skipping a garbled stats record: %r", record[:80])
        self._buffer = buffer
        return ready, latest
