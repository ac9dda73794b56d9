"""systemd integration, stdlib only: socket activation and readiness notification.

Socket activation
-----------------
A service manager (systemd, ``systemd-socket-activate``, s6, launchd's
emulations) binds the listening sockets itself and starts the server with them
open as descriptors 3, 4, ... and three variables in its environment:

* ``LISTEN_FDS``: how many descriptors were passed (they start at 3);
* ``LISTEN_PID``: the pid they are meant for. A process that inherited the
  variables from its parent (a shell script that forked before exec) must not
  take them: its pid differs;
* ``LISTEN_FDNAMES``: optional, colon-separated names (systemd's
  ``FileDescriptorName=``, the socket unit's name by default).

:func:`listen_fds` reads them once, wraps each descriptor in a
``socket.socket`` whose family and type are read from the descriptor itself
(``getsockopt(SO_DOMAIN/SO_TYPE)``, which ``socket.socket(fileno=...)`` does),
never re-binds anything, marks the descriptors close-on-exec and removes the
three variables from ``os.environ`` so that no child process believes the
sockets are its own.

Readiness
---------
A ``Type=notify`` service tells its manager how it is doing with datagrams
sent to the Unix socket named by ``NOTIFY_SOCKET`` (a filesystem path, or
``@name`` for the Linux abstract namespace): ``READY=1`` once it serves,
``RELOADING=1`` (with ``MONOTONIC_USEC=``) and ``READY=1`` around a reload,
``STOPPING=1`` when it begins to stop, ``MAINPID=`` when another process
takes over as the main one (a whole-process upgrade), ``STATUS=...`` free text for
``systemctl status``, and ``WATCHDOG=1`` keep-alives when ``WatchdogSec=`` is
set (the manager passes ``WATCHDOG_USEC`` and, optionally, ``WATCHDOG_PID``).
:class:`Notifier` sends them; without ``NOTIFY_SOCKET`` every method does
nothing, so a program can call it unconditionally.

The watchdog keep-alive runs on the caller's event loop, at half of
``WATCHDOG_USEC`` as ``sd_watchdog_enabled(3)`` advises: if the loop stops
turning (a handler stuck in the loop thread), the keep-alives stop and the
manager restarts the service, which is the point.

Nothing here raises for a notification that cannot be delivered: the service
goes on, and the failure is logged once.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, NamedTuple, Protocol

__all__ = ["ActivatedSocket", "Notifier", "SD_LISTEN_FDS_START", "listen_fds", "watchdog_interval"]

logger = logging.getLogger(__name__)

#: The first descriptor a service manager passes.
SD_LISTEN_FDS_START = 3

_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivatedSocket(NamedTuple):
    """One socket passed by the service manager.

    Attributes:
        name: its name from ``LISTEN_FDNAMES`` (``"unknown"`` when none was given).
        sock: the socket, wrapping the inherited descriptor (family and type read from it).
    """

    name: str
    sock: socket.socket


def listen_fds(*, unset_environment: bool = True,
               environ: MutableMapping[str, str] | None = None) -> list[ActivatedSocket]:
    """The sockets passed by a service manager (``sd_listen_fds_with_names(3)``), in order.

    Args:
        unset_environment: remove ``LISTEN_PID``, ``LISTEN_FDS`` and
            ``LISTEN_FDNAMES`` from the environment (whether or not they were
            meant for this process), so children do not inherit them.
        environ: the environment to read (default ``os.environ``).

    Returns:
        An empty list when nothing was passed to this process (no
        ``LISTEN_FDS``, or ``LISTEN_PID`` missing or naming another process).

    Raises:
        ValueError: the variables are malformed (not numbers, names that do
            not match the count), or a passed descriptor is not an open socket.
    """
    env = os.environ if environ is None else environ
    values = {name: env.get(name) for name in _ACTIVATION_VARIABLES}
    if unset_environment:
        for name in _ACTIVATION_VARIABLES:
            env.pop(name, None)
    count_text, pid_text, names_text = values["LISTEN_FDS"], values["LISTEN_PID"], values["LISTEN_FDNAMES"]
    if count_text is None:
        return []
    if pid_text is None:
        logger.warning("LISTEN_FDS is set but LISTEN_PID is not: ignoring the passed descriptors")
        return []
    pid, count = _parse_count("LISTEN_PID", pid_text), _parse_count("LISTEN_FDS", count_text)
    if pid != os.getpid():
        logger.warning("LISTEN_PID=%d is not this process (%d): ignoring the passed descriptors", pid, os.getpid())
        return []
    if count == 0:
        return []
    if names_text is None:
        names = ["unknown"] * count
    else:
        names = names_text.split(":") if names_text else [""]
        if len(names) != count:
            raise ValueError(f"LISTEN_FDNAMES has {len(names)} names ({names_text!r}) for LISTEN_FDS={count}")
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)
    for fd, name in zip(fds, names):  # check them all before wrapping any
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise ValueError(f"descriptor {fd} ({name}) passed by the service manager is not open: "
                             f"{exc.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise ValueError(f"descriptor {fd} ({name}) passed by the service manager is not a socket")
    activated = []
    for fd, name in zip(fds, names):
        os.set_inheritable(fd, False)
        activated.append(ActivatedSocket(name, socket.socket(fileno=fd)))
    return activated


def _parse_count(name: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"{name}={text!r} is not a non-negative number")
    return int(text)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which the manager expects a ``WATCHDOG=1`` (``sd_watchdog_enabled(3)``), or None.

    None when ``WATCHDOG_USEC`` is unset, zero or malformed, or when
    ``WATCHDOG_PID`` is set and names another process.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not a number: no watchdog keep-alives", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            logger.warning("WATCHDOG_PID=%r is not a number: no watchdog keep-alives", pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 1_000_000


class _Cancellable(Protocol):
    def cancel(self) -> None:
        """Cancel the call."""


class TimerLoop(Protocol):
    """What the watchdog needs of an event loop (``reactor.EventLoop`` has it)."""

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Cancellable:
        """Run ``callback(*args)`` in the loop after ``delay`` seconds."""


class Notifier:
    """Sends ``sd_notify(3)`` messages to the service manager; does nothing without ``NOTIFY_SOCKET``.

    Args:
        address: the notification socket: a path, or ``@name`` for an
            abstract one; default ``NOTIFY_SOCKET`` from ``environ``.
        environ: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
            ``WATCHDOG_PID`` are read (default ``os.environ``); they are left in place.

    Thread-safety: ``notify()`` and its shorthands may be called from any
    thread; the watchdog belongs to the loop it was started on.
    """

    def __init__(self, address: str | None = None, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        if address is None:
            address = env.get("NOTIFY_SOCKET") or None
        self.address = address
        self.watchdog_interval = watchdog_interval(env) if address is not None else None
        self._watchdog_timer: _Cancellable | None = None
        self._failed_once = False
        self._target: str | bytes | None = None
        if address is not None:
            if address.startswith("@"):
                self._target = b"\0" + address[1:].encode()
            elif address.startswith("/"):
                self._target = address
            else:
                logger.warning("NOTIFY_SOCKET=%r is neither an absolute path nor @abstract: not notifying", address)
                self.watchdog_interval = None

    def __repr__(self) -> str:
        return f"Notifier({self.address!r})" if self.enabled else "Notifier(disabled)"

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to send to."""
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines (``notify("READY=1", "STATUS=serving")``).

        Returns:
            True if it was sent; False when disabled or undeliverable (logged once).
        """
        if self._target is None or not assignments:
            return False
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"a notification is a KEY=VALUE line, not {item!r}")
        message = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # never stall the loop on a manager that does not read
                sock.sendto(message, self._target)
        except OSError as exc:
            if not self._failed_once:
                self._failed_once = True
                reason = "its queue is full" if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) else exc
                logger.warning("cannot notify the service manager at %s (%s); going on without it",
                               self.address, reason)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup (or a reload) is finished and the service serves."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload began; send ``ready()`` when it ends."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the service began to stop."""
        return self.notify("STOPPING=1", *_status(status))

    def main_pid(self, pid: int, status: str | None = None) -> bool:
        """``MAINPID=pid``: the service's main process is now ``pid`` (after a whole-process upgrade).

        The manager accepts it from the current main process; the new one
        may notify before that only under ``NotifyAccess=all``.
        """
        return self.notify(f"MAINPID={pid}", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line for ``systemctl status``."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: one keep-alive."""
        return self.notify("WATCHDOG=1")

    def start_watchdog(self, loop: TimerLoop) -> bool:
        """Send ``WATCHDOG=1`` now and then every half ``watchdog_interval``, on ``loop``.

        Returns:
            True if the manager asked for keep-alives (and they now run).
        """
        interval = self.watchdog_interval
        if interval is None or self._watchdog_timer is not None:
            return interval is not None

        def beat() -> None:
            self._watchdog_timer = loop.call_later(interval / 2, beat)
            self.watchdog()

        beat()
        return True

    def stop_watchdog(self) -> None:
        """Stop the keep-alives (before the loop closes)."""
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
            self._watchdog_timer = None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.split()),)  # one line
