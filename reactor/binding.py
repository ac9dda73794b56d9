"""Making listening sockets: every per-family quirk in one place.

* TCP/UDP: an IPv6 literal (``("::1", 0)``, or a 4-tuple address) selects
  ``AF_INET6`` even where the caller asked for ``AF_INET``, so the stdlib's
  "subclass to set address_family" dance is not needed.
* Unix: a path left behind by a dead process (a socket file nobody answers
  on) is replaced; a path where a live server answers, or that is not a
  socket at all, is refused with a clear error and never touched. The bound
  inode and the binding process are recorded, so ``UnixSocketPath.unlink()``
  removes the path only if it is still ours (not a successor's socket) and
  only in the process that created it (never in a forked worker). Linux
  abstract names (a leading NUL) touch no file. An optional ``mode`` sets
  the file's permissions.
* Errors say what was being bound: ``OSError(EADDRINUSE, "Address already in
  use: cannot bind tcp4 127.0.0.1:8000")`` rather than a bare errno, with the
  original exception type and errno kept so existing ``except`` clauses work.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Any

from ._platform import HAS_ABSTRACT_UNIX

__all__ = [
    "UnixSocketPath",
    "bind_socket",
    "create_server_socket",
    "describe_address",
    "family_for_address",
    "is_abstract_unix_address",
    "remove_stale_unix_socket",
]

logger = logging.getLogger(__name__)

_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "4", socket.AF_INET6: "6"}


def is_abstract_unix_address(address: object) -> bool:
    """True for a Linux abstract-namespace address (starts with a NUL)."""
    if isinstance(address, str):
        return address.startswith("\0")
    if isinstance(address, bytes):
        return address.startswith(b"\0")
    return False


def family_for_address(address: object, default: int) -> int:
    """The address family an inet address needs: ``AF_INET6`` for IPv6 literals, else ``default``.

    Only TCP/UDP defaults (``AF_INET``) are ever changed; Unix addresses and
    explicit ``AF_INET6`` pass through.
    """
    if default != socket.AF_INET or not isinstance(address, tuple):
        return default
    if len(address) == 4:
        return socket.AF_INET6
    host = address[0] if address else None
    if isinstance(host, str) and ":" in host:
        try:
            socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
        except OSError:
            return default
        return socket.AF_INET6
    return default


def describe_address(family: int, sock_type: int, address: object) -> str:
    """A short human description, e.g. ``tcp6 [::1]:8080`` or ``unix-dgram /run/x.sock``."""
    if family in _FAMILY_NAMES:
        proto = "udp" if sock_type == socket.SOCK_DGRAM else "tcp"
        proto += _FAMILY_NAMES[family]
        if isinstance(address, tuple) and len(address) >= 2:
            host, port = address[0], address[1]
            host = f"[{host}]" if family == socket.AF_INET6 else host
            return f"{proto} {host}:{port}"
        return f"{proto} {address!r}"
    if family == getattr(socket, "AF_UNIX", None):
        kind = "unix-dgram" if sock_type == socket.SOCK_DGRAM else "unix"
        if isinstance(address, bytes):
            address = address.decode("utf-8", "backslashreplace")
        if isinstance(address, str) and address.startswith("\0"):
            return f"{kind} @{address[1:]}"
        return f"{kind} {address}"
    return f"family {family} {address!r}"


@dataclass
class UnixSocketPath:
    """A Unix socket file this process bound, and the means to remove it safely.

    Attributes:
        path: the filesystem path.
        device, inode: identity of the socket file right after ``bind()``.
        owner_pid: the process that bound it; only that process unlinks it.
    """

    path: str | bytes
    device: int
    inode: int
    owner_pid: int = field(default_factory=os.getpid)

    @classmethod
    def record(cls, path: str | bytes) -> UnixSocketPath:
        """Record the identity of the socket file just bound at ``path``."""
        st = os.stat(path)
        return cls(path, st.st_dev, st.st_ino)

    def is_ours(self) -> bool:
        """True if ``path`` is still the socket file we bound."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == (self.device, self.inode)

    def unlink(self) -> bool:
        """Remove the path if it is still ours and we are its creator; True if removed.

        A forked child, or a path that was meanwhile replaced by another
        server's socket, is left alone.
        """
        if os.getpid() != self.owner_pid or not self.is_ours():
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True


