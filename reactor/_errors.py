"""What to do when accept() or recvfrom() fails: the errno policy of the accept path.

Theory
------
A listening socket reported readable is a hint, not a promise. Between the
wakeup and our call several things can happen, and each calls for a different
answer:

* **Nothing to take (EAGAIN / EWOULDBLOCK).** Another process sharing the
  listener won the race (pre-fork workers all wake on one connection), the
  wakeup was spurious, or a batch simply drained the queue. This is the normal
  end of every accept batch: return quietly and wait for the next event.

* **The connection died before we got it (ECONNABORTED, EPROTO, ECONNRESET,
  EPERM, and the network errors Linux passes through accept(2): ENETDOWN,
  ENONET, EHOSTDOWN, EHOSTUNREACH, ENETUNREACH, ENOPROTOOPT, EOPNOTSUPP).**
  The peer reset it while it sat in the backlog, or a firewall rule refused it
  (EPERM). That connection is gone; the listener is fine. Ignore it and keep
  accepting: stopping the batch here would leave good connections waiting.

* **We are out of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM).** The pending
  connection stays in the kernel backlog, so the listener stays readable. A
  loop that retries at once spins at 100% CPU (this is what ``socketserver``
  does: ``_handle_request_noblock`` swallows every ``OSError``), and a loop that
  lets the error escape dies (Tornado's failure mode). The only sane answer is
  asyncio's: log once per burst, take the listener out of the selector, retry
  on a timer with backoff. Connections wait in the backlog meanwhile, and
  serving resumes by itself when descriptors free up.

* **Anything else (EBADF, ENOTSOCK, EINVAL, EFAULT).** The listener itself is
  broken, usually closed behind our back. That is a programming error; raise it
  loudly rather than guess.

EINTR never reaches us: PEP 475 made the socket calls retry it, so there is no
EINTR branch anywhere in reactor.

``RequestDropped`` is reactor's own member of the "connection died" class: a
``get_request()`` raises it when it consumed a request that must not reach the
handler (a truncated datagram), so the batch moves on to the next one.
"""

from __future__ import annotations

import enum
import errno

__all__ = ["AcceptOutcome", "RequestDropped", "classify_accept_error"]


class AcceptOutcome(enum.Enum):
    """What the accept path does with an ``OSError`` from ``get_request()``."""

    #: Nothing is waiting: end the batch quietly.
    EMPTY = "empty"
    #: That one request died on the way in: skip it, keep accepting.
    DROPPED = "dropped"
    #: A resource is exhausted: pause the listener and retry on a timer.
    EXHAUSTED = "exhausted"
    #: The listener is broken: re-raise.
    FATAL = "fatal"


class RequestDropped(OSError):
    """A request was consumed but discarded before reaching the handler."""


def _codes(*names: str) -> frozenset[int]:
    # Not every errno exists on every POSIX system (ENONET is Linux-only).
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


_EMPTY = _codes("EAGAIN", "EWOULDBLOCK")
_DROPPED = _codes(
    "ECONNABORTED", "EPROTO", "ECONNRESET", "EPERM", "ENETDOWN", "ENONET",
    "EHOSTDOWN", "EHOSTUNREACH", "ENETUNREACH", "ENOPROTOOPT", "EOPNOTSUPP",
    "ECONNREFUSED",
)
_EXHAUSTED = _codes("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")


def classify_accept_error(exc: OSError) -> AcceptOutcome:
    """Classify an error raised while taking one request off a listener.

    Args:
        exc: the error raised by ``accept()``, ``recvfrom()`` or a server's
            ``get_request()``.

    Returns:
        The policy outcome (see the module docstring).
    """
    if isinstance(exc, RequestDropped):
        return AcceptOutcome.DROPPED
    code = exc.errno
    if code in _EMPTY:
        return AcceptOutcome.EMPTY
    if code in _DROPPED:
        return AcceptOutcome.DROPPED
    if code in _EXHAUSTED:
        return AcceptOutcome.EXHAUSTED
    return AcceptOutcome.FATAL
