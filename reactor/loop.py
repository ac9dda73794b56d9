"""The event loop: one selector, a timer heap and a waker, in one thread.

Theory of operation
-------------------
An EventLoop waits on one selector for every descriptor it watches: the
readers and writers added by its users (a hosted server's listener, a pipe, a
socket of the embedding application) and a waker socketpair that other
threads and signal handlers write to. Each wait is bounded by the nearest
timer. Everything the loop does happens in one *tick*, ``run_once()``: wait,
then dispatch what became ready. Unless a selector is injected, on Linux the
loop polls an epoll object of its own, with its own map from descriptor to
(reader, writer), instead of going through ``selectors``: the same behaviour,
without a key or a tuple built per event.

This module knows nothing of servers. ``reactor.hosting.Reactor`` builds
server hosting on top of it, through the public API alone: watching
descriptors, timers, and *claims*. A claim reserves a descriptor for one
owner (the waker for the loop itself, a listener for the server hosting it):
only calls that name that owner may watch or unwatch it, so a stray
``add_reader`` cannot take over a listening socket.

Rules
-----
1. Only ``run_once()`` calls user callbacks, and it keeps waiting apart from
   dispatching. That split is what lets a foreign loop drive the reactor:
   the host polls ``fileno()``, sleeps at most ``time_until_next()``, then
   calls ``run_once(0)``.
2. One tick: the wait's timeout comes from the nearest timer (0 when
   callbacks are already queued). Only callbacks that were ready when the
   dispatch began run in that tick; callbacks they schedule run in the next,
   so a callback that reschedules itself cannot starve I/O.
3. A descriptor is unregistered before it is closed. Callbacks queued for a
   descriptor that is removed in the same tick are cancelled, never run.
4. Signal handlers only record the signal and wake the loop. The C-level
   handler writes into the waker (``signal.set_wakeup_fd``), which wakes a
   loop blocked in another thread's ``select``; the Python-level handler
   appends the signal number to a queue and wakes the loop again, because
   a full waker buffer drops bytes and a dropped byte must not lose a
   signal. The callback runs in the loop, as soon as the waker is read, and
   an accept batch yields while a signal is pending, so a handler that
   stops the reactor stops it before another request is taken.
5. ``stop()`` is idempotent, non-blocking and thread-safe, and never
   deadlocks, even from inside a handler: it sets a flag and wakes the loop.
   From that moment no hosted server takes another request; ``serve_forever``
   returns at the end of the current tick.
6. There is no global or current reactor. Each is passed explicitly, and two
   reactors in two threads of one process are independent.
7. A callback that raises ``Exception`` is logged and the loop goes on;
   ``BaseException`` (KeyboardInterrupt, SystemExit) propagates out of
   ``run_once()``.
8. A claimed descriptor is watched only on behalf of its owner; the claim
   outlives the watch (a paused listener stays claimed while out of the
   selector) and ends with ``release()``.
"""

from __future__ import annotations

import collections
import logging
import select
import selectors
import signal
import threading
import time
from types import TracebackType
from typing import Any, Callable, Protocol, TypeVar

from ._timers import Handle, TimerHandle, TimerHeap
from ._waker import Waker

__all__ = ["EventLoop", "FileDescriptorLike", "FileLike"]

logger = logging.getLogger(__name__)

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE

_epoll = getattr(select, "epoll", None)
_EPOLLIN = int(getattr(select, "EPOLLIN", 0))
_EPOLLOUT = int(getattr(select, "EPOLLOUT", 0))
#: What makes a reader or a writer run: as ``selectors.EpollSelector``, an error or hang-up
#: (EPOLLERR, EPOLLHUP) wakes both, so each learns of it from its own system call.
_EPOLL_READABLE = ~_EPOLLOUT
_EPOLL_WRITABLE = ~_EPOLLIN

#: Longest single wait; some selectors reject larger timeouts.
MAX_SELECT_TIMEOUT = 24 * 3600.0

