"""Rate-limited logging: a client that can cause a warning must not be able to flood the log.

Each *cause* (an errno, a reason name) is logged the first time it happens,
then at most once per ``interval``; the next record that gets through says how
many were suppressed in between, so the count is never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Logs each cause at most once per ``interval`` seconds, counting what it held back.

    Args:
        logger: where records go.
        interval: the shortest time between two records of one cause.
        clock: a monotonic clock in seconds (tests may inject one).

    Thread-safety: meant for one thread (the loop's); a race only lets an
    extra record through or miscounts one suppressed record.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def warning(self, cause: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at WARNING unless ``cause`` was logged less than ``interval`` ago."""
        return self.log(logging.WARNING, cause, msg, *args)

    def log(self, level: int, cause: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``cause`` was logged less than ``interval`` ago.

        Returns:
            True if the record was logged, False if it was suppressed (and counted).
        """
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self._interval:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return False
        self._last[cause] = now
        suppressed = self._suppressed.pop(cause, 0)
        if suppressed:
            msg += " (%d more suppressed in the last %gs)"
            args += (suppressed, self._interval)
        self._logger.log(level, msg, *args)
        return True