def remove_stale_unix_socket(path: str | bytes, sock_type: int) -> bool:
    """Make ``path`` free for ``bind()``, removing it only if it is a dead socket file.

    Returns:
        True if a stale socket file was removed.

    Raises:
        OSError(EADDRINUSE): a live server answers on ``path``.
        FileExistsError: ``path`` exists and is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    shown = os.fsdecode(path)
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{shown} exists and is not a socket; refusing to replace it", shown)
    probe = socket.socket(socket.AF_UNIX, sock_type)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody bound to that inode any more: stale
    except FileNotFoundError:
        return False  # removed meanwhile
    except BlockingIOError:
        # Backlog full: very much alive.
        raise OSError(errno.EADDRINUSE, f"a live server is listening on {shown} (its backlog is full)") from None
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:
            raise OSError(errno.EADDRINUSE, f"a live server of another socket type is bound to {shown}") from None
        raise type(exc)(exc.errno, f"cannot tell whether {shown} is in use: {exc.strerror}") from None
    else:
        raise OSError(errno.EADDRINUSE, f"a live server is listening on {shown}; refusing to replace it")
    finally:
        probe.close()
    os.unlink(path)
    logger.info("removed stale Unix socket %s", shown)
    return True


def bind_socket(sock: socket.socket, address: Any, *, mode: int | None = None) -> UnixSocketPath | None:
    """Bind ``sock`` to ``address`` with the family's quirks handled (see module docstring).

    Args:
        sock: an unbound socket.
        address: what ``sock.bind()`` takes.
        mode: for a Unix path, permissions to set on the socket file.

    Returns:
        For a Unix path, the record needed to unlink it later; otherwise None.

    Raises:
        OSError (same type and errno as the underlying failure) with a message
        naming the address; ``TypeError``/``OverflowError`` for malformed
        addresses, likewise annotated.
    """
    family, sock_type = sock.family, sock.type
    is_unix_path = family == getattr(socket, "AF_UNIX", None) and not is_abstract_unix_address(address)
    where = describe_address(family, sock_type, address)
    if family == getattr(socket, "AF_UNIX", None) and is_abstract_unix_address(address) and not HAS_ABSTRACT_UNIX:
        raise OSError(errno.EINVAL, f"abstract Unix socket names need Linux: cannot bind {where}")
    try:
        if is_unix_path:
            remove_stale_unix_socket(address, sock_type)
        sock.bind(address)
    except OSError as exc:
        if exc.errno is None:
            # CPython raises some errors without an errno ("AF_UNIX path too long").
            raise type(exc)(f"{exc}: cannot bind {where}") from None
        if exc.strerror is None or "cannot bind" in exc.strerror:
            raise
        raise _annotated(exc, f"{exc.strerror}: cannot bind {where}") from None
    except (TypeError, OverflowError, ValueError) as exc:
        raise type(exc)(f"{exc}: cannot bind {where}") from None
    if not is_unix_path:
        return None
    record = UnixSocketPath.record(address)
    if mode is not None:
        try:
            os.chmod(address, mode)
        except OSError:
            record.unlink()
            raise
    return record


def _annotated(exc: OSError, message: str) -> OSError:
    if isinstance(exc, socket.gaierror):
        return socket.gaierror(exc.errno, message)
    new = type(exc)(exc.errno, message)
    if exc.filename is not None:  # a None filename would still print as ": None"
        new.filename = exc.filename
    return new


def create_server_socket(
    family: int,
    sock_type: int,
    address: Any,
    *,
    backlog: int = 1024,
    reuse_address: bool | None = None,
    reuse_port: bool = False,
    v6only: bool | None = None,
    mode: int | None = None,
) -> tuple[socket.socket, UnixSocketPath | None]:
    """Create, bind and (for streams) listen: a ready listening socket.

    Args:
        family: ``AF_INET``, ``AF_INET6`` or ``AF_UNIX``; ``AF_INET`` becomes
            ``AF_INET6`` for an IPv6 address.
        sock_type: ``SOCK_STREAM`` or ``SOCK_DGRAM``.
        address: the address to bind.
        backlog: ``listen()`` backlog for stream sockets.
        reuse_address: set ``SO_REUSEADDR``; default: on for TCP, off otherwise.
        reuse_port: set ``SO_REUSEPORT`` (Availability: Linux, BSD).
        v6only: set ``IPV6_V6ONLY`` on IPv6 sockets; None keeps the OS default.
        mode: permissions of a Unix socket file.

    Returns:
        The socket (non-inheritable, blocking) and, for a Unix path, its record.
    """
    family = family_for_address(address, family)
    sock = socket.socket(family, sock_type)
    try:
        inet = family in _FAMILY_NAMES
        if reuse_address is None:
            reuse_address = inet and sock_type == socket.SOCK_STREAM
        if reuse_address and inet:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if v6only is not None and family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        unix_path = bind_socket(sock, address, mode=mode)
        try:
            if sock_type == socket.SOCK_STREAM:
                sock.listen(backlog)
        except BaseException:
            if unix_path is not None:
                unix_path.unlink()
            raise
    except BaseException:
        sock.close()
        raise
    return sock, unix_path