_LoopT = TypeVar("_LoopT", bound="EventLoop")


class FileLike(Protocol):
    """Anything with a ``fileno()``: sockets, files, pipes."""

    def fileno(self) -> int:
        """The underlying file descriptor."""


FileDescriptorLike = int | FileLike


#: Marks "no claim" where None is a legitimate owner value.
_UNCLAIMED = object()


def _fd_of(fileobj: FileDescriptorLike) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError(f"invalid file descriptor: {fd}")
    return fd


def _default_is_epoll() -> bool:
    """True unless the program (or a test) replaced ``selectors.DefaultSelector``."""
    default: object = selectors.DefaultSelector
    return default is getattr(selectors, "EpollSelector", None)


class Watch:
    """The callback of a descriptor's reader or writer; the loop calls it itself on each event.

    Attributes:
        callback, args: what runs: ``callback(*args)``.
        cancelled: True once replaced or removed (an event already polled then runs nothing).
    """

    __slots__ = ("callback", "args", "cancelled")

    def __init__(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        """Stop the callback from running again."""
        self.cancelled = True

    def __repr__(self) -> str:
        return f"<Watch {self.callback!r}{' cancelled' if self.cancelled else ''}>"


class EventLoop:
    """A single-threaded event loop: descriptors, timers, signals and a waker.

    Args:
        selector: the selector to wait on. The loop owns it and closes it in
            ``close()``. Default: where ``selectors.DefaultSelector`` is epoll
            (Linux), the loop polls an epoll object of its own, which behaves as
            ``selectors.EpollSelector`` at a fraction of its cost per event;
            elsewhere ``selectors.DefaultSelector()``.
        clock: a monotonic clock in seconds (default: ``time.monotonic``). Timers
            are scheduled on it; tests may inject a fake one.

    Thread-safety: ``stop()`` and ``call_soon_threadsafe()`` may be called from
    any thread. Everything else belongs to the thread that runs the loop.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # Without an injected selector on Linux, the loop talks to epoll itself: selectors
        # looks a key up and builds a (key, events) tuple per event, and a new key per modify().
        self._epoll: select.epoll | None = None
        self._selector: selectors.BaseSelector | None = None
        # A DefaultSelector patched by the program (or a test) is honoured.
        if selector is None and _epoll is not None and _default_is_epoll():
            self._epoll = _epoll()
        else:
            self._selector = selector if selector is not None else selectors.DefaultSelector()
        #: fd -> [reader, writer]: what runs when it is ready (one list per registration, updated
        #: in place, and the selector's key data on the selectors path).
        self._handlers: dict[int, list[Watch | None]] = {}
        #: fd -> its (reader, writer) when the last poll returned, for each descriptor whose
        #: handlers changed since: that poll's events run those, or nothing once they are
        #: cancelled (rule 3), never a replacement, nor whatever reuses a closed one's number.
        self._polled: dict[int, tuple[Watch | None, Watch | None]] = {}
        #: fd -> its reader's callback, for each descriptor watched only for reading, by a
        #: callback without arguments (every connection between writes): the tick calls it
        #: from one lookup. Kept in step with ``_handlers`` by every change.
        self._plain_readers: dict[int, Callable[[], object]] = {}
        self._clock = clock if clock is not None else time.monotonic
        self._timers = TimerHeap()
        self._ready: collections.deque[Handle] = collections.deque()
        self._claims: dict[int, object] = {}
        self._stopping = False
        self._failure: BaseException | None = None
        self._closed = False
        self._tick_lock = threading.Lock()
        self._thread_id: int | None = None
        self._serving = False
        self._selecting = False
        self._signal_handlers: dict[int, Handle] = {}
        self._pending_signals: collections.deque[int] = collections.deque()
        self._saved_signal_handlers: dict[int, Any] = {}
        self._saved_wakeup_fd: int | None = None
        try:
            self._waker = Waker()
            self.claim(self._waker.fileno(), self)
            self.add_reader(self._waker.fileno(), self._on_wakeup, owner=self)
        except BaseException:
            self._close_poller()
            raise

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self: _LoopT) -> _LoopT:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        poller = self._epoll if self._epoll is not None else self._selector
        return f"<{type(self).__name__} {type(poller).__name__} {state}>"

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Release everything: restore signal handlers, drop timers, close the waker and the selector.

        Idempotent.

        Raises:
            RuntimeError: the loop is running.
        """
        if self._closed:
            return
        if self.running:
            raise RuntimeError(f"cannot close a running {type(self).__name__}; stop() it first")
        for signum in list(self._signal_handlers):
            self.remove_signal_handler(signum)
        self.remove_reader(self._waker.fileno(), owner=self)
        self.release(self._waker.fileno(), self)
        self._closed = True
        self._timers.clear()
        self._ready.clear()
        self._waker.close()
        self._close_poller()

    def _close_poller(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()

    # -- running -----------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True from ``stop()`` until ``serve_forever()`` returns: no request is taken meanwhile."""
        return self._stopping

    @property
    def running(self) -> bool:
        """True while ``serve_forever()``, ``run_until()`` or ``run_once()`` runs, in any thread."""
        return self._serving or self._thread_id is not None

    @property
    def clock(self) -> Callable[[], float]:
        """The clock ``time()`` reads (for a caller that reads it often: one call fewer each time)."""
        return self._clock

    def in_loop(self) -> bool:
        """True when called from inside a tick of this loop: a callback, or a handler run inline."""
        return self._thread_id == threading.get_ident()

    def serve_forever(self) -> None:
        """Run ticks until ``stop()`` or ``fail()`` is called.

        If ``stop()`` was called before, returns at once. Afterwards the
        loop can be run again.

        Raises:
            BaseException: the error passed to ``fail()``.
        """
        self.run_until(None)

    def run_until(self, done: Callable[[], bool] | None, timeout: float | None = None) -> None:
        """Run ticks until ``done()`` is true, ``stop()`` or ``fail()`` is called, or ``timeout`` passes.

        ``serve_forever()`` is ``run_until(None)``. ``done`` is checked before
        each tick; a callback that makes it true should wake nothing more.

        Args:
            done: the condition to reach, or None to run until stopped.
            timeout: the most seconds to run (on ``time()``), or None.

        Raises:
            BaseException: the error passed to ``fail()``.
        """
        deadline = None if timeout is None else self._clock() + timeout
        self._serving = True
        try:
            while not self._stopping and (done is None or not done()):
                if deadline is None:
                    self.run_once()
                    continue
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self.run_once(remaining)
        finally:
            self._serving = False
            self._stopping = False
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def fail(self, error: BaseException) -> None:
        """Stop like ``stop()``, and make ``serve_forever()`` raise ``error`` when it returns.

        For failures that make serving pointless (a pre-fork pool whose
        workers cannot boot). The first error wins. Thread-safety: as ``stop()``.
        """
        if self._failure is None:
            self._failure = error
        self.stop()

    def stop(self) -> None:
        """Ask ``serve_forever()`` to return; no request is taken from now on.

        Thread-safety: safe from any thread, from a handler and from a signal
        handler; never blocks; idempotent.
        """
        self._stopping = True
        if not self._closed and self._needs_wakeup():
            self._waker.wakeup()

    def run_once(self, timeout: float | None = None) -> None:
        """Run one tick: wait for I/O or the next timer, then dispatch what is ready.

        Args:
            timeout: longest wait in seconds; ``None`` waits for the next event
                or timer, ``0`` only polls (use that when a host loop drives
                the reactor).

        Raises:
            RuntimeError: the reactor is closed, or already running (in a
                callback of this reactor or in another thread).
        """
        if self._closed:
            raise RuntimeError("reactor is closed")
        if not self._tick_lock.acquire(blocking=False):
            raise RuntimeError("reactor is already running (run_once() re-entered or called from two threads)")
        try:
            self._thread_id = threading.get_ident()
            self._tick(timeout)
        finally:
            self._thread_id = None
            self._tick_lock.release()

    def _tick(self, timeout: float | None) -> None:
        # A Python signal handler can run in this very thread while select()
        # is interrupted (PEP 475 then retries it), or after the wait was
        # computed but before select() starts: stop() and
        # call_soon_threadsafe() must wake us even though they are "in" the
        # loop thread.
        epoll = self._epoll
        self._selecting = True
        try:
            wait = self._wait_time(timeout)
            if epoll is not None:
                fd_events = self._poll(epoll, wait)
            else:
                assert self._selector is not None
                key_events = self._selector.select(wait)
        finally:
            self._selecting = False
        # In order: the callbacks scheduled before this tick, the I/O that was ready
        # when select() returned, then the timers due by then; what these schedule runs
        # in the next tick. I/O handles run straight from the event list (no queueing:
        # this is the hot path), still skipped once cancelled.
        # The due timers wait in the queue, behind the earlier callbacks and ahead of
        # anything scheduled from now on, so a KeyboardInterrupt leaves them for the next tick.
        polled = self._polled
        if polled:
            polled.clear()
        ready = self._ready
        earlier = len(ready)
        if self._timers:
            ready.extend(self._timers.pop_due(self._clock()))
        due = len(ready) - earlier
        for _ in range(earlier):
            self._run(ready.popleft())
        # Each Watch is called inline below: two calls fewer per event. A handle cancelled by an
        # earlier callback of this tick (remove_reader, a replaced reader) never runs.
        reader: Watch | None
        writer: Watch | None
        pair: list[Watch | None] | tuple[Watch | None, Watch | None] | None
        if epoll is not None:
            readable, writable = _EPOLL_READABLE, _EPOLL_WRITABLE
        else:  # a selector's keys carry the same pairs as the map
            fd_events = [(key.fd, mask) for key, mask in key_events]
            readable, writable = _READ, _WRITE
        handlers = self._handlers
        plain_readers = self._plain_readers
        for fd, mask in fd_events:
            if not (polled and fd in polled):
                # The common case in one lookup: any event of a read-only descriptor is for
                # its reader (an error or hang-up too), which nothing this tick changed.
                plain = plain_readers.get(fd)
                if plain is not None:
                    try:
                        plain()
                    except Exception:
                        logger.exception("reactor callback %r raised", plain)
                    continue
                pair = handlers.get(fd)
            else:
                pair = polled[fd]
            if pair is None:
                continue
            reader, writer = pair
            if reader is not None and mask & readable and not reader.cancelled:
                try:
                    if reader.args:
                        reader.callback(*reader.args)
                    else:
                        reader.callback()  # a plain call: cheaper than an empty *args
                except Exception:
                    logger.exception("reactor callback %r raised", reader)
            if writer is not None and mask & writable and not writer.cancelled:
                try:
                    if writer.args:
                        writer.callback(*writer.args)
                    else:
                        writer.callback()  # a plain call: cheaper than an empty *args
                except Exception:
                    logger.exception("reactor callback %r raised", writer)
        for _ in range(due):
            self._run(ready.popleft())

    @staticmethod
    def _poll(epoll: select.epoll, wait: float | None) -> list[tuple[int, int]]:
        # Its own frame, so that a debugger or a test can tell the loop waiting from the loop working.
        return epoll.poll(wait)

    @staticmethod
    def _run(handle: Handle) -> None:
        try:
            handle.run()  # a no-op once cancelled
        except Exception:
            logger.exception("reactor callback %r raised", handle)

    def _wait_time(self, timeout: float | None) -> float | None:
        if self._ready or self._stopping:
            return 0
        wait = self.time_until_next()
        if timeout is not None:
            wait = timeout if wait is None else min(wait, timeout)
        if wait is not None:
            wait = min(max(wait, 0.0), MAX_SELECT_TIMEOUT)
        return wait

    # -- embedding -----------------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that is readable whenever the reactor has I/O to dispatch.

        It is the selector's own descriptor (epoll, kqueue, /dev/poll), so a
        host loop can watch it; timers do not make it readable, so the host
        must also wake after ``time_until_next()`` seconds.

        Raises:
            io.UnsupportedOperation: the selector (select, poll) has no descriptor.
        """
        if self._epoll is not None:
            return self._epoll.fileno()
        fileno = getattr(self._selector, "fileno", None)
        if fileno is None:
            import io

            raise io.UnsupportedOperation(
                f"{type(self._selector).__name__} has no descriptor to embed; "
                "create the Reactor with an epoll, kqueue or devpoll selector")
        fd: int = fileno()
        return fd

    def time_until_next(self) -> float | None:
        """Seconds until the reactor needs a tick without I/O: 0 if callbacks are queued,
        the delay to the nearest timer, or None if only I/O can give it work."""
        if self._ready:
            return 0.0
        deadline = self._timers.next_deadline()
        if deadline is None:
            return None
        return max(deadline - self._clock(), 0.0)

    # -- readers, writers and claims ------------------------------------------

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any,
                   owner: object = None) -> None:
        """Call ``callback(*args)`` in the loop whenever ``fd`` is readable (replaces any reader).

        Raises:
            ValueError: ``fd`` is claimed by someone other than ``owner``.
        """
        self._add_handler(_fd_of(fd), selectors.EVENT_READ, Watch(callback, args), owner)

    def remove_reader(self, fd: FileDescriptorLike, *, owner: object = None) -> bool:
        """Stop watching ``fd`` for reading; True if it was watched.

        Raises:
            ValueError: ``fd`` is claimed by someone other than ``owner``.
        """
        return self._remove_handler(_fd_of(fd), selectors.EVENT_READ, owner)

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[..., object], *args: Any,
                   owner: object = None) -> None:
        """Call ``callback(*args)`` in the loop whenever ``fd`` is writable (replaces any writer).

        Raises:
            ValueError: ``fd`` is claimed by someone other than ``owner``.
        """
        self._add_handler(_fd_of(fd), selectors.EVENT_WRITE, Watch(callback, args), owner)

    def remove_writer(self, fd: FileDescriptorLike, *, owner: object = None) -> bool:
        """Stop watching ``fd`` for writing; True if it was watched.

        Raises:
            ValueError: ``fd`` is claimed by someone other than ``owner``.
        """
        return self._remove_handler(_fd_of(fd), selectors.EVENT_WRITE, owner)

    def claim(self, fd: FileDescriptorLike, owner: object) -> None:
        """Reserve ``fd`` for ``owner``: only calls passing ``owner=owner`` may watch it until ``release()``.

        Raises:
            ValueError: ``fd`` is already claimed, or watched without a claim.
            RuntimeError: the loop is closed.
        """
        self._check_open()
        if owner is None:
            raise ValueError("a claim needs an owner")
        fd = _fd_of(fd)
        claimant = self._claims.get(fd, _UNCLAIMED)
        if claimant is not _UNCLAIMED:
            raise ValueError(f"descriptor {fd} is already claimed by {claimant!r}")
        if self.is_watched(fd):
            raise ValueError(f"descriptor {fd} is already watched by this loop")
        self._claims[fd] = owner

    def release(self, fd: FileDescriptorLike, owner: object) -> None:
        """End ``owner``'s claim on ``fd``; whatever it still watches there stays watched.

        Raises:
            ValueError: ``fd`` is not claimed by ``owner``.
        """
        fd = _fd_of(fd)
        if self._claims.get(fd, _UNCLAIMED) is not owner:
            raise ValueError(f"descriptor {fd} is not claimed by {owner!r}")
        del self._claims[fd]

    def is_claimed(self, fd: FileDescriptorLike) -> bool:
        """True while someone holds a claim on ``fd``."""
        return _fd_of(fd) in self._claims

    def is_watched(self, fd: FileDescriptorLike) -> bool:
        """True while ``fd`` is in the selector (for reading, writing or both)."""
        if self._closed:
            return False
        return _fd_of(fd) in self._handlers

    def _check_claim(self, fd: int, owner: object) -> None:
        claimant = self._claims.get(fd)
        if claimant is not owner:
            if claimant is None:
                raise ValueError(f"descriptor {fd} is not claimed by {owner!r}")
            raise ValueError(f"descriptor {fd} belongs to {claimant!r}")

    def _add_handler(self, fd: int, event: int, handle: Watch, owner: object) -> None:
        if self._closed:
            raise RuntimeError("reactor is closed")
        self._check_claim(fd, owner)
        slot = 0 if event == _READ else 1
        pair = self._handlers.get(fd)
        if pair is None:
            pair = [handle, None] if slot == 0 else [None, handle]
            if self._epoll is not None:
                self._epoll.register(fd, _EPOLLIN if slot == 0 else _EPOLLOUT)
            else:
                assert self._selector is not None
                self._selector.register(fd, event, pair)
            self._handlers[fd] = pair
            self._note_plain_reader(fd, pair)
            return
        self._note_change(fd, pair)
        old = pair[slot]
        pair[slot] = handle
        if old is not None:
            old.cancel()  # the interest is unchanged: no system call
            self._note_plain_reader(fd, pair)
            return
        try:
            self._set_interest(fd, pair)
        except BaseException:
            pair[slot] = None
            raise
        finally:
            self._note_plain_reader(fd, pair)

    def _remove_handler(self, fd: int, event: int, owner: object) -> bool:
        if self._closed:
            return False
        self._check_claim(fd, owner)
        pair = self._handlers.get(fd)
        if pair is None:
            return False
        slot = 0 if event == _READ else 1
        old = pair[slot]
        if old is None:
            return False
        self._note_change(fd, pair)
        pair[slot] = None
        old.cancel()
        if pair[1 - slot] is not None:
            self._note_plain_reader(fd, pair)
            self._set_interest(fd, pair)
            return True
        del self._handlers[fd]
        self._plain_readers.pop(fd, None)
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # closed before it was unwatched: epoll already forgot it (as EpollSelector)
        else:
            assert self._selector is not None
            self._selector.unregister(fd)
        return True

    def _note_plain_reader(self, fd: int, pair: list[Watch | None]) -> None:
        """Keep ``_plain_readers`` in step with ``fd``'s new (reader, writer) pair."""
        reader, writer = pair
        if reader is not None and writer is None and not reader.args:
            self._plain_readers[fd] = reader.callback
        else:
            self._plain_readers.pop(fd, None)

    def _note_change(self, fd: int, pair: list[Watch | None]) -> None:
        if fd not in self._polled:
            self._polled[fd] = (pair[0], pair[1])

    def _set_interest(self, fd: int, pair: list[Watch | None]) -> None:
        """Tell the poller what ``fd``'s remaining (reader, writer) pair waits for."""
        if self._epoll is not None:
            mask = (_EPOLLIN if pair[0] is not None else 0) | (_EPOLLOUT if pair[1] is not None else 0)
            try:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:
                # The descriptor was closed and its number reused without remove_*() (rule 3
                # broken by the caller): epoll dropped the old one; watch the new one.
                self._epoll.register(fd, mask)
        else:
            assert self._selector is not None
            events = (_READ if pair[0] is not None else 0) | (_WRITE if pair[1] is not None else 0)
            self._selector.modify(fd, events, pair)

    # -- callbacks and timers ------------------------------------------------

    def time(self) -> float:
        """The reactor's clock, in seconds; timers are scheduled on it."""
        return self._clock()

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Handle:
        """Run ``callback(*args)`` in the next tick. Loop thread only."""
        self._check_open()
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Handle:
        """Run ``callback(*args)`` in the loop as soon as possible, waking it if it sleeps.

        Thread-safety: safe from any thread and from signal handlers.
        """
        self._check_open()
        handle = Handle(callback, args)
        self._ready.append(handle)  # deque.append is atomic
        if self._needs_wakeup():
            self._waker.wakeup()
        return handle

    def _needs_wakeup(self) -> bool:
        """True unless called from a callback of this loop (which will look at its state anyway)."""
        return self._selecting or self._thread_id != threading.get_ident()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` in the loop after ``delay`` seconds; returns a cancellable handle."""
        return self.call_at(self._clock() + delay, callback, *args)

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle:
        """Run ``callback(*args)`` in the loop once ``time()`` reaches ``when``; returns a cancellable handle."""
        self._check_open()
        return self._timers.push(when, callback, args)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("reactor is closed")

    # -- signals -------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` in the loop whenever signal ``signum`` arrives.

        Availability: POSIX; main thread only (``signal`` allows no other).
        The previous handler is restored by ``remove_signal_handler`` or ``close``.

        Raises:
            ValueError: ``signum`` is not a signal that can be caught.
            RuntimeError: not in the main thread, or another loop already
                receives signals through ``signal.set_wakeup_fd``.
        """
        self._check_open()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be added from the main thread")
        signum = signal.Signals(signum).value
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"signal {signal.Signals(signum).name} cannot be caught")
        if not self._signal_handlers:
            previous = signal.set_wakeup_fd(self._waker.write_fileno(), warn_on_full_buffer=False)
            if previous not in (-1, self._waker.write_fileno()):
                # The API cannot read the owner's warn setting back; a full
                # wakeup buffer is harmless, so never warn about it.
                signal.set_wakeup_fd(previous, warn_on_full_buffer=False)
                raise RuntimeError(
                    "another event loop already receives signals through signal.set_wakeup_fd(); "
                    "let that loop handle signals or use a single reactor for them")
            self._saved_wakeup_fd = previous
        if signum not in self._saved_signal_handlers:
            self._saved_signal_handlers[signum] = signal.getsignal(signum)
        try:
            signal.signal(signum, self._record_signal)
        except BaseException:
            if not self._signal_handlers:
                self._restore_wakeup_fd()
            raise
        self._signal_handlers[signum] = Handle(callback, args)

    def remove_signal_handler(self, signum: int) -> bool:
        """Stop handling ``signum`` and restore its previous handler; True if it was handled."""
        handle = self._signal_handlers.pop(signum, None)
        if handle is None:
            return False
        previous = self._saved_signal_handlers.pop(signum)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if not self._signal_handlers:
            self._restore_wakeup_fd()
        return True

    def _restore_wakeup_fd(self) -> None:
        if self._saved_wakeup_fd is not None:
            signal.set_wakeup_fd(self._saved_wakeup_fd, warn_on_full_buffer=False)
            self._saved_wakeup_fd = None

    def _record_signal(self, signum: int, frame: object) -> None:
        # Python-level handler: runs in the main thread, maybe while the loop
        # runs in another. deque.append is atomic; nothing else happens here.
        self._pending_signals.append(signum)
        self._waker.wakeup()

    @property
    def signal_pending(self) -> bool:
        """True when a handled signal arrived and its callback has not run yet.

        Long-running callbacks (an accept batch) check it to yield early, so a
        SIGTERM handler that stops the reactor runs before more work is taken.
        """
        return bool(self._pending_signals)

    def _on_wakeup(self) -> None:
        self._waker.drain()
        pending = self._pending_signals
        arrived: dict[int, None] = {}
        while pending:
            arrived[pending.popleft()] = None  # each signal once per wakeup, in arrival order
        # Run them now rather than next tick: a stop() must precede any
        # request that became ready in this same tick.
        for signum in arrived:
            handle = self._signal_handlers.get(signum)
            if handle is None:
                continue
            try:
                handle.run()
            except Exception:
                logger.exception("signal %d callback %r raised", signum, handle)
