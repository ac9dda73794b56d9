"""A socketpair that wakes a selector from another thread or from a signal."""

from __future__ import annotations

import socket

__all__ = ["Waker"]


class Waker:
    """Two connected non-blocking sockets: writing to one makes the other readable.

    The reactor registers ``fileno()`` for reading. ``wakeup()`` may be called
    from any thread; ``signal.set_wakeup_fd(waker.write_fileno())`` makes the
    C-level signal handler write the signal number into it, so signals wake
    the loop too.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """The descriptor to watch for reading."""
        return self._reader.fileno()

    def write_fileno(self) -> int:
        """The descriptor that wakes the reader when written (for ``signal.set_wakeup_fd``)."""
        return self._writer.fileno()

    def wakeup(self) -> None:
        """Make ``fileno()`` readable. Thread-safe; never blocks.

        A zero byte is written; signal numbers are never zero, so the reader
        can tell wakeups from signals.
        """
        try:
            self._writer.send(b"\0")
        except BlockingIOError:
            # The buffer is full: the reader is already due to wake up.
            pass
        except OSError:
            # Closed during interpreter or reactor shutdown: nothing to wake.
            pass

    def drain(self) -> bytes:
        """Read and return everything written since the last drain."""
        chunks = []
        while True:
            try:
                data = self._reader.recv(4096)
            except BlockingIOError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        """Close both ends; idempotent."""
        self._reader.close()
        self._writer.close()
