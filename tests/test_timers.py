"""Pure pieces of the core: the timer heap and handles, the accept errno policy, the waker.

No Reactor here: these modules are meant to be testable alone (DESIGN.md 4.11).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import ssl
import threading
from collections.abc import Callable

import pytest

from reactor._errors import AcceptOutcome, RequestDropped, classify_accept_error
from reactor._timers import Handle, TimerHandle, TimerHeap
from reactor._waker import Waker
from support import REPO_ROOT, run_python


def _noop(*args: object) -> None:
    pass


def _recorder() -> tuple[list[object], Callable[..., None]]:
    calls: list[object] = []

    def record(*args: object) -> None:
        calls.append(args[0] if len(args) == 1 else args)

    return calls, record


def _drain_order(heap: TimerHeap, now: float = float("inf")) -> list[object]:
    return [handle._args[0] for handle in heap.pop_due(now)]


# ---------------------------------------------------------------- TimerHeap

def test_pop_due_returns_timers_in_deadline_order() -> None:
    heap = TimerHeap()
    for when in (5.0, 1.0, 4.0, 2.0, 3.0):
        heap.push(when, _noop, (when,))
    assert _drain_order(heap) == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_pop_due_returns_only_timers_due_at_or_before_now() -> None:
    heap = TimerHeap()
    for when in (1.0, 2.0, 3.0):
        heap.push(when, _noop, (when,))
    assert _drain_order(heap, now=2.0) == [1.0, 2.0]
    assert len(heap) == 1
    assert heap.next_deadline() == 3.0
    assert _drain_order(heap, now=2.5) == []


def test_timers_due_at_the_same_instant_run_in_scheduling_order() -> None:
    heap = TimerHeap()
    labels = [f"t{i}" for i in range(50)]
    for label in labels:
        heap.push(7.0, _noop, (label,))
    heap.push(6.0, _noop, ("earlier",))
    heap.push(8.0, _noop, ("later",))
    assert _drain_order(heap) == ["earlier", *labels, "later"]


def test_len_counts_only_live_timers() -> None:
    heap = TimerHeap()
    handles = [heap.push(float(i), _noop, (i,)) for i in range(10)]
    assert len(heap) == 10
    handles[3].cancel()
    handles[3].cancel()  # idempotent: counted once
    assert len(heap) == 9
    assert bool(heap)


def test_cancel_is_lazy_and_does_not_touch_the_heap() -> None:
    heap = TimerHeap()
    handles = [heap.push(float(i), _noop, (i,)) for i in range(10)]
    storage = heap._heap
    size = len(storage)
    handles[5].cancel()
    # O(1): the handle is only marked, the heap is neither searched nor re-heapified.
    assert heap._heap is storage
    assert len(storage) == size
    assert handles[5].cancelled()


def test_cancelled_timers_are_never_returned() -> None:
    heap = TimerHeap()
    handles = [heap.push(float(i % 7), _noop, (i,)) for i in range(40)]
    for handle in handles[::3]:
        handle.cancel()
    returned = heap.pop_due(float("inf"))
    assert all(not handle.cancelled() for handle in returned)
    assert sorted(h._args[0] for h in returned) == [i for i in range(40) if i % 3]
    assert len(heap) == 0


def test_many_cancellations_compact_the_heap() -> None:
    heap = TimerHeap()
    total = 10 * TimerHeap._COMPACT_MIN
    handles = [heap.push(float(i), _noop, (i,)) for i in range(total)]
    survivors = handles[::5]
    for handle in handles:
        if handle not in survivors:
            handle.cancel()
    assert len(heap) == len(survivors)
    # Lazy deletion alone would keep all `total` entries; compaction must have dropped most.
    assert len(heap._heap) < total
    assert len(heap._heap) - len(heap) <= max(TimerHeap._COMPACT_MIN, len(heap._heap) // 2)
    assert _drain_order(heap) == [h._args[0] for h in survivors]


def test_cancelling_a_handle_dropped_by_compaction_does_not_corrupt_the_count() -> None:
    heap = TimerHeap()
    handles = [heap.push(float(i), _noop, (i,)) for i in range(4 * TimerHeap._COMPACT_MIN)]
    cancelled = handles[: 3 * TimerHeap._COMPACT_MIN]
    for handle in cancelled:
        handle.cancel()
    for handle in cancelled:
        handle.cancel()
    assert len(heap) == TimerHeap._COMPACT_MIN
    assert len(heap.pop_due(float("inf"))) == TimerHeap._COMPACT_MIN
    assert len(heap) == 0


def test_cancelling_a_timer_after_it_was_popped_does_not_change_len() -> None:
    heap = TimerHeap()
    first = heap.push(1.0, _noop, (1,))
    heap.push(2.0, _noop, (2,))
    assert heap.pop_due(1.0) == [first]
    first.cancel()
    assert len(heap) == 1
    assert heap.next_deadline() == 2.0


def test_next_deadline_skips_cancelled_timers() -> None:
    heap = TimerHeap()
    early = heap.push(1.0, _noop, ())
    middle = heap.push(2.0, _noop, ())
    heap.push(3.0, _noop, ())
    assert heap.next_deadline() == 1.0
    early.cancel()
    middle.cancel()
    assert heap.next_deadline() == 3.0
    assert len(heap) == 1


def test_next_deadline_is_none_when_empty_or_all_cancelled() -> None:
    heap = TimerHeap()
    assert heap.next_deadline() is None
    handle = heap.push(1.0, _noop, ())
    handle.cancel()
    assert heap.next_deadline() is None
    assert not heap


def test_clear_drops_and_cancels_every_timer() -> None:
    heap = TimerHeap()
    handles = [heap.push(float(i), _noop, (i,)) for i in range(10)]
    handles[0].cancel()
    heap.clear()
    assert len(heap) == 0
    assert heap.next_deadline() is None
    assert heap.pop_due(float("inf")) == []
    assert all(handle.cancelled() for handle in handles)
    handles[4].cancel()  # cancelling after clear is harmless
    assert len(heap) == 0
    heap.push(1.0, _noop, ("new",))
    assert len(heap) == 1


def test_push_returns_a_timer_handle_with_its_deadline() -> None:
    heap = TimerHeap()
    handle = heap.push(12.5, _noop, ())
    assert isinstance(handle, TimerHandle)
    assert handle.when == 12.5
    assert handle.callback is _noop


# ---------------------------------------------------------------- Handle

def test_handle_run_calls_the_callback_with_its_args() -> None:
    calls, record = _recorder()
    Handle(record, (1, "two")).run()
    assert calls == [(1, "two")]


def test_cancelled_handle_does_not_run() -> None:
    calls, record = _recorder()
    handle = Handle(record, ("x",))
    assert not handle.cancelled()
    handle.cancel()
    handle.cancel()
    assert handle.cancelled()
    handle.run()
    assert calls == []
    assert "cancelled" in repr(handle)


def test_handle_run_propagates_exceptions() -> None:
    def boom() -> None:
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError):
        Handle(boom, ()).run()


def test_timer_handle_run_and_cancel() -> None:
    heap = TimerHeap()
    calls, record = _recorder()
    handle = heap.push(1.0, record, ("ran",))
    handle.run()
    handle.cancel()
    handle.run()
    assert calls == ["ran"]


# ---------------------------------------------------------------- errno policy

@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("EAGAIN", AcceptOutcome.EMPTY),
        ("EWOULDBLOCK", AcceptOutcome.EMPTY),
        ("ECONNABORTED", AcceptOutcome.DROPPED),
        ("EPERM", AcceptOutcome.DROPPED),
        ("EPROTO", AcceptOutcome.DROPPED),
        ("ECONNRESET", AcceptOutcome.DROPPED),
        ("EMFILE", AcceptOutcome.EXHAUSTED),
        ("ENFILE", AcceptOutcome.EXHAUSTED),
        ("ENOBUFS", AcceptOutcome.EXHAUSTED),
        ("ENOMEM", AcceptOutcome.EXHAUSTED),
        ("ETIMEDOUT", AcceptOutcome.DROPPED),
        ("EPIPE", AcceptOutcome.DROPPED),
        ("EBADF", AcceptOutcome.FATAL),
        ("ENOTSOCK", AcceptOutcome.FATAL),
        ("EINVAL", AcceptOutcome.FATAL),
        ("EFAULT", AcceptOutcome.FATAL),
        ("ENOTCONN", AcceptOutcome.FATAL),
    ],
)
def test_classify_accept_error_by_errno(code: str, outcome: AcceptOutcome) -> None:
    number = getattr(errno, code)
    assert classify_accept_error(OSError(number, code)) is outcome


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (BlockingIOError(errno.EAGAIN, "again"), AcceptOutcome.EMPTY),
        (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), AcceptOutcome.DROPPED),
        (PermissionError(errno.EPERM, "firewall"), AcceptOutcome.DROPPED),
        (BrokenPipeError(errno.EPIPE, "peer reset mid-handshake"), AcceptOutcome.DROPPED),
        (OSError("no errno at all"), AcceptOutcome.DROPPED),
        (TimeoutError("_ssl.c:989: The handshake operation timed out"), AcceptOutcome.DROPPED),
        (socket.timeout("timed out"), AcceptOutcome.DROPPED),
    ],
    ids=["BlockingIOError", "ConnectionAbortedError", "PermissionError", "BrokenPipeError", "no-errno",
         "TimeoutError", "socket.timeout"],
)
def test_classify_accept_error_by_exception_subclass(exc: OSError, outcome: AcceptOutcome) -> None:
    assert classify_accept_error(exc) is outcome


# An SSLError's errno is OpenSSL's SSL_get_error() code, not an errno: read as
# errnos, SSL_ERROR_EOF (8) is ENOEXEC, SSL_ERROR_WANT_READ (2) ENOENT.
@pytest.mark.parametrize(
    "exc",
    [
        ssl.SSLError(ssl.SSL_ERROR_SSL, "[SSL: HTTP_REQUEST] http request"),
        ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "EOF occurred in violation of protocol"),
        ssl.SSLZeroReturnError(ssl.SSL_ERROR_ZERO_RETURN, "TLS/SSL connection has been closed"),
        ssl.SSLSyscallError(ssl.SSL_ERROR_SYSCALL, "Some I/O error occurred"),
        ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ, "The operation did not complete"),
        ssl.SSLCertVerificationError(ssl.SSL_ERROR_SSL, "certificate verify failed"),
        # CPython's CVE-2023-40217 check: a real ENOTCONN, still one connection.
        ssl.SSLError(errno.ENOTCONN, "Closed before TLS handshake with data in recv buffer."),
        ssl.SSLError(errno.EBADF, "even an errno that would be fatal on a plain OSError"),
        ssl.SSLError("no errno at all"),
    ],
    ids=["SSLError", "SSLEOFError", "SSLZeroReturnError", "SSLSyscallError", "SSLWantReadError",
         "SSLCertVerificationError", "SSLError-ENOTCONN", "SSLError-EBADF", "SSLError-no-errno"],
)
def test_every_tls_error_drops_the_connection_whatever_its_errno(exc: ssl.SSLError) -> None:
    assert classify_accept_error(exc) is AcceptOutcome.DROPPED


def test_classifying_never_imports_ssl() -> None:
    # ssl is a heavy import: an SSLError can only exist once it is loaded, so
    # the classifier looks it up in sys.modules instead of importing it.
    # The leaf module is loaded alone, by path, so that no other module of the
    # package can be the one that imports ssl.
    result = run_python(
        """
        import errno, importlib.util, sys
        spec = importlib.util.spec_from_file_location("_errors", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        outcomes = [module.classify_accept_error(exc).name for exc in (
            OSError(errno.EBADF, "x"), OSError(errno.EPIPE, "x"), OSError("x"), BlockingIOError(errno.EAGAIN, "x"))]
        print(" ".join(outcomes), "ssl" in sys.modules)
        """,
        str(REPO_ROOT / "reactor" / "_errors.py"),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FATAL", "DROPPED", "DROPPED", "EMPTY", "False"]


def test_request_dropped_is_dropped() -> None:
    assert classify_accept_error(RequestDropped("datagram too large")) is AcceptOutcome.DROPPED
    # Even if it carries an errno of another class, the type decides.
    assert classify_accept_error(RequestDropped(errno.EBADF, "x")) is AcceptOutcome.DROPPED


def test_real_accept_on_an_empty_nonblocking_listener_is_empty() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        with pytest.raises(OSError) as info:
            listener.accept()
    assert classify_accept_error(info.value) is AcceptOutcome.EMPTY


def test_real_accept_on_a_closed_listener_is_fatal() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.close()
    with pytest.raises(OSError) as info:
        listener.accept()
    assert classify_accept_error(info.value) is AcceptOutcome.FATAL


def test_real_accept_with_no_descriptor_left_is_exhausted() -> None:
    # Lowering RLIMIT_NOFILE happens in a fresh interpreter, never in pytest's.
    result = run_python(
        """
        import resource, socket
        from reactor._errors import classify_accept_error
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname(), timeout=5)
        hog = []
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        try:
            while True:
                hog.append(open("/dev/null"))
        except OSError:
            pass
        try:
            listener.accept()
        except OSError as exc:
            print(exc.errno, classify_accept_error(exc).name)
        else:
            print("accepted")
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(errno.EMFILE), "EXHAUSTED"]


