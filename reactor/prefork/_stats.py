"""A pool's stats: its processes' ``HostedServer.stats()`` summed into the one shape every strategy reports.

Each worker hosts the pool's server on its own loop, so each has its own
``HostedServer.stats()``. A pool reports their sum, key by key, in the same
shape that ``Inline`` or ``ThreadPool`` hosting of the same server with the
same options would report (plus the pool's own keys, added by the master).
Two kinds of key sum differently:

* a **counter** (requests, admitted, refused_by_rule...) counts events since
  the start. A process that exits leaves its last report behind, carried over
  into every later sum, so a pool's counters never go backwards when a worker
  is recycled, crashes or is replaced; only the events of its last heartbeat
  interval before a crash (or a SIGKILL) are lost;
* a **gauge** (``accept.STATS_GAUGES``: open, admitting...) says how many
  *now*: summed over the live processes only, and forgotten with a process.

Keys are summed generically (any int), so a key that ``HostedServer.stats()``
gains needs nothing here; a new gauge needs only its name in ``STATS_GAUGES``.

The arbiter keeps one :class:`PoolCounters` over its workers; the master keeps
one over its arbiters (the reports of an arbiter that died are carried over
when a standby takes over), so the master's counters never go backwards either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["PoolCounters", "valid_stats"]


def valid_stats(value: Any) -> dict[str, int] | None:
    """``value`` if it is a stats report (a dict of str to int), else None."""
    if not isinstance(value, dict):
        return None
    for key, count in value.items():
        if not isinstance(key, str) or not isinstance(count, int) or isinstance(count, bool):
            return None
    return value


class PoolCounters:
    """Sums the latest stats report of each live process with what exited processes left behind.

    Args:
        gauges: the keys that are gauges (summed over live processes only).
    """

    def __init__(self, gauges: Iterable[str]) -> None:
        self._gauges = frozenset(gauges)
        self._live: dict[int, dict[str, int]] = {}
        #: Counters of the processes that exited, summed.
        self._carried: dict[str, int] = {}

    def report(self, pid: int, stats: dict[str, int]) -> bool:
        """Take ``pid``'s latest report (it replaces its previous one); True if that changed anything."""
        if self._live.get(pid) == stats:
            return False
        self._live[pid] = dict(stats)
        return True

    def exited(self, pid: int) -> bool:
        """``pid`` is gone: carry its counters over, forget its gauges; True if it had reported."""
        last = self._live.pop(pid, None)
        if last is None:
            return False
        for key, count in last.items():
            if key not in self._gauges:
                self._carried[key] = self._carried.get(key, 0) + count
        return True

    def total(self) -> dict[str, int]:
        """Every key summed: counters over every process that ever reported, gauges over the live ones."""
        total = dict(self._carried)
        for stats in self._live.values():
            for key, count in stats.items():
                total[key] = total.get(key, 0) + count
        return total
