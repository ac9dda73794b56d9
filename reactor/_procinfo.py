"""What this process uses: uptime, open descriptors, threads, resident memory. For statistics.

Each fact is probed where it lives (``/proc/self`` on Linux; ``/dev/fd`` on the
BSDs and macOS) and is None where the system does
not tell, never a guess. Reading them costs a few small reads: fine for a
statistics request, not for a hot path.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

__all__ = ["process_info"]

#: When this module was imported: the uptime's origin where the system does not say when the process started.
_IMPORTED_AT = time.monotonic()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


def _uptime() -> float:
    """Seconds since the process started (``/proc``), else since reactor was imported."""
    stat, system = _read("/proc/self/stat"), _read("/proc/uptime")
    if stat is not None and system is not None:
        try:
            # Field 22 (starttime, in clock ticks since boot) counts from after the ")" ending the command name.
            start_ticks = int(stat.rpartition(")")[2].split()[19])
            return max(float(system.split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
        except (IndexError, ValueError, OSError):
            pass
    return time.monotonic() - _IMPORTED_AT


def _open_fds() -> int | None:
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            # listdir's own descriptor shows up in the listing while it reads.
            return max(len(os.listdir(directory)) - 1, 0)
        except OSError:
            continue
    return None


def _rss() -> int | None:
    statm = _read("/proc/self/statm")
    if statm is None:
        return None
    try:
        return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (IndexError, ValueError, OSError):
        return None


def process_info() -> dict[str, Any]:
    """This process now: ``pid``, ``uptime`` (seconds), ``fds`` (open descriptors), ``threads``
    (Python threads alive) and ``rss`` (bytes resident now).

    ``fds`` and ``rss`` are None where the system does not tell.
    """
    return {"pid": os.getpid(), "uptime": round(_uptime(), 3), "fds": _open_fds(),
            "threads": threading.active_count(), "rss": _rss()}