# ---------------------------------------------------------------- Waker

def _readable(fd: int, timeout: float = 0.0) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


def test_waker_wakeup_makes_fileno_readable_and_drain_clears_it() -> None:
    waker = Waker()
    try:
        assert not _readable(waker.fileno())
        waker.wakeup()
        assert _readable(waker.fileno(), timeout=5)
        assert waker.drain() == b"\0"
        assert not _readable(waker.fileno())
        assert waker.drain() == b""
    finally:
        waker.close()


def test_waker_drain_returns_every_byte_written_since_last_drain() -> None:
    waker = Waker()
    try:
        for _ in range(3):
            waker.wakeup()
        # What the C signal handler does through signal.set_wakeup_fd.
        os.write(waker.write_fileno(), bytes([signal.SIGUSR1]))
        assert _readable(waker.fileno(), timeout=5)
        assert waker.drain() == b"\0\0\0" + bytes([signal.SIGUSR1])
    finally:
        waker.close()


def test_waker_wakeup_from_another_thread_wakes_a_blocked_select() -> None:
    waker = Waker()
    try:
        woke = threading.Event()

        def wait() -> None:
            if _readable(waker.fileno(), timeout=10):
                woke.set()

        thread = threading.Thread(target=wait)
        thread.start()
        waker.wakeup()
        thread.join(10)
        assert woke.is_set()
    finally:
        waker.close()


def test_many_wakeups_never_block() -> None:
    waker = Waker()
    done = threading.Event()

    def hammer() -> None:
        for _ in range(100_000):  # far more than the socket buffer holds
            waker.wakeup()
        done.set()

    thread = threading.Thread(target=hammer, daemon=True)
    try:
        thread.start()
        assert done.wait(30), "wakeup() blocked once the socket buffer was full"
        thread.join(5)
        data = waker.drain()
        assert data and set(data) == {0}
        assert not _readable(waker.fileno())
    finally:
        waker.close()


def test_waker_wakeup_after_close_is_safe() -> None:
    waker = Waker()
    waker.close()
    waker.wakeup()
    waker.wakeup()


def test_waker_close_is_idempotent() -> None:
    waker = Waker()
    waker.close()
    waker.close()
    assert waker.fileno() == -1
