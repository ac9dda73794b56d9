"""Callback handles and the timer heap: pure logic, no I/O, clock supplied by the caller."""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

__all__ = ["Handle", "TimerHandle", "TimerHeap"]


class Handle:
    """A callback scheduled on a Reactor; ``cancel()`` stops it from running.

    Thread-safety: create and cancel from the reactor's thread (cancelling
    from elsewhere is racy but harmless: the callback may run once more).
    """

    __slots__ = ("_callback", "_args", "_cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        """Prevent the callback from running; idempotent."""
        self._cancelled = True

    def cancelled(self) -> bool:
        """True once ``cancel()`` was called."""
        return self._cancelled

    @property
    def callback(self) -> Callable[..., object]:
        """The function this handle runs."""
        return self._callback

    def run(self) -> None:
        """Call the callback unless cancelled. Exceptions propagate to the caller."""
        if not self._cancelled:
            self._callback(*self._args)

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        name = getattr(self._callback, "__qualname__", repr(self._callback))
        return f"<{type(self).__name__} {name}{state}>"


class TimerHandle(Handle):
    """A Handle due at a point on the reactor's clock."""

    __slots__ = ("when", "_seq", "_heap")

    def __init__(
        self,
        when: float,
        seq: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        heap: TimerHeap,
    ) -> None:
        super().__init__(callback, args)
        self.when = when
        self._seq = seq
        self._heap: TimerHeap | None = heap

    def cancel(self) -> None:
        """Prevent the callback from running; idempotent."""
        if not self._cancelled:
            self._cancelled = True
            if self._heap is not None:
                self._heap._note_cancelled()

    def __lt__(self, other: TimerHandle) -> bool:
        # seq breaks ties so timers due at the same instant run in the order scheduled.
        return (self.when, self._seq) < (other.when, other._seq)


class TimerHeap:
    """A min-heap of TimerHandles ordered by deadline, then by scheduling order.

    Cancelled timers stay in the heap until they reach the top or until they
    make up more than half of it, when the heap is rebuilt without them
    (asyncio does the same): cancel is O(1), and memory stays bounded.
    """

    _COMPACT_MIN = 64

    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._cancelled = 0
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def push(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> TimerHandle:
        """Schedule ``callback(*args)`` at ``when`` and return its handle."""
        handle = TimerHandle(when, next(self._counter), callback, args, self)
        heapq.heappush(self._heap, handle)
        return handle

    def next_deadline(self) -> float | None:
        """The earliest live deadline, or None when no timer is pending."""
        heap = self._heap
        while heap and heap[0]._cancelled:
            self._discard(heapq.heappop(heap))
        return heap[0].when if heap else None

    def pop_due(self, now: float) -> list[TimerHandle]:
        """Remove and return, in order, every live timer due at or before ``now``."""
        heap = self._heap
        due: list[TimerHandle] = []
        while heap and heap[0].when <= now:
            handle = heapq.heappop(heap)
            if handle._cancelled:
                self._discard(handle)
            else:
                handle._heap = None
                due.append(handle)
        return due

    def clear(self) -> None:
        """Cancel and drop every timer."""
        for handle in self._heap:
            handle._heap = None
            handle._cancelled = True
        self._heap.clear()
        self._cancelled = 0

    def _discard(self, handle: TimerHandle) -> None:
        handle._heap = None
        self._cancelled -= 1

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        if self._cancelled > self._COMPACT_MIN and self._cancelled * 2 > len(self._heap):
            live = []
            for handle in self._heap:
                if handle._cancelled:
                    handle._heap = None
                else:
                    live.append(handle)
            heapq.heapify(live)
            self._heap = live
            self._cancelled = 0
