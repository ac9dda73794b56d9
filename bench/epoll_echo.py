"""The ceiling for Python code: a minimal level-triggered epoll echo loop, no framework at all.

``serve(sock, burn)`` echoes on a bound socket (listening for streams) until
SIGTERM, SIGINT or SIGUSR1 arrives, then closes every connection and returns
the signal. One ``recv`` per readiness event, one ``send`` per chunk; a chunk
the kernel does not take whole is kept and the connection waits for
``EPOLLOUT`` (not reading meanwhile). Datagrams are read until ``EAGAIN``.
Reads ask for 64 KiB: a 256 KiB buffer is served by glibc with mmap, and
every small ``recv`` would then pay mmap + munmap (30 us against 4 us).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Callable

READ_SIZE = 64 * 1024
IN, OUT = select.EPOLLIN, select.EPOLLOUT


def serve(sock: socket.socket, burn: Callable[[], None] | None = None) -> tuple[int, float, float]:
    """Echo on ``sock`` until a stop signal; returns it, and the seconds from its arrival to the
    loop having returned and to every connection being closed."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, lambda signum, frame: None)  # the wake-up fd carries it
    sock.setblocking(False)
    ep = select.epoll()
    ep.register(wake_r, IN)
    ep.register(sock.fileno(), IN)
    lfd, stream = sock.fileno(), sock.type == socket.SOCK_STREAM
    conns: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}  # what a connection still has to send
    stop, started = 0, 0.0
    while not stop:
        for fd, events in ep.poll():
            conn = conns.get(fd)
            if conn is not None:
                if events & OUT:  # writable again: finish the chunk, then read on
                    data = pending.pop(fd)
                else:
                    try:
                        data = conn.recv(READ_SIZE)
                    except OSError:
                        data = b""
                    if not data:
                        ep.unregister(fd)
                        del conns[fd]
                        conn.close()
                        continue
                    if burn is not None:
                        burn()
                try:
                    sent = conn.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    sent = len(data)  # the peer left: its EOF comes next
                if sent < len(data):
                    pending[fd] = data[sent:]
                    ep.modify(fd, OUT)
                elif events & OUT:
                    ep.modify(fd, IN)
            elif fd == lfd and stream:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                conns[conn.fileno()] = conn
                ep.register(conn.fileno(), IN)
            elif fd == lfd:
                while True:
                    try:
                        data, addr = sock.recvfrom(READ_SIZE)
                    except (BlockingIOError, InterruptedError):
                        break
                    if burn is not None:
                        burn()
                    try:
                        sock.sendto(data, addr)
                    except OSError:
                        pass  # a full buffer drops the reply, as the C reference does
            else:
                got = os.read(wake_r, 64)
                stop = got[-1] if got else 0
                started = time.perf_counter()
    stopped = time.perf_counter()
    for conn in conns.values():
        conn.close()
    ep.close()
    signal.set_wakeup_fd(old_wakeup)
    os.close(wake_r)
    os.close(wake_w)
    return stop, stopped - started, time.perf_counter() - started
