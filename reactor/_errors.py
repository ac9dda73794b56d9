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
  ENONET, EHOSTDOWN, EHOSTUNREACH, ENETUNREACH, ENOPROTOOPT, EOPNOTSUPP,
  ETIMEDOUT, ENOSR, ESOCKTNOSUPPORT, EPROTONOSUPPORT).** The peer reset it
  while it sat in the backlog, or a firewall rule refused it (EPERM). The
  accept(2) man page lists the pass-through errors as "network errors for the
  new socket"; trio's ``SocketListener`` ignores the same set. That connection
  is gone; the listener is fine. Ignore it and keep accepting: stopping the
  batch here would leave good connections waiting.

* **We are out of a resource (EMFILE, ENFILE, ENOBUFS, ENOMEM).** The pending
  connection stays in the kernel backlog, so the listener stays readable. A
  loop that retries at once spins at 100% CPU (this is what ``socketserver``
  does: ``_handle_request_noblock`` swallows every ``OSError``), and a loop that
  lets the error escape dies (Tornado's failure mode). The only sane answer is
  asyncio's: log once per burst, take the listener out of the selector, retry
  on a timer with backoff. Connections wait in the backlog meanwhile, and
  serving resumes by itself when descriptors free up.

* **Anything else (EBADF, ENOTSOCK, EINVAL, EFAULT, ENOTCONN...).** The
  listener itself is broken: closed behind our back, never listening, or not
  the kind of socket its ``get_request()`` expects (``recvfrom`` on an
  unconnected stream socket says ENOTCONN). That is a programming error;
  raise it loudly rather than guess.

EINTR never reaches us: PEP 475 made the socket calls retry it, so there is no
EINTR branch anywhere in reactor.

``get_request()`` is more than accept()
---------------------------------------
An errno is a statement about the system call that failed, and the classifier
sees the exception, not the call. For reactor's own servers ``get_request()``
is one accept(2) or recvfrom(2), so the table above is the whole story. A
hosted stdlib server may do more before it returns: the TLS recipe of the
``ssl`` and ``http.server`` docs, ``server.socket =
context.wrap_socket(server.socket, server_side=True)``, turns it into
``SSLSocket.accept()``, which is accept(2) on the plain socket and then, on the
*new* socket, the whole server-side handshake. The listener's own failures all
come out of that first accept(2), as ordinary OSErrors with genuine
errnos, and are classified above. Whatever fails after it is about one
connection, and three kinds of error come out of there:

* **TLS errors: every ``ssl.SSLError``, whatever its errno.** An SSLError's
  ``errno`` is not an errno but OpenSSL's ``SSL_get_error()`` code, and read
  as errnos those codes mean nonsense: SSL_ERROR_SSL (1) is EPERM,
  SSL_ERROR_WANT_READ (2) ENOENT, SSL_ERROR_SYSCALL (5) EIO, SSL_ERROR_EOF (8)
  ENOEXEC. Reading them that way once took a listener down for every port
  scan (connect, close: ``SSLEOFError``, 8), while plain text sent to the TLS
  port (``[SSL: HTTP_REQUEST]``, 1) was dropped only because 1 happens to be
  EPERM. So the type decides, before the errno is looked at: a client that
  closes or resets mid-handshake, sends plain text, or rejects our
  certificate, is one dropped connection. So is CPython's own SSLError for a
  peer that sent data and left before the handshake (the CVE-2023-40217 check,
  which carries a real ENOTCONN). Even a misconfigured context (no
  certificate, no shared cipher) fails connections one at a time, each taken
  and closed by ``SSLSocket``; detaching the listener would not fix it, and the
  stdlib's own ``ThreadingHTTPServer`` keeps serving too. asyncio takes the
  same view: a failed handshake closes that transport and nothing else
  (``sslproto.py``), and trio runs the handshake on the stream, never in
  ``accept()``. The check does not import ``ssl`` (a heavy import we never
  need otherwise): an SSLError can only exist once ``ssl`` is imported, so it
  is looked up in ``sys.modules``, and without it no exception can be one.

* **No errno at all (``errno is None``).** The kernel reports a failed system
  call with an errno, always; an ``OSError`` without one was made in Python,
  after the system calls succeeded. The one the stdlib makes here is the
  handshake's ``TimeoutError`` ("The handshake operation timed out"), when
  ``socket.setdefaulttimeout()`` gives accepted sockets a timeout; the others
  are a server's own ``get_request()`` raising ``OSError("...")``. None of them
  says the listener is broken: drop the request. The price is one failure
  mode: a ``get_request()`` that raises such an error *without* taking the
  connection leaves the listener readable, and the loop spins on it (the
  accept batch limit keeps the other servers served, not the CPU idle).
  Detaching the listener for every handshake that timed out would be worse:
  that is the bug this rule fixes.

* **Errors of the new connection's own I/O.** The handshake reads and writes
  the accepted socket, so its failures arrive as ordinary OSErrors with
  genuine errnos: ECONNRESET (a reset mid-handshake), EPIPE (a write to a peer
  that has already reset), ETIMEDOUT (TCP gave up retransmitting). All three
  are in the "connection died" class; EPIPE is there only for this reason, as
  accept(2) and recvfrom(2) never return it.

What the classifier cannot tell apart: a connection-level failure that
carries a listener-level errno. Tornado (``tcpserver.py``, PR #750) reports
that on Mac OS X the ``getpeername()`` inside ``wrap_socket`` fails with
EINVAL when a port scan has already closed the connection (Linux says
ENOTCONN, which ``ssl`` tolerates; macOS is not checked here). ``ssl``
re-raises any other errno, so that arrives as a plain ``OSError(EINVAL)`` and
is FATAL here. Only the listener can settle such a case
(``getsockopt(SO_ACCEPTCONN)`` says whether it still listens), and this module
never sees the listener.

Exceptions that are not ``OSError`` are not accept errors, and the classifier
is not asked about them: the accept path (``reactor.accept``) catches ``OSError``
only, as ``socketserver``'s ``_handle_request_noblock`` does. One comes out of the same
recipe: ``ValueError("do_handshake_on_connect should not be specified for
non-blocking sockets")``, for every connection once
``socket.setdefaulttimeout(0)`` makes accepted sockets non-blocking. That is a
misconfiguration, not a network event, and it must be seen rather than
counted: it goes on to the loop, which logs it with its traceback and keeps
the listener and serving (loop.py, rule 7), where the stdlib's
``serve_forever`` dies of it.

``RequestDropped`` is reactor's own member of the "connection died" class: a
``get_request()`` raises it when it consumed a request that must not reach the
handler (a truncated datagram), so the batch moves on to the next one.
"""

from __future__ import annotations

import enum
import errno
import sys

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
    "ECONNREFUSED", "ETIMEDOUT", "ENOSR", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT",
    "EPIPE",
)
_EXHAUSTED = _codes("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")


def _is_tls_error(exc: OSError) -> bool:
    """True if ``exc`` is an ``ssl.SSLError``, without importing ``ssl``."""
    ssl = sys.modules.get("ssl")
    ssl_error = getattr(ssl, "SSLError", None)
    return isinstance(ssl_error, type) and isinstance(exc, ssl_error)


def classify_accept_error(exc: OSError) -> AcceptOutcome:
    """Classify an error raised while taking one request off a listener.

    Args:
        exc: the error raised by ``accept()``, ``recvfrom()`` or a server's
            ``get_request()`` (which may have run a TLS handshake too).

    Returns:
        The policy outcome (see the module docstring): DROPPED for
        ``RequestDropped``, any ``ssl.SSLError`` and any error without an
        errno; otherwise decided by the errno, FATAL when it is none of the
        known ones.
    """
    if isinstance(exc, RequestDropped) or _is_tls_error(exc):
        return AcceptOutcome.DROPPED
    code = exc.errno
    if code is None:
        return AcceptOutcome.DROPPED
    if code in _EMPTY:
        return AcceptOutcome.EMPTY
    if code in _DROPPED:
        return AcceptOutcome.DROPPED
    if code in _EXHAUSTED:
        return AcceptOutcome.EXHAUSTED
    return AcceptOutcome.FATAL
