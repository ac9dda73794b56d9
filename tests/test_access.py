"""reactor.access: access rules, connection limits and peer credentials.

The rules and the limits are pure: they are fed client addresses in the shapes
socket.accept() gives, no socket needed. ``peer_credentials`` is tested on real
Unix sockets (a socketpair, a filesystem listener, an abstract-namespace
listener) and on TCP, where it has nothing to say.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import uuid
from collections.abc import Iterator

import pytest

from reactor._platform import HAS_ABSTRACT_UNIX
from reactor.access import AccessRules, ConnectionLimits, Credentials, peer_credentials

needs_peercred = pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="no SO_PEERCRED (not Linux)")
needs_abstract = pytest.mark.skipif(not HAS_ABSTRACT_UNIX, reason="no abstract Unix namespace (not Linux)")

ME = Credentials(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())


def v4(host: str, port: int = 40000) -> tuple[str, int]:
    return (host, port)


def v6(host: str, port: int = 40000, scope_id: int = 0) -> tuple[str, int, int, int]:
    return (host, port, 0, scope_id)


# ---------------------------------------------------------------- parsing

@pytest.mark.parametrize("entry", [
    "10.0.0.0/8", "192.0.2.7", "192.0.2.7/32", "0.0.0.0/0", "10.0.0.0/255.0.0.0",
    "::1", "::1/128", "2001:db8::/32", "::/0", "fe80::/10", "::ffff:10.0.0.0/104", "::ffff:10.1.2.3",
    "uid:0", "uid:1000", "gid:50", "uid:4294967294",
])
def test_valid_entries_parse_in_both_lists(entry: str) -> None:
    assert not AccessRules(allow=[entry]).empty
    assert not AccessRules(deny=[entry]).empty


@pytest.mark.parametrize("entry, explanation", [
    ("10.0.0.0/33", "'33' is not a prefix length or netmask for an IPv4 address (0 to 32)"),
    ("::1/129", "'129' is not a prefix length or netmask for an IPv6 address (0 to 128)"),
    ("10.0.0.0/x", "'x' is not a prefix length"),
    ("10.0.0.1/8", "host bits set (did you mean '10.0.0.0/8'?)"),
    ("2001:db8::1/32", "host bits set (did you mean '2001:db8::/32'?)"),
    ("host.example", "host names are not resolved"),
    ("localhost", "host names are not resolved"),
    ("1.2.3", "not an IP network"),
    ("010.0.0.1", "not an IP network"),
    ("", "not an IP network"),
    (" 10.0.0.0/8", "not an IP network"),
    ("fe80::1%eth0", "scope id"),
    ("fe80::%eth0/64", "scope id"),
    ("uid:x", "uid: wants a decimal number, got 'x'"),
    ("uid:", "uid: wants a decimal number, got ''"),
    ("uid:-1", "uid: wants a decimal number"),
    ("uid: 1", "uid: wants a decimal number"),
    ("uid:1_000", "uid: wants a decimal number"),
    ("uid:\u0661", "uid: wants a decimal number"),  # an Arabic-Indic digit: isdigit(), not ASCII
    ("gid:4294967295", "beyond the largest gid"),
    ("UID:1000", "not an IP network, an IP address, or a uid:/gid: entry"),
    ("user:1000", "not an IP network"),
])
@pytest.mark.parametrize("which", ["allow", "deny"])
def test_bad_entries_raise_a_value_error_naming_the_entry_and_the_list(
        which: str, entry: str, explanation: str) -> None:
    with pytest.raises(ValueError) as info:
        AccessRules(**{which: ["10.0.0.0/8", entry]})
    message = str(info.value)
    assert message.startswith(f"bad {which} entry {entry!r}: "), message
    assert explanation in message


def test_a_single_string_is_not_taken_for_a_list_of_entries() -> None:
    # Iterating "10.0.0.0/8" would give "1", which ipaddress reads as 0.0.0.1.
    with pytest.raises(TypeError, match=r"write allow=\['10.0.0.0/8'\]"):
        AccessRules(allow="10.0.0.0/8")
    with pytest.raises(TypeError, match="not a single bytes"):
        AccessRules(deny=b"10.0.0.0/8")  # type: ignore[arg-type]


def test_entries_must_be_strings() -> None:
    with pytest.raises(TypeError, match="deny entry 167772160 is a int, not a str"):
        AccessRules(deny=[167772160])  # type: ignore[list-item]


def test_any_iterable_of_entries_is_accepted_and_kept_as_given() -> None:
    rules = AccessRules(allow=(e for e in ["10.0.0.0/8", "uid:5"]), deny={"192.0.2.7"})
    assert rules.allow == ("10.0.0.0/8", "uid:5")
    assert rules.deny == ("192.0.2.7",)
    assert repr(rules) == "AccessRules(allow=['10.0.0.0/8', 'uid:5'], deny=['192.0.2.7'])"


def test_empty() -> None:
    assert AccessRules().empty
    assert AccessRules(allow=[], deny=()).empty
    assert not AccessRules(deny=["uid:0"]).empty
    assert not AccessRules(allow=["::/0"]).empty


# ---------------------------------------------------------------- matching IP clients

ANYTHING = [v4("10.1.2.3"), v4("0.0.0.0"), v6("::1"), v6("fe80::1%eth0", scope_id=2), v6("::ffff:10.1.2.3"),
            "/tmp/x.sock", b"/tmp/x.sock", b"\0abstract", "", None, ("host.example", 80), (), 42]


@pytest.mark.parametrize("client", ANYTHING, ids=repr)
def test_an_empty_rule_set_permits_everything(client: object) -> None:
    assert AccessRules().permits(client)
    assert AccessRules().permits(client, None)


def test_a_deny_list_alone_refuses_what_it_lists_and_permits_the_rest() -> None:
    rules = AccessRules(deny=["10.0.0.0/8", "2001:db8::/32"])
    assert not rules.permits(v4("10.0.0.0"))
    assert not rules.permits(v4("10.255.255.255"))
    assert rules.permits(v4("11.0.0.0"))
    assert rules.permits(v4("9.255.255.255"))
    assert not rules.permits(v6("2001:db8:ffff::1"))
    assert rules.permits(v6("2001:db9::1"))


def test_an_allow_list_means_default_deny_for_both_ip_versions() -> None:
    rules = AccessRules(allow=["127.0.0.0/8"])
    assert rules.permits(v4("127.0.0.1"))
    assert not rules.permits(v4("128.0.0.1"))
    assert not rules.permits(v6("::1")), "an IPv4-only allow list refuses IPv6 clients"


def test_a_host_entry_matches_that_host_only() -> None:
    rules = AccessRules(allow=["192.0.2.7", "2001:db8::7"])
    assert rules.permits(v4("192.0.2.7"))
    assert not rules.permits(v4("192.0.2.6"))
    assert not rules.permits(v4("192.0.2.8"))
    assert rules.permits(v6("2001:db8::7"))
    assert rules.permits(v6("2001:db8:0:0:0:0:0:7")), "any spelling of the address"
    assert not rules.permits(v6("2001:db8::8"))


def test_deny_wins_over_allow() -> None:
    rules = AccessRules(allow=["10.0.0.0/8", "10.1.2.3"], deny=["10.1.0.0/16"])
    assert rules.permits(v4("10.2.0.1"))
    assert not rules.permits(v4("10.1.0.1"))
    assert not rules.permits(v4("10.1.2.3")), "a host allowed by name is still inside a denied network"
    same = AccessRules(allow=["::1"], deny=["::1"])
    assert not same.permits(v6("::1"))


def test_the_whole_address_space() -> None:
    rules = AccessRules(allow=["0.0.0.0/0"], deny=["::/0"])
    assert rules.permits(v4("255.255.255.255"))
    assert not rules.permits(v6("2001:db8::1"))


def test_ipv6_clients_with_four_tuples() -> None:
    rules = AccessRules(allow=["2001:db8::/32"], deny=["2001:db8:bad::/48"])
    assert rules.permits(("2001:db8::1", 443, 0, 0))
    assert rules.permits(("2001:db8::1", 443, 12345, 0)), "the flow info does not matter"
    assert not rules.permits(("2001:db8:bad::1", 443, 0, 0))
    assert not rules.permits(("2001:db9::1", 443, 0, 0))


def test_a_scope_id_in_the_client_address_is_ignored() -> None:
    rules = AccessRules(allow=["fe80::/10"], deny=["fe80::bad"])
    assert rules.permits(("fe80::1%eth0", 80, 0, 2))
    assert rules.permits(("fe80::1%2", 80, 0, 2))
    assert rules.permits(("fe80::1", 80, 0, 2))
    assert not rules.permits(("fe80::bad%eth0", 80, 0, 2))
    assert not rules.permits(("2001:db8::1%eth0", 80, 0, 2))


class TestIPv4MappedAddresses:
    """A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; they are IPv4 clients."""

    def test_a_mapped_client_matches_ipv4_entries(self) -> None:
        rules = AccessRules(allow=["10.0.0.0/8"])
        assert rules.permits(v6("::ffff:10.1.2.3"))
        assert not rules.permits(v6("::ffff:11.1.2.3"))

    def test_a_mapped_client_cannot_slip_past_an_ipv4_deny_entry(self) -> None:
        rules = AccessRules(deny=["10.0.0.0/8", "192.0.2.7"])
        assert not rules.permits(v6("::ffff:10.1.2.3"))
        assert not rules.permits(v6("::ffff:192.0.2.7"))
        assert not rules.permits(v6("::FFFF:c000:207")), "the hex spelling of ::ffff:192.0.2.7"
        assert rules.permits(v6("::ffff:192.0.2.8"))

    def test_entries_written_in_the_mapped_block_are_ipv4_entries(self) -> None:
        rules = AccessRules(allow=["::ffff:10.0.0.0/104"], deny=["::ffff:10.9.9.9"])
        assert rules.permits(v4("10.1.2.3"))
        assert rules.permits(v6("::ffff:10.1.2.3"))
        assert not rules.permits(v4("10.9.9.9"))
        assert not rules.permits(v6("::ffff:10.9.9.9"))
        assert not rules.permits(v4("11.1.2.3"))

    def test_ipv6_entries_containing_the_mapped_block_do_not_match_ipv4_clients(self) -> None:
        rules = AccessRules(allow=["::/0"])
        assert rules.permits(v6("2001:db8::1"))
        assert not rules.permits(v6("::ffff:10.1.2.3"))
        assert not rules.permits(v4("10.1.2.3"))

    def test_only_the_mapped_block_is_normalised(self) -> None:
        rules = AccessRules(deny=["10.0.0.0/8"])
        assert rules.permits(v6("64:ff9b::10.1.2.3")), "NAT64 is IPv6"
        assert rules.permits(v6("::10.1.2.3")), "the deprecated IPv4-compatible form is IPv6"


@pytest.mark.parametrize("client", [
    ("host.example", 80), ("10.0.0.1\0", 80), ("10.1.2.3 ", 80), ("", 0), ("::ffff:10.1.2.3x", 80, 0, 0),
    (), (b"10.1.2.3", 80), (167837955, 80), ["10.1.2.3", 80], 42, 1.5,
], ids=repr)
def test_an_address_that_cannot_be_classified_is_refused_by_any_rules(client: object) -> None:
    assert not AccessRules(deny=["192.0.2.0/24"]).permits(client)
    assert not AccessRules(allow=["0.0.0.0/0", "::/0"]).permits(client)
    assert not AccessRules(deny=["uid:12345"]).permits(client, ME)


def test_network_entries_do_not_apply_to_unix_clients() -> None:
    rules = AccessRules(allow=["10.0.0.0/8"], deny=["0.0.0.0/0"])
    for client in ("/tmp/x.sock", b"/tmp/x.sock", b"\0abstract", "", None):
        assert rules.permits(client)
        assert rules.permits(client, ME)
    with pytest.raises(ValueError, match="network entries do not apply to an AF_UNIX listener"):
        rules.validate_for(socket.AF_UNIX)


# ---------------------------------------------------------------- matching Unix clients by credentials

def creds(uid: int, gid: int, pid: int = 4242) -> Credentials:
    return Credentials(pid=pid, uid=uid, gid=gid)


@pytest.mark.parametrize("client", ["", "/run/app.sock", b"\0app", None], ids=repr)
def test_an_allow_list_of_ids(client: object) -> None:
    rules = AccessRules(allow=["uid:1000", "gid:50"])
    assert rules.permits(client, creds(1000, 100))
    assert rules.permits(client, creds(1001, 50))
    assert not rules.permits(client, creds(1001, 100))
    assert not rules.permits(client, creds(0, 0))


def test_a_deny_list_of_ids() -> None:
    rules = AccessRules(deny=["uid:0", "gid:0"])
    assert not rules.permits("", creds(0, 1000))
    assert not rules.permits("", creds(1000, 0))
    assert rules.permits("", creds(1000, 1000))


def test_a_denied_uid_wins_over_an_allowed_gid() -> None:
    rules = AccessRules(allow=["gid:50"], deny=["uid:1001"])
    assert rules.permits("", creds(1000, 50))
    assert not rules.permits("", creds(1001, 50))


def test_ids_are_not_pids() -> None:
    assert not AccessRules(allow=["uid:4242"]).permits("", creds(1000, 1000, pid=4242))


def test_unknown_credentials_are_refused_by_any_credential_rule() -> None:
    assert not AccessRules(allow=["uid:1000"]).permits("", None)
    assert not AccessRules(deny=["uid:0"]).permits(""), "a deny list that cannot be checked refuses"
    assert AccessRules(deny=["10.0.0.0/8"]).permits(""), "without credential rules nothing needs checking"


def test_credential_entries_judge_the_peer_whatever_client_a_proxy_header_names() -> None:
    rules = AccessRules(allow=["uid:1000"], deny=["uid:0"])
    # A Unix listener behind a proxy: the client is an IP address, the peer is the proxy.
    assert rules.permits(v4("10.1.2.3"), creds(1000, 1000), proxied=True)
    assert not rules.permits(v4("10.1.2.3"), creds(0, 0), proxied=True)
    assert not rules.permits(v4("10.1.2.3"), creds(1001, 1001), proxied=True)
    assert not rules.permits(v4("10.1.2.3")), "credential rules that cannot be checked refuse"
    with pytest.raises(ValueError, match=r"uid:/gid: entries apply only to Unix stream listeners"):
        rules.validate_for(socket.AF_INET)
    network = AccessRules(allow=["10.0.0.0/8"])
    assert not network.permits(v4("11.0.0.1"), creds(1000, 1000))


def test_every_kind_of_entry_present_must_pass() -> None:
    both = AccessRules(allow=["10.0.0.0/8", "uid:1000"])
    assert both.permits(v4("10.0.0.1"), creds(1000, 1000), proxied=True)
    assert not both.permits(v4("11.0.0.1"), creds(1000, 1000), proxied=True)
    assert not both.permits(v4("10.0.0.1"), creds(1001, 1001), proxied=True)
    assert both.permits("", creds(1000, 1000)), "the proxy's own connection (LOCAL): its credentials alone"
    assert not both.permits("/run/client.sock", creds(1000, 1000), proxied=True), \
        "a proxied client without an IP address matches no network allow entry"
    assert AccessRules(deny=["10.0.0.0/8"]).permits("/run/client.sock", proxied=True)


def test_a_listener_behind_a_proxy_takes_network_rules_for_its_clients_families() -> None:
    AccessRules(allow=["::1"]).validate_for(socket.AF_INET, proxied=True)
    AccessRules(allow=["10.0.0.0/8"]).validate_for(socket.AF_UNIX, proxied=True)
    with pytest.raises(ValueError, match=r"uid:/gid: entries apply only to Unix stream listeners"):
        AccessRules(allow=["uid:1"]).validate_for(socket.AF_INET, proxied=True)


# ---------------------------------------------------------------- validate_for

@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, getattr(socket, "AF_PACKET", 17)])
def test_empty_rules_suit_every_family(family: int) -> None:
    AccessRules().validate_for(family)


@pytest.mark.parametrize("allow, deny, family", [
    (["10.0.0.0/8"], ["10.1.0.0/16"], socket.AF_INET),
    (["10.0.0.0/8"], [], socket.AF_INET6),           # IPv4 clients reach a dual-stack listener
    (["::1"], [], socket.AF_INET6),
    (["127.0.0.1", "::1"], [], socket.AF_INET),       # one rule set for a 127.0.0.1 + ::1 pair
    (["127.0.0.1", "::1"], [], socket.AF_INET6),
    ([], ["::/0"], socket.AF_INET),                  # denies nothing there, refuses nobody
    (["uid:1000"], ["gid:0"], socket.AF_UNIX),
    ([], ["uid:0"], socket.AF_UNIX),
])
def test_rules_that_can_apply(allow: list[str], deny: list[str], family: int) -> None:
    AccessRules(allow, deny).validate_for(family)


@pytest.mark.parametrize("allow, deny, family, message", [
    (["uid:1000"], [], socket.AF_INET, r"apply only to Unix stream listeners, not to an AF_INET listener: \['uid:1000'\]"),
    ([], ["gid:0"], socket.AF_INET6, r"not to an AF_INET6 listener: \['gid:0'\]"),
    (["10.0.0.0/8", "uid:1000"], [], socket.AF_INET, r"\['uid:1000'\]"),
    (["10.0.0.0/8"], [], socket.AF_UNIX, r"network entries do not apply to an AF_UNIX listener.*\['10.0.0.0/8'\]"),
    (["uid:1000"], ["10.0.0.0/8"], socket.AF_UNIX, r"\['10.0.0.0/8'\]"),
    (["::1"], [], socket.AF_INET, r"no allow entry can match a client of an AF_INET listener.*\['::1'\]"),
    ([], ["10.0.0.0/8"], getattr(socket, "AF_PACKET", 17), "AF_INET, AF_INET6 and AF_UNIX listeners, not to AF_"),
    ([], ["10.0.0.0/8"], 12345, "not to address family 12345"),
])
def test_rules_that_cannot_apply(allow: list[str], deny: list[str], family: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AccessRules(allow, deny).validate_for(family)


# ---------------------------------------------------------------- connection limits

@pytest.mark.parametrize("kwargs", [{"max_connections": 0}, {"max_connections": -1},
                                    {"max_connections_per_ip": 0}])
def test_limits_below_one_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be at least 1"):
        ConnectionLimits(**kwargs)


@pytest.mark.parametrize("value", [1.5, "3", True])
def test_limits_are_ints(value: object) -> None:
    with pytest.raises(TypeError, match="must be an int or None"):
        ConnectionLimits(max_connections=value)  # type: ignore[arg-type]


def test_without_limits_everything_is_admitted_and_counted() -> None:
    limits = ConnectionLimits()
    for port in range(100):
        assert limits.admit(v4("10.0.0.1", port)) is None
    assert limits.active == 100
    assert limits.active_for(v4("10.0.0.1")) == 100
    assert not limits.at_capacity
    assert limits.max_connections is None and limits.max_connections_per_ip is None


def test_the_total_limit_and_at_capacity() -> None:
    limits = ConnectionLimits(max_connections=2)
    assert limits.admit(v4("10.0.0.1")) is None
    assert not limits.at_capacity
    assert limits.admit(v6("2001:db8::1")) is None
    assert limits.at_capacity
    assert limits.admit(v4("10.0.0.3")) == "max_connections"
    assert limits.active == 2
    assert limits.active_for(v4("10.0.0.3")) == 0, "a refused connection is not counted"
    limits.release(v4("10.0.0.1"))
    assert not limits.at_capacity
    assert limits.admit(v4("10.0.0.3")) is None
    assert limits.at_capacity
    assert repr(limits) == "ConnectionLimits(max_connections=2, max_connections_per_ip=None, active=2)"


def test_the_per_ip_limit() -> None:
    limits = ConnectionLimits(max_connections_per_ip=2)
    assert limits.admit(v4("10.0.0.1", 1000)) is None
    assert limits.admit(v4("10.0.0.1", 1001)) is None
    assert limits.admit(v4("10.0.0.1", 1002)) == "max_connections_per_ip"
    assert limits.admit(v4("10.0.0.2", 1000)) is None, "another IP has its own count"
    assert limits.active == 3
    assert limits.active_for(v4("10.0.0.1", 9)) == 2, "the port does not matter"
    assert limits.active_for(v4("10.0.0.2")) == 1
    assert not limits.at_capacity, "no total limit"
    limits.release(v4("10.0.0.1", 1000))
    assert limits.admit(v4("10.0.0.1", 1003)) is None


def test_the_total_limit_is_named_first() -> None:
    limits = ConnectionLimits(max_connections=1, max_connections_per_ip=1)
    assert limits.admit(v4("10.0.0.1")) is None
    assert limits.admit(v4("10.0.0.1")) == "max_connections"


def test_mapped_addresses_share_the_ipv4_key_and_scope_ids_are_ignored() -> None:
    limits = ConnectionLimits(max_connections_per_ip=2)
    assert limits.admit(v4("10.0.0.1")) is None
    assert limits.admit(v6("::ffff:10.0.0.1")) is None
    assert limits.admit(v6("::ffff:a00:1")) == "max_connections_per_ip"
    assert limits.active_for(v4("10.0.0.1")) == 2
    assert limits.active_for(v6("::ffff:10.0.0.1")) == 2
    limits.release(v6("::ffff:10.0.0.1"))
    limits.release(v4("10.0.0.1"))
    assert limits.active == 0
    assert limits.admit(("fe80::1%eth0", 1, 0, 2)) is None
    assert limits.admit(("fe80::1%eth1", 1, 0, 3)) is None
    assert limits.active_for(("fe80::1", 1, 0, 0)) == 2


@pytest.mark.parametrize("client", ["", "/tmp/x.sock", b"\0abstract", None], ids=repr)
def test_unix_clients_count_in_total_but_are_not_limited_per_ip(client: object) -> None:
    limits = ConnectionLimits(max_connections=3, max_connections_per_ip=1)
    assert limits.admit(client) is None
    assert limits.admit(client) is None
    assert limits.active_for(client) == 0
    assert limits.active == 2
    assert limits.admit(v4("10.0.0.1")) is None
    assert limits.admit(client) == "max_connections"
    limits.release(client)
    limits.release(client)
    assert limits.active == 1


def test_release_without_admit_raises_and_leaves_the_counts_alone() -> None:
    limits = ConnectionLimits(max_connections=5)
    with pytest.raises(RuntimeError, match="no connection is open"):
        limits.release(v4("10.0.0.1"))
    with pytest.raises(RuntimeError, match="no connection is open"):
        limits.release("")
    assert limits.active == 0
    assert limits.admit(v4("10.0.0.1")) is None
    with pytest.raises(RuntimeError, match="no connection from this IP is open"):
        limits.release(v4("10.0.0.2"))
    assert limits.active == 1
    limits.release(v4("10.0.0.1"))
    with pytest.raises(RuntimeError):
        limits.release(v4("10.0.0.1"))
    assert limits.active == 0
    assert limits.active_for(v4("10.0.0.1")) == 0


def test_a_refused_connection_has_nothing_to_release() -> None:
    limits = ConnectionLimits(max_connections_per_ip=1)
    assert limits.admit(v4("10.0.0.1")) is None
    assert limits.admit(v4("10.0.0.1")) == "max_connections_per_ip"
    limits.release(v4("10.0.0.1"))
    with pytest.raises(RuntimeError):
        limits.release(v4("10.0.0.1"))
    assert (limits.active, limits.active_for(v4("10.0.0.1"))) == (0, 0)


# ---------------------------------------------------------------- peer credentials on real sockets

@needs_peercred
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["stream", "dgram"])
def test_peer_credentials_of_a_socketpair(kind: int) -> None:
    left, right = socket.socketpair(socket.AF_UNIX, kind)
    with left, right:
        assert peer_credentials(left) == ME
        assert peer_credentials(right) == ME


def _accept_one(listener: socket.socket) -> Iterator[tuple[socket.socket, socket.socket, object]]:
    """(accepted, client, client_address) for one connection to ``listener``, all closed afterwards."""
    with listener:
        listener.listen()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with client:
            client.settimeout(5)
            client.connect(listener.getsockname())
            accepted, address = listener.accept()
            with accepted:
                yield accepted, client, address


@pytest.fixture
def unix_connection(unix_dir: str) -> Iterator[tuple[socket.socket, socket.socket, object]]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(unix_dir, "a.sock"))
    yield from _accept_one(listener)


@pytest.fixture
def abstract_connection() -> Iterator[tuple[socket.socket, socket.socket, object]]:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"\0rx-access-{uuid.uuid4().hex}")
    yield from _accept_one(listener)


@needs_peercred
def test_peer_credentials_over_a_unix_listener(unix_connection: tuple[socket.socket, socket.socket, object]) -> None:
    accepted, client, address = unix_connection
    assert address == "", "an unnamed client"
    assert peer_credentials(accepted) == ME, "the server side sees the client"
    assert peer_credentials(client) == ME, "the client side sees the process that called listen()"
    assert AccessRules(allow=[f"uid:{ME.uid}"]).permits(address, peer_credentials(accepted))
    assert AccessRules(allow=[f"gid:{ME.gid}"]).permits(address, peer_credentials(accepted))
    assert not AccessRules(deny=[f"uid:{ME.uid}"]).permits(address, peer_credentials(accepted))


@needs_peercred
@needs_abstract
def test_peer_credentials_over_an_abstract_namespace_listener(
        abstract_connection: tuple[socket.socket, socket.socket, object]) -> None:
    accepted, client, address = abstract_connection
    assert client.getpeername()[:1] == b"\0", "an abstract name comes back as bytes"
    assert peer_credentials(accepted) == ME
    assert peer_credentials(client) == ME
    rules = AccessRules(allow=[f"uid:{ME.uid}"])
    rules.validate_for(socket.AF_UNIX)
    assert rules.permits(address, peer_credentials(accepted))
    assert not AccessRules(allow=[f"uid:{ME.uid + 1}"]).permits(address, peer_credentials(accepted))


@needs_peercred
def test_an_unconnected_unix_socket_has_no_peer() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        assert peer_credentials(sock) is None


def test_a_tcp_connection_has_no_peer_credentials() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert peer_credentials(accepted) is None
                assert peer_credentials(client) is None
                if hasattr(socket, "SO_PEERCRED"):
                    # What the kernel answers there (Linux): pid 0, uid and gid (uid_t)-1.
                    raw = accepted.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    assert struct.unpack("iII", raw) == (0, 0xFFFF_FFFF, 0xFFFF_FFFF)


def test_a_closed_socket_is_a_programming_error() -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.close()
    if hasattr(socket, "SO_PEERCRED"):
        with pytest.raises(OSError) as info:
            peer_credentials(sock)
        assert info.value.errno == errno.EBADF
    else:
        assert peer_credentials(sock) is None


def test_without_so_peercred_there_are_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "SO_PEERCRED", raising=False)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_credentials(left) is None
        assert not AccessRules(allow=["uid:0"]).permits("", peer_credentials(left)), "refused: cannot check"


def test_credentials_are_a_frozen_value() -> None:
    value = Credentials(pid=1, uid=2, gid=3)
    assert value == Credentials(1, 2, 3)
    assert hash(value) == hash(Credentials(1, 2, 3))
    with pytest.raises(AttributeError):
        value.uid = 0  # type: ignore[misc]
