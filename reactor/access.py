"""Who may connect, and how many at once: access rules and connection limits for one listener.

This module decides; it never touches a connection. The accept path asks it
about every accepted connection before any hook of the server runs, and closes
the ones it refuses. Everything here is pure (no I/O) except
``peer_credentials()``, which asks the kernel who is on the other end of a
Unix stream socket.

Access rules
------------
An ``AccessRules`` holds an allow list and a deny list of entries of two
kinds: *network* entries (``"10.0.0.0/8"``, ``"::1/128"``, ``"192.0.2.7"``
for one host) and *credential* entries (``"uid:1000"``, ``"gid:50"``).

1. **Deny wins.** A client that matches a deny entry is refused, whatever the
   allow list says.
2. **An allow list means default-deny.** If there are allow entries of the
   client's kind, the client must match one of them; if there are none, a
   client that no deny entry matched is permitted. An empty rule set permits
   everything, and costs one attribute test per connection.
3. **Each kind of entry judges what it can see, and every kind present
   must pass.** Network entries judge the client's IP address (behind a
   PROXY header, the proxied client's); credential entries judge the peer
   process of a Unix stream connection (behind a header, the proxy itself).
   So a Unix listener behind HAProxy can require both the proxy's uid and a
   client network. A client without an IP address (a Unix peer speaking for
   itself, or a proxy's own connection: a LOCAL header) is judged by the
   credential entries alone; a *proxied* client without one (a v2 header
   naming Unix addresses) matches no network allow entry. Entries that can
   never apply to a listener are a configuration error, which
   ``validate_for(family, proxied=...)`` reports once, when the listener is
   configured, rather than silently ignoring them on every connection:
   ``uid:`` rules on a TCP listener, and, unless the listener reads PROXY
   headers (whose clients may be of any family), network rules on a Unix
   listener.
4. **IPv4-mapped addresses are IPv4.** A dual-stack IPv6 listener sees an IPv4
   client as ``::ffff:a.b.c.d``; it is matched as ``a.b.c.d`` against the IPv4
   entries. A network entry written inside the mapped block
   (``"::ffff:10.0.0.0/104"``) is turned into its IPv4 network
   (``10.0.0.0/8``) when parsed, so it means what it says. IPv6 entries that
   merely contain the mapped block (``"::/0"``) do not match IPv4 clients:
   write ``"0.0.0.0/0"`` for those. Other embeddings (NAT64, 6to4) are IPv6.
5. **Scope ids never change a decision.** ``"fe80::1%eth0"`` in a client
   address is matched as ``fe80::1``; entries cannot carry a scope id.
6. **Unix clients are judged by their credentials.** ``uid:N`` matches a peer
   whose effective uid is N, ``gid:N`` one whose effective gid is N (the
   primary group only: SO_PEERCRED carries no supplementary groups). When
   credential rules exist but the credentials are unknown (``None``: not
   Linux, or the kernel had none), the client is refused. For an
   abstract-namespace socket (``"\\0name"``, Linux) credentials are the only
   access control there is: it has no file, hence no file permissions, and
   any process in the network namespace can connect to it.
7. **What cannot be classified is refused.** A client address that is neither
   an IP address tuple nor a Unix address (a ``str``/``bytes`` path, ``""``
   for an unnamed client, or ``None``) matches no entry, and any non-empty
   rule set refuses it: a rule set is never bypassed by an address it cannot
   read.

Connection limits
-----------------
``ConnectionLimits`` counts the open connections of one server, in total and
per client IP (the IPv4-mapped form counts as the IPv4 address; the scope id
is ignored). ``admit()`` counts a connection or names the limit that refused
it; ``release()`` uncounts it when it closes. Unix clients (and any address
that is not an IP address) count toward the total but have no per-IP key:
they are never limited per IP, and ``active_for()`` is 0 for them.

When ``at_capacity`` is true the caller stops accepting (it takes the listener
out of the selector) rather than accepting and refusing: the kernel backlog
holds the burst, as gunicorn does with ``set_accept_enabled``.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["AccessRules", "ConnectionLimits", "Credentials", "peer_credentials"]


# ---------------------------------------------------------------- client addresses

#: What ``_classify`` returns besides 4 and 6 for the version of an IP client.
_LOCAL = 0     # a Unix client: a str/bytes path ("" when unnamed), or None
_UNKNOWN = -1  # anything else: matches no entry

_MAPPED_HIGH = 0xFFFF  # the upper 96 bits of ::ffff:0:0/96
_V4_BITS = 0xFFFF_FFFF


def _classify(client_address: object) -> tuple[int, int]:
    """(4 or 6, the address as an int) for an IP client; (_LOCAL, 0) or (_UNKNOWN, 0) otherwise.

    Accepts the tuples socket.accept() gives: ``(host, port)`` and ``(host,
    port, flowinfo, scope_id)``, with a numeric host. IPv4-mapped IPv6 comes
    back as IPv4; a ``%scope`` suffix is dropped. ``inet_pton`` does the
    parsing: it is strict (no leading zeros, no short forms of IPv4) and an
    order of magnitude faster than ``ipaddress``.
    """
    if isinstance(client_address, tuple):
        if not client_address or not isinstance(client_address[0], str):
            return _UNKNOWN, 0
        host: str = client_address[0]
        try:
            if ":" in host:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.partition("%")[0]), "big")
                if value >> 32 == _MAPPED_HIGH:
                    return 4, value & _V4_BITS
                return 6, value
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
        except (OSError, ValueError):  # not a numeric address; ValueError: an embedded NUL
            return _UNKNOWN, 0
    if client_address is None or isinstance(client_address, (str, bytes)):
        return _LOCAL, 0
    return _UNKNOWN, 0


def _ip_key(client_address: object) -> tuple[int, int] | None:
    """The per-IP key of ``client_address`` ((version, int)), or None for a client that has no IP."""
    version, value = _classify(client_address)
    return (version, value) if version in (4, 6) else None


# ---------------------------------------------------------------- rule entries

_Net = tuple[int, int]  # (network address, netmask) as ints: value & mask == net
_MAX_ID = 0xFFFF_FFFE   # uid_t/gid_t are 32 bits; (uid_t)-1 means "no id"


def _parse_id(entry: str, prefix: str) -> int:
    text = entry[len(prefix):]
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{prefix} wants a decimal number, got {text!r}")
    value = int(text)
    if value > _MAX_ID:
        raise ValueError(f"{value} is beyond the largest {prefix[:-1]} ({_MAX_ID})")
    return value


def _parse_network(entry: str) -> tuple[int, _Net]:
    """(4 or 6, (net, mask)) for a network or host entry; IPv4-mapped networks become IPv4."""
    if "%" in entry:
        raise ValueError("entries cannot carry a scope id (the scope id of a client is ignored)")
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        address, slash, prefix = entry.partition("/")
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            raise ValueError("not an IP network, an IP address, or a uid:/gid: entry"
                             " (host names are not resolved)") from None
        raise ValueError(f"{prefix!r} is not a prefix length or netmask for an IPv{version}"
                         f" address (0 to {32 if version == 4 else 128})") from None
    try:
        ipaddress.ip_network(entry, strict=True)
    except ValueError:
        raise ValueError(f"host bits set (did you mean {str(network)!r}?)") from None
    net, mask = int(network.network_address), int(network.netmask)
    if network.version == 6 and network.prefixlen >= 96 and net >> 32 == _MAPPED_HIGH:
        return 4, (net & _V4_BITS, mask & _V4_BITS)
    return network.version, (net, mask)


class _Entries:
    """One list (allow or deny), parsed and grouped by kind."""

    __slots__ = ("texts", "v4", "v6", "uids", "gids")

    def __init__(self, what: str, entries: Iterable[str]) -> None:
        if isinstance(entries, (str, bytes)):
            raise TypeError(f"{what} must be an iterable of entries, not a single {type(entries).__name__}"
                            f" (write {what}=[{entries!r}])")
        self.texts: tuple[str, ...] = tuple(entries)
        v4: list[_Net] = []
        v6: list[_Net] = []
        uids: set[int] = set()
        gids: set[int] = set()
        for entry in self.texts:
            if not isinstance(entry, str):
                raise TypeError(f"{what} entry {entry!r} is a {type(entry).__name__}, not a str")
            try:
                if entry.startswith("uid:"):
                    uids.add(_parse_id(entry, "uid:"))
                elif entry.startswith("gid:"):
                    gids.add(_parse_id(entry, "gid:"))
                else:
                    version, net = _parse_network(entry)
                    (v4 if version == 4 else v6).append(net)
            except ValueError as exc:
                raise ValueError(f"bad {what} entry {entry!r}: {exc}") from None
        self.v4 = tuple(dict.fromkeys(v4))  # duplicates dropped, order kept
        self.v6 = tuple(dict.fromkeys(v6))
        self.uids = frozenset(uids)
        self.gids = frozenset(gids)

    @property
    def network_texts(self) -> list[str]:
        return [t for t in self.texts if not t.startswith(("uid:", "gid:"))]

    @property
    def credential_texts(self) -> list[str]:
        return [t for t in self.texts if t.startswith(("uid:", "gid:"))]


# ---------------------------------------------------------------- credentials

@dataclass(frozen=True, slots=True)
class Credentials:
    """The peer of a Unix stream socket, as the kernel saw it when it connected (or called listen()).

    ``pid`` is 0 when the peer is in a PID namespace we cannot see into.
    ``uid`` and ``gid`` are the effective ids, as mapped into our user namespace.
    """

    pid: int
    uid: int
    gid: int


_UCRED = struct.Struct("iII")  # Linux struct ucred: pid_t pid; uid_t uid; gid_t gid
_NO_ID = 0xFFFF_FFFF           # (uid_t)-1: the kernel has no credentials for this socket


def peer_credentials(sock: socket.socket) -> Credentials | None:
    """The credentials of the process at the other end of a Unix socket, or None.

    Args:
        sock: a connected socket: for an accepted one, the client; for a
            client, the process that called ``listen()``; for a socketpair, the
            process that created it.

    Returns:
        The peer's pid, uid and gid; None for a socket that is not AF_UNIX,
        one the kernel has no credentials for (not connected), or where
        SO_PEERCRED does not exist. None is the answer for any TCP socket: on
        Linux SO_PEERCRED there gives pid 0 and uid/gid (uid_t)-1, "nobody
        known", so it is not even asked.

    Raises:
        OSError: EBADF for a closed socket (a programming error, raised loudly).

    Availability: Linux (SO_PEERCRED, ``struct ucred``). Elsewhere None: the
    BSDs and macOS have ``getpeereid()`` / LOCAL_PEERCRED, which the standard
    library does not expose. The module asks ``hasattr(socket,
    "SO_PEERCRED")``, never the platform; OpenBSD also defines SO_PEERCRED but
    orders its ``struct sockpeercred`` uid, gid, pid, and is not supported.
    """
    if not hasattr(socket, "SO_PEERCRED") or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise
        return None
    pid, uid, gid = _UCRED.unpack(raw)
    if uid == _NO_ID:
        return None
    return Credentials(pid=pid, uid=uid, gid=gid)


# ---------------------------------------------------------------- access rules

def _family_name(family: int) -> str:
    try:
        return socket.AddressFamily(family).name
    except ValueError:
        return f"address family {family}"


class AccessRules:
    """Allow and deny lists for one listener (the module docstring has the rules).

    Args:
        allow: entries a client must match one of (per kind; empty: no allow list).
        deny: entries that refuse a client, before the allow list is looked at.
            Entries are strings: a network (``"10.0.0.0/8"``, ``"2001:db8::/32"``),
            a host (``"192.0.2.7"``, ``"::1"``), or, for Unix stream listeners,
            ``"uid:1000"`` / ``"gid:50"`` (checked against SO_PEERCRED).

    Raises:
        ValueError: an entry that does not parse, naming it and its list
            (``"10.0.0.0/33"``, ``"10.0.0.1/8"`` with host bits set, ``"uid:x"``,
            a host name, a scope id).
        TypeError: a single string where a list of entries was meant, or an
            entry that is not a string.

    Thread-safety: immutable after construction; ``permits()`` may be called
    from any thread.
    """

    __slots__ = ("_allow", "_deny", "_empty", "_network_allow", "_credential_rules", "_credential_allow")

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self._allow = _Entries("allow", allow)
        self._deny = _Entries("deny", deny)
        self._empty = not (self._allow.texts or self._deny.texts)
        self._network_allow = bool(self._allow.v4 or self._allow.v6)
        self._credential_allow = bool(self._allow.uids or self._allow.gids)
        self._credential_rules = self._credential_allow or bool(self._deny.uids or self._deny.gids)

    @property
    def empty(self) -> bool:
        """True when there are no entries at all: every client is permitted."""
        return self._empty

    @property
    def allow(self) -> tuple[str, ...]:
        """The allow entries, as given."""
        return self._allow.texts

    @property
    def deny(self) -> tuple[str, ...]:
        """The deny entries, as given."""
        return self._deny.texts

    def __repr__(self) -> str:
        return f"AccessRules(allow={list(self._allow.texts)!r}, deny={list(self._deny.texts)!r})"

    def permits(self, client_address: object, credentials: Credentials | None = None, *,
                proxied: bool = False) -> bool:
        """Whether a client may connect.

        Args:
            client_address: as socketserver gives it: ``("1.2.3.4", port)``,
                ``("::1", port, flowinfo, scope_id)`` (the host may carry a
                ``%scope``), a Unix path as str or bytes (``""`` for an unnamed
                client, bytes starting with NUL for the abstract namespace), or None.
            credentials: the peer credentials of a Unix stream connection
                (``peer_credentials()``); None where there are none, which
                any credential entry refuses.
            proxied: ``client_address`` came from a PROXY header (it names a
                client other than the socket's peer).

        Returns:
            True if the client is permitted. The address is parsed once; each
            applicable entry costs an AND and a compare (networks) or a set
            lookup (ids).
        """
        if self._empty:
            return True
        if self._credential_rules and not self._permits_credentials(credentials):
            return False
        version, value = _classify(client_address)
        if version == 4:
            deny, allow = self._deny.v4, self._allow.v4
        elif version == 6:
            deny, allow = self._deny.v6, self._allow.v6
        elif version == _LOCAL:
            return not (proxied and self._network_allow)
        else:
            return False
        for net, mask in deny:
            if value & mask == net:
                return False
        if not self._network_allow:
            return True
        for net, mask in allow:
            if value & mask == net:
                return True
        return False

    def _permits_credentials(self, credentials: Credentials | None) -> bool:
        if credentials is None:
            return False  # rules we cannot check: refuse
        deny = self._deny
        if credentials.uid in deny.uids or credentials.gid in deny.gids:
            return False
        if not self._credential_allow:
            return True
        allow = self._allow
        return credentials.uid in allow.uids or credentials.gid in allow.gids

    def validate_for(self, family: int, *, proxied: bool = False) -> None:
        """Check that every entry can apply to a listener of ``family``.

        An empty rule set suits every family. Otherwise:

        * AF_INET / AF_INET6: no ``uid:``/``gid:`` entries (a TCP peer has no
          credentials). An AF_INET listener with network allow entries needs an
          IPv4 one among them, or it would refuse every client, unless it is
          ``proxied``. IPv6 entries on an AF_INET listener are otherwise
          accepted, so that one rule set (``["127.0.0.1", "::1"]``) can serve a
          pair of IPv4 and IPv6 listeners.
        * AF_UNIX: no network entries (a Unix client has no IP address),
          unless the listener is ``proxied``. Credentials come only with
          stream sockets: a datagram listener has no connection to check.
        * any other family: no rules at all.

        Args:
            proxied: the listener reads PROXY protocol headers, so its clients
                may be of any family, whatever the listener's own.

        Raises:
            ValueError: naming the entries that cannot apply and the family.
        """
        if self._empty:
            return
        name = _family_name(family)
        credential = self._allow.credential_texts + self._deny.credential_texts
        network = self._allow.network_texts + self._deny.network_texts
        if family in (socket.AF_INET, socket.AF_INET6):
            if credential:
                raise ValueError(f"uid:/gid: entries apply only to Unix stream listeners, not to an {name}"
                                 f" listener: {credential}")
            if family == socket.AF_INET and self._network_allow and not self._allow.v4 and not proxied:
                raise ValueError(f"no allow entry can match a client of an {name} listener, which would"
                                 f" refuse every connection: {list(self._allow.texts)}")
            return
        if family == getattr(socket, "AF_UNIX", None):
            if network and not proxied:
                raise ValueError(f"network entries do not apply to an {name} listener (its clients have no"
                                 f" IP address; use uid:/gid: entries): {network}")
            return
        raise ValueError(f"access rules apply to AF_INET, AF_INET6 and AF_UNIX listeners, not to {name}")


# ---------------------------------------------------------------- connection limits

def _check_limit(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1 (None for no limit), got {value}")
    return value


class ConnectionLimits:
    """Counts the open connections of one server, in total and per client IP.

    Args:
        max_connections: the most connections open at once; None for no limit.
        max_connections_per_ip: the most connections open at once from one IP
            address (IPv4-mapped addresses count as IPv4, scope ids are
            ignored; Unix clients are not limited per IP); None for no limit.

    Raises:
        ValueError: a limit below 1.
        TypeError: a limit that is not an int.

    Thread-safety: pure accounting for one thread (the loop's); no locking.
    """

    __slots__ = ("_max", "_max_per_ip", "_active", "_per_ip")

    def __init__(self, max_connections: int | None = None, max_connections_per_ip: int | None = None) -> None:
        self._max = _check_limit("max_connections", max_connections)
        self._max_per_ip = _check_limit("max_connections_per_ip", max_connections_per_ip)
        self._active = 0
        self._per_ip: dict[tuple[int, int], int] = {}  # only keys with a count above 0

    @property
    def max_connections(self) -> int | None:
        """The total limit (None: none)."""
        return self._max

    @property
    def max_connections_per_ip(self) -> int | None:
        """The per-IP limit (None: none)."""
        return self._max_per_ip

    @property
    def active(self) -> int:
        """Connections admitted and not yet released."""
        return self._active

    @property
    def at_capacity(self) -> bool:
        """True when ``active >= max_connections``: stop accepting until a release."""
        return self._max is not None and self._active >= self._max

    def active_for(self, client_address: object) -> int:
        """Open connections from the IP address of ``client_address`` (0 for a client without one)."""
        key = _ip_key(client_address)
        return 0 if key is None else self._per_ip.get(key, 0)

    def admit(self, client_address: object) -> str | None:
        """Count a new connection, unless a limit refuses it.

        Returns:
            None if the connection was admitted (and counted); otherwise the
            name of the limit that refused it, ``"max_connections"`` (checked
            first) or ``"max_connections_per_ip"``; a refused connection is not
            counted.
        """
        if self._max is not None and self._active >= self._max:
            return "max_connections"
        key = _ip_key(client_address)
        if key is not None:
            count = self._per_ip.get(key, 0)
            if self._max_per_ip is not None and count >= self._max_per_ip:
                return "max_connections_per_ip"
            self._per_ip[key] = count + 1
        self._active += 1
        return None

    def release(self, client_address: object) -> None:
        """Uncount a connection that ``admit()`` counted, now closed.

        Raises:
            RuntimeError: nothing to release (no admitted connection open, or
                none from this client's IP); the counts are left unchanged.
        """
        key = _ip_key(client_address)
        if self._active == 0:
            raise RuntimeError(f"release({client_address!r}) without a matching admit(): no connection is open")
        if key is not None:
            count = self._per_ip.get(key, 0)
            if count == 0:
                raise RuntimeError(f"release({client_address!r}) without a matching admit():"
                                   " no connection from this IP is open")
            if count == 1:
                del self._per_ip[key]
            else:
                self._per_ip[key] = count - 1
        self._active -= 1

    def __repr__(self) -> str:
        return (f"ConnectionLimits(max_connections={self._max!r}, max_connections_per_ip={self._max_per_ip!r},"
                f" active={self._active})")
