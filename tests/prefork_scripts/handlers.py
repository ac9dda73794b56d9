"""Request handlers and helpers shared by the pre-fork server scripts.

Every reply names the process (and thread) that served it, so a test knows
which worker ran each request. Nothing here sleeps: a "slow" request blocks
until its client sends a second line, a "hang" request blocks forever.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import sys
import threading

from collections.abc import Callable
from typing import Any

from reactor import socketserver


PR_SET_CHILD_SUBREAPER = 36


def setup_process() -> None:
    """For the master: logs to stderr with the pid on every line, no core files, and a subreaper.

    As a child subreaper (Linux), the master adopts any descendant orphaned
    by its parent's exit, so a worker the arbiter exited without reaping shows
    up in the master's ``children`` report instead of vanishing into init.
    """
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(process)d %(levelname)s %(name)s: %(message)s")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def emit(*words: object) -> None:
    """One machine-readable line on stdout for the test."""
    print(*words, flush=True)


class PidStreamHandler(socketserver.StreamRequestHandler):
    """``pid`` -> ``<pid>``; ``slow`` -> ``started <pid> <thread>``, waits for a line, ``done <pid>``;
    ``hang`` -> blocks forever (a handler stuck in the worker's loop thread)."""

    def handle(self) -> None:
        command = self.rfile.readline().strip()
        pid = os.getpid()
        if command == b"pid":
            self.wfile.write(b"%d\n" % pid)
        elif command == b"slow":
            self.wfile.write(b"started %d %d\n" % (pid, threading.get_ident()))
            self.rfile.readline()
            self.wfile.write(b"done %d\n" % pid)
        elif command == b"hang":
            threading.Event().wait()


class PidDatagramHandler(socketserver.DatagramRequestHandler):
    """Any datagram -> ``<pid> <thread name>``."""

    def handle(self) -> None:
        self.rfile.read()
        self.wfile.write(b"%d %s" % (os.getpid(), threading.current_thread().name.encode()))


def on_stdin_lines(reactor: Any, commands: dict[bytes, Callable[[], object]]) -> None:
    """Run ``commands[line]`` for each line the test writes on stdin; stop the reactor at EOF."""
    fd = sys.stdin.fileno()
    pending = b""

    def on_stdin() -> None:
        nonlocal pending
        data = os.read(fd, 4096)
        if not data:
            reactor.remove_reader(fd)
            reactor.stop()
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            command = commands.get(line.strip())
            if command is not None:
                command()

    reactor.add_reader(fd, on_stdin)
