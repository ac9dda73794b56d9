"""Platform facts, decided once by probing. The only module that asks ``sys.platform``.

Everything else in reactor imports the answers from here, so a port to another
POSIX system is a change to this file alone.
"""

from __future__ import annotations

import functools
import os
import selectors
import socket
import sys

__all__ = [
    "HAS_ABSTRACT_UNIX",
    "HAS_RECVMSG_TRUNC",
    "HAS_FORK",
    "HAS_UNIX_SOCKETS",
    "TCP_INFO",
    "TCP_STATE_CLOSE",
    "available_selectors",
    "pidfd_available",
    "ipv6_loopback_available",
]

#: Linux names Unix sockets in an abstract namespace when the path starts with NUL.
HAS_ABSTRACT_UNIX: bool = sys.platform.startswith("linux")

#: Unix domain sockets exist (every POSIX system; not Windows).
HAS_UNIX_SOCKETS: bool = hasattr(socket, "AF_UNIX")

#: ``os.fork`` exists (POSIX): the forking mixins and ``Prefork`` can work.
HAS_FORK: bool = hasattr(os, "fork")

#: ``recvmsg_into`` reports ``MSG_TRUNC`` in the message flags, so a datagram
#: larger than the buffer is detected instead of silently cut.
HAS_RECVMSG_TRUNC: bool = hasattr(socket.socket, "recvmsg_into") and hasattr(socket, "MSG_TRUNC")

#: Linux's ``TCP_INFO`` socket option, whose first byte is the connection's state
#: (``TCP_STATE_CLOSE`` once a reset ended it, ``CLOSE_WAIT`` after an orderly FIN);
#: None elsewhere. It tells a reset from an EOF where OpenSSL reports both as EOF.
TCP_INFO: int | None = getattr(socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None
TCP_STATE_CLOSE = 7


def _can_use(selector_class: type[selectors.BaseSelector]) -> bool:
    # Same idea as selectors._can_use: a class can exist yet fail at runtime
    # (epoll in some sandboxes), so try to make one.
    try:
        selector = selector_class()
    except OSError:
        return False
    selector.close()
    return True


@functools.lru_cache(maxsize=None)
def available_selectors() -> tuple[type[selectors.BaseSelector], ...]:
    """Every selector class that works on this machine, best first."""
    names = ("KqueueSelector", "EpollSelector", "DevpollSelector", "PollSelector", "SelectSelector")
    found = []
    for name in names:
        cls = getattr(selectors, name, None)
        if cls is not None and _can_use(cls):
            found.append(cls)
    return tuple(found)


@functools.lru_cache(maxsize=None)
def ipv6_loopback_available() -> bool:
    """True when a socket can be bound to ``::1`` here (containers often lack IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def pidfd_available() -> bool:
    """True when ``os.pidfd_open`` works here (Linux 5.3+): a child's exit can be watched like a socket."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return False
    try:
        fd = pidfd_open(os.getpid())
    except OSError:  # ENOSYS on old kernels, EPERM under some sandboxes
        return False
    os.close(fd)
    return True
