"""Whole-process upgrade (the command's SIGUSR2): a new master takes over the listening sockets.

Like gunicorn's USR2 or nginx's binary upgrade, but with a hand-over rather
than two masters left side by side:

1. The running master (the *old* one) starts a fresh interpreter with the
   same command line (``python -m reactor ARGS``, from the directory it was
   started in), so whatever code is now on disk, reactor's and the
   application's, is what runs. Every listening socket is passed through as
   an open descriptor (never re-bound: no connection queued in a backlog is
   lost, no port is free for a moment) and named in the environment, with
   the ``--bind`` it serves: :data:`FDS_VARIABLE`. A pipe is passed too
   (:data:`READY_VARIABLE`).
2. The new master (the *successor*) reads and removes both variables before
   anything else (its own children must not believe they are successors),
   serves the inherited sockets instead of binding its ``--bind`` URLs, and
   when it is ready (every server listening, every Prefork worker booted)
   writes ``READY <pid>`` on the pipe. Until then both masters accept on the
   same sockets; that is harmless, each serves what it takes.
3. The old master then hands over: it disowns its Unix socket files (the
   successor now removes them when it stops), leaves the pid file the
   successor wrote, tells systemd ``MAINPID=<new pid>`` (never
   ``STOPPING=1``: the service goes on), stops taking connections, drains
   what it has in flight and exits 0. Its listeners stay non-blocking
   (``Reactor.close(restore_listeners=False)``): the flag lives in the open
   file description both processes share.
4. If the successor fails (it exits, or closes the pipe, or is not ready
   within the deadline), the old master logs why, ends it by its pid
   (SIGTERM, then SIGKILL), reaps it, writes its own pid file again and
   keeps serving. A second SIGUSR2 while one upgrade runs is ignored.

Rules
-----
1. The successor takes ownership of an inherited Unix socket file only once
   it has reported ready; a successor that fails before never removes the
   path the old master still serves. At the deadline the old master reads
   the pipe once more before it ends the successor, so a report that came
   with the deadline is a hand-over, not a failure.
2. A successor sets every inherited socket non-blocking before hosting it,
   so its own leaving (even a failed start) restores non-blocking, never
   blocking, for the old master still accepting on it.
3. ``WATCHDOG_PID`` naming the old master is not passed on (sd_watchdog_enabled:
   no ``WATCHDOG_PID`` means any process); the successor sets it to its own
   pid for its children. Under systemd the unit needs ``NotifyAccess=all``
   for the successor's notifications to count before ``MAINPID=`` moves.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, Protocol

from ._timers import TimerHandle
from .binding import UnixSocketPath
from .loop import EventLoop
from .systemd import Notifier

__all__ = ["DEFAULT_READY_TIMEOUT", "FDS_VARIABLE", "READY_VARIABLE", "Successor", "Upgrade", "UpgradeListener",
           "successor_command"]

logger = logging.getLogger(__name__)

#: JSON list, one object per inherited socket: ``server`` and ``bind`` (positions in the
#: command line), ``url``, ``fd``, and for a Unix socket file ``path``, ``device``, ``inode``.
FDS_VARIABLE = "REACTOR_UPGRADE_FDS"
#: The descriptor of the pipe on which the successor writes ``READY <pid>``.
READY_VARIABLE = "REACTOR_UPGRADE_READY_FD"
#: Seconds a successor has to report ready before the old master gives up on it.
DEFAULT_READY_TIMEOUT = 60.0
#: After SIGTERM, seconds a failed successor has to exit before SIGKILL.
_TERM_GRACE = 5.0
#: How often the old master looks for the exit of a failed successor.
_REAP_POLL = 0.02


class UpgradeListener(Protocol):
    """What the upgrade needs of a listener of the command (``reactor.cli.Listener``)."""

    bind: Any  # a BindAddress: its ``url``
    sock: socket.socket
    unix_path: UnixSocketPath | None


# ---------------------------------------------------------------- the new master's side


@dataclasses.dataclass
class _Inherited:
    server: int
    bind: int
    url: str
    sock: socket.socket
    unix_path: UnixSocketPath | None
    taken: bool = False


class Successor:
    """This process is the new master of an upgrade: its inherited sockets, and the pipe to report ready.

    Made by :meth:`from_environment`; None there when this process was started any other way.
    """

    def __init__(self, inherited: list[_Inherited], ready_fd: int) -> None:
        self._inherited = inherited
        self._ready_fd: int | None = ready_fd

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Successor | None:
        """Read (and remove) the upgrade variables; None when there are none.

        Raises:
            ValueError: malformed variables, or a named descriptor that is not an open socket.
        """
        env = os.environ if environ is None else environ
        fds_text, ready_text = env.pop(FDS_VARIABLE, None), env.pop(READY_VARIABLE, None)
        if fds_text is None and ready_text is None:
            return None
        if fds_text is None or ready_text is None or not ready_text.isdigit():
            raise ValueError(f"{FDS_VARIABLE} and {READY_VARIABLE} go together ({READY_VARIABLE} a descriptor)")
        ready_fd = int(ready_text)
        try:
            entries = json.loads(fds_text)
            checked = [(int(e["server"]), int(e["bind"]), str(e["url"]), int(e["fd"]), e.get("path"),
                        int(e.get("device", 0)), int(e.get("inode", 0))) for e in entries]
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{FDS_VARIABLE} is malformed: {exc!r}") from None
        for fd in [ready_fd] + [entry[3] for entry in checked]:
            try:
                os.fstat(fd)
            except OSError as exc:
                raise ValueError(f"descriptor {fd} named by the upgrade is not open: {exc.strerror}") from None
            os.set_inheritable(fd, False)
        inherited = []
        for server, bind, url, fd, path, device, inode in checked:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise ValueError(f"descriptor {fd} ({url}) named by the upgrade is not a socket")
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)  # rule 2: what our own leaving restores
            record = UnixSocketPath(path, device, inode) if isinstance(path, str) else None
            inherited.append(_Inherited(server, bind, url, sock, record))
        if "WATCHDOG_USEC" in env and "WATCHDOG_PID" not in env:
            env["WATCHDOG_PID"] = str(os.getpid())  # rule 3: keep-alives are ours, not our children's
        return cls(inherited, ready_fd)

    @property
    def reported(self) -> bool:
        """True once this process told the old master it is ready (and so took over)."""
        return self._ready_fd is None

    def take(self, server: int, binds: Sequence[Any]) -> list[tuple[Any, socket.socket]] | None:
        """The inherited sockets of server number ``server`` (whose ``--bind`` list is ``binds``),
        each with the bind it serves; None unless every one of its binds was inherited (then bind
        them as usual: the same command line always inherits them all)."""
        matching = [item for item in self._inherited
                    if item.server == server and item.bind < len(binds) and binds[item.bind].url == item.url]
        if not binds or {item.bind for item in matching} != set(range(len(binds))):
            return None
        for item in matching:
            item.taken = True
        return [(binds[item.bind], item.sock) for item in matching]

    def close_untaken(self) -> None:
        """Close inherited sockets that no ``--bind`` took (the command line changed)."""
        for item in self._inherited:
            if not item.taken and item.sock.fileno() >= 0:
                logger.warning("inherited %s (descriptor %d) is served by no --bind any more; closing it",
                               item.url, item.sock.fileno())
                item.sock.close()

    def ready(self, listeners: Sequence[UpgradeListener]) -> None:
        """Take ownership of the inherited Unix socket files and tell the old master we serve."""
        if self._ready_fd is None:
            return  # reported already
        for listener in listeners:
            for item in self._inherited:
                if item.sock is listener.sock and item.unix_path is not None:
                    listener.unix_path = UnixSocketPath(item.unix_path.path, item.unix_path.device,
                                                        item.unix_path.inode)  # owned by this pid
        fd, self._ready_fd = self._ready_fd, None
        try:
            os.write(fd, f"READY {os.getpid()}\n".encode())
        except OSError as exc:
            logger.warning("cannot tell the old master we are ready: %s", exc.strerror)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- the old master's side


class Upgrade:
    """The old master's side: start a successor on SIGUSR2, hand over once it is ready.

    Args:
        command: the successor's command line, e.g. ``[sys.executable, "-m", "reactor", *args]``.
        cwd: the directory it starts in (where the old master was started: ``--chdir`` is relative to it).
        notifier: where ``MAINPID=`` goes.
        timeout: seconds the successor has to report ready.

    Thread-safety: belongs to the loop's thread.
    """

    def __init__(self, command: Sequence[str], *, cwd: str, notifier: Notifier,
                 timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.notifier = notifier
        self.timeout = timeout
        #: True once a successor took over: the old master is leaving.
        self.handed_over = False
        self._process: subprocess.Popen[bytes] | None = None
        self._ready_read: int | None = None
        self._buffer = b""
        self._loop: EventLoop | None = None
        self._timer: TimerHandle | None = None
        self._listeners: Sequence[UpgradeListener] = ()
        self._on_ready: Callable[[int], None] | None = None
        self._on_failed: Callable[[], None] | None = None

    @property
    def in_progress(self) -> bool:
        """True from ``start()`` until the successor took over or was ended."""
        return self._process is not None and not self.handed_over

    def start(self, loop: EventLoop, listeners: Sequence[UpgradeListener], bind_positions: Sequence[tuple[int, int]],
              *, on_ready: Callable[[int], None], on_failed: Callable[[], None]) -> bool:
        """Start a successor that inherits ``listeners``; False (logged) if one runs already or it cannot start.

        Args:
            bind_positions: for each listener, (server number, bind number) on the command line.
            on_ready: called with the successor's pid once it took over (Unix files disowned,
                ``MAINPID=`` sent): stop serving, leave the pid file.
            on_failed: called once a failed successor is reaped: write the pid file again.
        """
        if self.handed_over or self._process is not None:
            logger.warning("SIGUSR2: an upgrade is already in progress (new master %s); ignored",
                           self._process.pid if self._process is not None else "?",
                           extra={"event": "upgrade_ignored"})
            return False
        entries: list[dict[str, Any]] = []
        for listener, (server, bind) in zip(listeners, bind_positions):
            entry: dict[str, Any] = {"server": server, "bind": bind, "url": listener.bind.url,
                                     "fd": listener.sock.fileno()}
            if listener.unix_path is not None:
                entry.update(path=os.fsdecode(listener.unix_path.path), device=listener.unix_path.device,
                             inode=listener.unix_path.inode)
            entries.append(entry)
        env = dict(os.environ)
        env[FDS_VARIABLE] = json.dumps(entries)
        if env.get("WATCHDOG_PID") == str(os.getpid()):
            del env["WATCHDOG_PID"]  # rule 3
        read_end, write_end = os.pipe()
        env[READY_VARIABLE] = str(write_end)
        try:
            process = subprocess.Popen(self.command, cwd=self.cwd, env=env,
                                       pass_fds=[write_end, *(entry["fd"] for entry in entries)])
        except OSError as exc:
            os.close(read_end)
            logger.error("SIGUSR2: cannot start a new master: %s; still serving", exc,
                         extra={"event": "upgrade_failed"})
            return False
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        self._process, self._ready_read, self._buffer = process, read_end, b""
        self._loop, self._listeners, self._on_ready, self._on_failed = loop, listeners, on_ready, on_failed
        loop.add_reader(read_end, self._on_readable)
        self._timer = loop.call_later(self.timeout, self._on_timeout)
        logger.info("SIGUSR2: upgrading: new master %d started; serving until it is ready", process.pid,
                    extra={"event": "upgrading", "new_pid": process.pid})
        return True

    def _on_timeout(self) -> None:
        self._timer = None
        self._on_readable()  # a report that came with the deadline still counts (rule 1: it owns the files now)
        if self._ready_read is not None:
            self._fail(f"not ready within {self.timeout:g} s")

    def _on_readable(self) -> None:
        assert self._ready_read is not None
        try:
            data = os.read(self._ready_read, 256)
        except BlockingIOError:
            return
        if not data:
            self._fail("it exited or closed its pipe before it was ready")
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if not newline:
            return
        word, _, pid_text = line.decode("ascii", "replace").partition(" ")
        assert self._process is not None
        if word != "READY" or pid_text != str(self._process.pid):
            self._fail(f"it sent {line!r} instead of READY {self._process.pid}")
            return
        self._close_pipe()
        self.handed_over = True
        pid = self._process.pid
        for listener in self._listeners:
            listener.unix_path = None  # the successor removes them when it stops
        self.notifier.main_pid(pid, f"upgraded: new master {pid}")
        logger.info("upgraded: new master %d is ready; draining and exiting", pid,
                    extra={"event": "upgraded", "new_pid": pid})
        if self._on_ready is not None:
            self._on_ready(pid)

    def _close_pipe(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ready_read is not None:
            if self._loop is not None and not self._loop.closed:
                self._loop.remove_reader(self._ready_read)
            os.close(self._ready_read)
            self._ready_read = None

    def _fail(self, reason: str) -> None:
        self._close_pipe()
        process = self._process
        assert process is not None
        logger.error("upgrade failed: new master %d %s; ending it, still serving", process.pid, reason,
                     extra={"event": "upgrade_failed", "new_pid": process.pid})
        self._end(process, signal.SIGTERM, _TERM_GRACE)

    def _end(self, process: subprocess.Popen[bytes], signum: int, grace: float) -> None:
        """Signal ``process`` (by its pid) unless it exited; poll for its exit; SIGKILL after ``grace``."""
        if process.poll() is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + grace

        def poll() -> None:
            if process.poll() is not None:
                self._reaped(process)
            elif loop.time() >= deadline and signum != signal.SIGKILL:
                self._end(process, signal.SIGKILL, grace)
            else:
                loop.call_later(_REAP_POLL, poll)

        poll()

    def _reaped(self, process: subprocess.Popen[bytes]) -> None:
        if self._process is not process:
            return  # abort() took it
        logger.info("the failed new master %d is gone (%s)", process.pid, _describe(process.returncode),
                    extra={"event": "upgrade_reaped", "new_pid": process.pid, "status": process.returncode})
        self._process = None
        if self._on_failed is not None:
            self._on_failed()

    def abort(self) -> None:
        """Stopping while an upgrade is in progress: end the successor and reap it before returning."""
        process = self._process
        if process is None or self.handed_over:
            return
        self._close_pipe()
        logger.warning("stopping during an upgrade: ending the new master %d", process.pid,
                       extra={"event": "upgrade_aborted", "new_pid": process.pid})
        try:
            process.terminate()
            try:
                process.wait(_TERM_GRACE)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        except ProcessLookupError:
            pass
        self._process = None


def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def successor_command(arguments: Sequence[str]) -> list[str]:
    """The command line of a successor: this interpreter, ``-m reactor``, the same arguments."""
    return [sys.executable, "-m", "reactor", *arguments]
