"""A hand-made socket activator for tests: what systemd does, without systemd.

``activated_argv(argv)`` prefixes a command line with a tiny launcher that
moves the descriptors it was given (``pass_fds``) to 3, 4, ..., sets
``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (its own pid, which the
program keeps because the launcher ``exec``s it) and execs the program. The
real ``systemd-socket-activate`` launches only on the first connection and
cannot bind port 0; this one serves the tests that need neither limit.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence

__all__ = ["LAUNCHER", "SOCKET_ACTIVATE", "activated_argv"]

#: The real activator (Debian's ``systemd`` package; .ci/run installs it when missing).
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"

LAUNCHER = r"""
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",") if fd]
names = sys.argv[2]
# First out of the way (above any target number), then into place: 3, 4, ...
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)  # dup2 makes the copy inheritable
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
if names != "-":
    os.environ["LISTEN_FDNAMES"] = names
os.execv(sys.argv[3], sys.argv[3:])
"""


def activated_argv(fds: Sequence[int], argv: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """A command line that runs ``argv`` with ``fds`` passed as activated sockets 3, 4, ...

    Start it with ``pass_fds=fds``. ``names`` become ``LISTEN_FDNAMES`` (None: unset).
    """
    shown = "-" if names is None else ":".join(names)
    return [sys.executable, "-c", LAUNCHER, ",".join(str(fd) for fd in fds), shown, *argv]
