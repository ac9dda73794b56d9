"""reactor.binding: address families, descriptions, listening sockets and bind errors, on real sockets."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import socketserver
from reactor.binding import (
    UnixSocketPath,
    create_server_socket,
    describe_address,
    family_for_address,
)
from support import fd_target, ipv6_available, open_fds

AF_UNIX = getattr(socket, "AF_UNIX", None)

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here")
needs_unix = pytest.mark.skipif(AF_UNIX is None, reason="no Unix sockets")


class Quiet(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        pass


@contextlib.contextmanager
def busy_tcp_port() -> Iterator[int]:
    """A loopback TCP port held by a listening socket without SO_REUSEADDR/SO_REUSEPORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@contextlib.contextmanager
def busy_udp_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# ---------------------------------------------------------------- family_for_address

@pytest.mark.parametrize("address", [("::1", 0), ("::", 8080), ("::ffff:127.0.0.1", 0), ("fe80::1%lo", 0)])
def test_ipv6_literal_selects_af_inet6(address: tuple[Any, ...]) -> None:
    assert family_for_address(address, socket.AF_INET) == socket.AF_INET6


@pytest.mark.parametrize("address", [("::1", 0, 0, 0), ("localhost", 0, 0, 0)])
def test_four_tuple_selects_af_inet6(address: tuple[Any, ...]) -> None:
    assert family_for_address(address, socket.AF_INET) == socket.AF_INET6


@pytest.mark.parametrize("address", [("127.0.0.1", 0), ("0.0.0.0", 80), ("", 0)])
def test_ipv4_address_keeps_af_inet(address: tuple[Any, ...]) -> None:
    assert family_for_address(address, socket.AF_INET) == socket.AF_INET


@pytest.mark.parametrize("address", [("localhost", 0), ("no-such-host.invalid", 0), ("not:an:address", 0)])
def test_hostnames_and_non_literals_keep_the_default(address: tuple[Any, ...]) -> None:
    assert family_for_address(address, socket.AF_INET) == socket.AF_INET


def test_explicit_af_inet6_passes_through() -> None:
    assert family_for_address(("127.0.0.1", 0), socket.AF_INET6) == socket.AF_INET6


@needs_unix
@pytest.mark.parametrize("address", ["/tmp/x.sock", b"/tmp/x.sock", "\0abstract", ("::1", 0)])
def test_af_unix_is_never_changed(address: object) -> None:
    assert family_for_address(address, AF_UNIX) == AF_UNIX


@needs_ipv6
def test_ipv6_literal_creates_an_af_inet6_socket_even_when_af_inet_is_asked() -> None:
    sock, _ = create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("::1", 0))
    with sock:
        assert sock.family == socket.AF_INET6
        assert sock.getsockname()[0] == "::1"


# ---------------------------------------------------------------- describe_address

@pytest.mark.parametrize(
    ("family", "sock_type", "address", "expected"),
    [
        (socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 8000), "tcp4 127.0.0.1:8000"),
        (socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 53), "udp4 127.0.0.1:53"),
        (socket.AF_INET6, socket.SOCK_STREAM, ("::1", 8080, 0, 0), "tcp6 [::1]:8080"),
        (socket.AF_INET6, socket.SOCK_DGRAM, ("::1", 53), "udp6 [::1]:53"),
        (socket.AF_INET, socket.SOCK_STREAM, "weird", "tcp4 'weird'"),
    ],
)
def test_describe_inet_address(family: int, sock_type: int, address: object, expected: str) -> None:
    assert describe_address(family, sock_type, address) == expected


@needs_unix
@pytest.mark.parametrize(
    ("sock_type", "address", "expected"),
    [
        (socket.SOCK_STREAM, "/run/x.sock", "unix /run/x.sock"),
        (socket.SOCK_DGRAM, "/run/x.sock", "unix-dgram /run/x.sock"),
        (socket.SOCK_STREAM, b"/run/b.sock", "unix /run/b.sock"),
        (socket.SOCK_STREAM, "\0rx-name", "unix @rx-name"),
        (socket.SOCK_DGRAM, b"\0rx-name", "unix-dgram @rx-name"),
    ],
)
def test_describe_unix_address(sock_type: int, address: object, expected: str) -> None:
    assert describe_address(AF_UNIX, sock_type, address) == expected


# ---------------------------------------------------------------- create_server_socket

KINDS = ["tcp4", "tcp6", "udp4", "udp6", "unix", "unix-dgram"]


def kind_params(kind: str) -> tuple[int, int, int, Any]:
    """(family asked, sock_type, family expected, address to bind) for a kind; skips what is unavailable."""
    if kind.endswith("6") and not ipv6_available():
        pytest.skip("no IPv6 loopback here")
    if kind.startswith("unix") and AF_UNIX is None:
        pytest.skip("no Unix sockets")
    sock_type = socket.SOCK_DGRAM if kind.startswith("udp") or kind == "unix-dgram" else socket.SOCK_STREAM
    if kind.endswith("4"):
        return socket.AF_INET, sock_type, socket.AF_INET, ("127.0.0.1", 0)
    if kind.endswith("6"):
        return socket.AF_INET, sock_type, socket.AF_INET6, ("::1", 0)
    return AF_UNIX, sock_type, AF_UNIX, None  # the path comes from unix_dir


@contextlib.contextmanager
def server_socket(kind: str, unix_dir: str, **options: Any) -> Iterator[tuple[socket.socket, UnixSocketPath | None]]:
    family, sock_type, _, address = kind_params(kind)
    if address is None:
        address = os.path.join(unix_dir, "s")
    sock, unix_path = create_server_socket(family, sock_type, address, **options)
    try:
        yield sock, unix_path
    finally:
        sock.close()
        if unix_path is not None:
            unix_path.unlink()


def round_trip(server: socket.socket) -> None:
    """Send b"ping" from a new client to ``server`` and check it arrives."""
    address = server.getsockname()
    with socket.socket(server.family, server.type) as client:
        client.settimeout(5)
        if server.type == socket.SOCK_STREAM:
            client.connect(address)
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                client.sendall(b"ping")
                assert conn.recv(16) == b"ping"
                conn.sendall(b"pong")
                assert client.recv(16) == b"pong"
        else:
            client.sendto(b"ping", address)
            server.settimeout(5)
            data, _ = server.recvfrom(16)
            assert data == b"ping"


@pytest.mark.parametrize("kind", KINDS)
def test_server_socket_has_the_expected_family_and_type(kind: str, unix_dir: str) -> None:
    _, sock_type, family, _ = kind_params(kind)
    with server_socket(kind, unix_dir) as (sock, _):
        assert sock.family == family
        assert sock.type == sock_type


@pytest.mark.parametrize("kind", KINDS)
def test_server_socket_is_listening_only_for_streams(kind: str, unix_dir: str) -> None:
    with server_socket(kind, unix_dir) as (sock, _):
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert bool(listening) == (sock.type == socket.SOCK_STREAM)


@pytest.mark.parametrize("kind", KINDS)
def test_server_socket_is_blocking_and_not_inheritable(kind: str, unix_dir: str) -> None:
    with server_socket(kind, unix_dir) as (sock, _):
        assert sock.gettimeout() is None
        assert not sock.get_inheritable()


@pytest.mark.parametrize("kind", KINDS)
def test_server_socket_is_usable(kind: str, unix_dir: str) -> None:
    with server_socket(kind, unix_dir) as (sock, _):
        round_trip(sock)


@pytest.mark.parametrize("kind", KINDS)
def test_so_reuseaddr_is_on_by_default_for_tcp_only(kind: str, unix_dir: str) -> None:
    with server_socket(kind, unix_dir) as (sock, _):
        reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert bool(reuse) == kind.startswith("tcp")


def test_reuse_address_false_turns_it_off_for_tcp(unix_dir: str) -> None:
    with server_socket("tcp4", unix_dir, reuse_address=False) as (sock, _):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def test_reuse_address_true_turns_it_on_for_udp(unix_dir: str) -> None:
    with server_socket("udp4", unix_dir, reuse_address=True) as (sock, _):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0


@pytest.mark.parametrize("kind", ["tcp4", "unix"])
def test_unix_path_record_is_returned_only_for_unix_paths(kind: str, unix_dir: str) -> None:
    with server_socket(kind, unix_dir) as (sock, unix_path):
        if kind == "unix":
            assert unix_path is not None
            assert unix_path.path == sock.getsockname()
            assert unix_path.is_ours()
            assert unix_path.owner_pid == os.getpid()
        else:
            assert unix_path is None


needs_reuseport = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")


@needs_reuseport
@pytest.mark.parametrize("kind", ["tcp4", "udp4"])
def test_reuse_port_sets_the_option(kind: str, unix_dir: str) -> None:
    with server_socket(kind, unix_dir, reuse_port=True) as (sock, _):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0


@needs_reuseport
@pytest.mark.parametrize("sock_type", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
def test_reuse_port_lets_two_sockets_share_a_port(sock_type: int) -> None:
    first, _ = create_server_socket(socket.AF_INET, sock_type, ("127.0.0.1", 0), reuse_port=True)
    with first:
        port = first.getsockname()[1]
        second, _ = create_server_socket(socket.AF_INET, sock_type, ("127.0.0.1", port), reuse_port=True)
        with second:
            assert second.getsockname() == first.getsockname()


def test_reuse_port_is_off_by_default(unix_dir: str) -> None:
    with server_socket("tcp4", unix_dir) as (sock, _):
        if hasattr(socket, "SO_REUSEPORT"):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


# Linux sets IPV6_V6ONLY by itself when a socket binds a specific IPv6 address, so the option is
# observed by its effect: a v6-only socket cannot bind a v4-mapped address, a dual-stack one can
# and then takes IPv4 clients.
MAPPED_LOOPBACK = ("::ffff:127.0.0.1", 0)


@needs_ipv6
def test_v6only_true_refuses_a_v4_mapped_address() -> None:
    with pytest.raises(OSError) as info:
        create_server_socket(socket.AF_INET6, socket.SOCK_STREAM, MAPPED_LOOPBACK, v6only=True)
    assert info.value.errno == errno.EINVAL
    assert "cannot bind tcp6 [::ffff:127.0.0.1]:0" in str(info.value)


@needs_ipv6
def test_v6only_false_serves_ipv4_clients_on_a_v4_mapped_address() -> None:
    sock, _ = create_server_socket(socket.AF_INET6, socket.SOCK_STREAM, MAPPED_LOOPBACK, v6only=False)
    with sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=5) as client:
            conn, peer = sock.accept()
            with conn:
                client.sendall(b"v4")
                conn.settimeout(5)
                assert conn.recv(8) == b"v4"
        assert peer[0] == "::ffff:127.0.0.1"


def os_default_v6only() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as plain:
        return plain.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)


@needs_ipv6
def test_v6only_none_keeps_the_os_default() -> None:
    if os_default_v6only():
        with pytest.raises(OSError):
            create_server_socket(socket.AF_INET6, socket.SOCK_STREAM, MAPPED_LOOPBACK)
    else:
        sock, _ = create_server_socket(socket.AF_INET6, socket.SOCK_STREAM, MAPPED_LOOPBACK)
        with sock:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_v6only_is_ignored_for_ipv4() -> None:
    sock, _ = create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), v6only=True)
    with sock:
        assert sock.family == socket.AF_INET


def pending_unix_connections(path: str, limit: int = 100) -> int:
    """How many non-blocking connects ``path`` takes before its backlog is full (EAGAIN)."""
    clients: list[socket.socket] = []
    try:
        while len(clients) < limit:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.setblocking(False)
            try:
                client.connect(path)
            except BlockingIOError:
                return len(clients) - 1
        return limit
    finally:
        for client in clients:
            client.close()


@needs_unix
@pytest.mark.parametrize("backlog", [0, 2, 5])
def test_backlog_bounds_pending_connections(backlog: int, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    sock, unix_path = create_server_socket(AF_UNIX, socket.SOCK_STREAM, path, backlog=backlog)
    try:
        # Linux queues backlog + 1 connections on a Unix stream socket.
        assert pending_unix_connections(path) == backlog + 1
    finally:
        sock.close()
        assert unix_path is not None
        unix_path.unlink()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss(8) to read a TCP listener's backlog")
@pytest.mark.parametrize(("options", "expected"), [({}, 1024), ({"backlog": 7}, 7)])
def test_tcp_listen_backlog_as_the_kernel_reports_it(options: dict[str, Any], expected: int) -> None:
    sock, _ = create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0), **options)
    with sock:
        port = sock.getsockname()[1]
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        # "LISTEN  Recv-Q  Send-Q  Local  Peer": Send-Q of a listener is its backlog.
        fields = out.split()
        assert fields[0] == "LISTEN"
        assert int(fields[2]) == expected


# ---------------------------------------------------------------- bind errors

def open_sockets() -> set[int]:
    return {fd for fd in open_fds() if (fd_target(fd) or "").startswith("socket:")}


@contextlib.contextmanager
def raises_leaving_no_socket(exc_type: type[BaseException], match: str | None = None) -> Iterator[Any]:
    """``pytest.raises``, then check that the failed call left no socket open.

    Checked while the exception is still alive: its traceback references the
    half-built socket or server, so a socket it failed to close would still be
    open here (the autouse leak check runs after garbage collection closed it).
    """
    before = open_sockets()
    with pytest.raises(exc_type, match=match) as info:
        yield info
    assert open_sockets() <= before, f"left open: {sorted(open_sockets() - before)}"


def test_occupied_tcp_port_is_eaddrinuse_naming_the_address() -> None:
    with busy_tcp_port() as port:
        with raises_leaving_no_socket(OSError) as info:
            create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
    assert type(info.value) is OSError
    assert info.value.errno == errno.EADDRINUSE
    assert f"cannot bind tcp4 127.0.0.1:{port}" in str(info.value)


def test_occupied_udp_port_is_eaddrinuse_naming_the_address() -> None:
    with busy_udp_port() as port:
        with raises_leaving_no_socket(OSError) as info:
            create_server_socket(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", port))
    assert info.value.errno == errno.EADDRINUSE
    assert f"cannot bind udp4 127.0.0.1:{port}" in str(info.value)


def test_bind_error_message_is_exactly_strerror_and_address() -> None:
    with busy_tcp_port() as port:
        with raises_leaving_no_socket(OSError) as info:
            create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port))
    expected = f"[Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}: cannot bind tcp4 127.0.0.1:{port}"
    assert str(info.value) == expected


def test_unresolvable_host_is_gaierror_naming_it() -> None:
    with raises_leaving_no_socket(socket.gaierror) as info:
        create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("no-such-host.invalid", 0))
    assert "cannot bind tcp4 no-such-host.invalid:0" in str(info.value)
    assert info.value.errno is not None


def test_port_out_of_range_is_overflowerror_naming_it() -> None:
    with raises_leaving_no_socket(OverflowError, match="cannot bind tcp4 127.0.0.1:70000"):
        create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 70000))


def test_port_of_wrong_type_is_typeerror_naming_it() -> None:
    with raises_leaving_no_socket(TypeError, match="cannot bind udp4 127.0.0.1:http"):
        create_server_socket(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", "http"))


def test_non_local_ipv4_address_is_eaddrnotavail_naming_it() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a local interface; bind() fails, nothing is sent.
    with raises_leaving_no_socket(OSError) as info:
        create_server_socket(socket.AF_INET, socket.SOCK_STREAM, ("192.0.2.1", 0))
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "cannot bind tcp4 192.0.2.1:0" in str(info.value)


@needs_unix
def test_too_long_unix_path_error_names_the_path(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "x" * 200)
    with raises_leaving_no_socket(OSError) as info:
        create_server_socket(AF_UNIX, socket.SOCK_STREAM, path)
    assert f"cannot bind unix {path}" in str(info.value)
    assert not os.path.exists(path)


@needs_unix
def test_listen_failure_after_bind_leaves_no_unix_file(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    with raises_leaving_no_socket(OverflowError):
        create_server_socket(AF_UNIX, socket.SOCK_STREAM, path, backlog=2**40)
    assert os.listdir(unix_dir) == []


# ---------------------------------------------------------------- the same errors through the compat servers

def test_compat_tcpserver_on_busy_port_raises_and_leaks_no_fd() -> None:
    with busy_tcp_port() as port:
        with raises_leaving_no_socket(OSError) as info:
            socketserver.TCPServer(("127.0.0.1", port), Quiet)
    assert info.value.errno == errno.EADDRINUSE
    assert f"cannot bind tcp4 127.0.0.1:{port}" in str(info.value)


def test_compat_udpserver_on_busy_port_raises_and_leaks_no_fd() -> None:
    with busy_udp_port() as port:
        with raises_leaving_no_socket(OSError) as info:
            socketserver.UDPServer(("127.0.0.1", port), Quiet)
    assert info.value.errno == errno.EADDRINUSE
    assert f"cannot bind udp4 127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize(
    ("address", "exc_type", "needle"),
    [
        (("no-such-host.invalid", 0), socket.gaierror, "no-such-host.invalid"),
        (("127.0.0.1", 70000), OverflowError, "127.0.0.1:70000"),
        (("192.0.2.1", 0), OSError, "192.0.2.1:0"),
    ],
)
def test_compat_tcpserver_bad_address_raises_named_error_and_leaks_no_fd(
        address: tuple[str, int], exc_type: type[BaseException], needle: str) -> None:
    with raises_leaving_no_socket(exc_type, match=f"cannot bind tcp4 {needle}"):
        socketserver.TCPServer(address, Quiet)


@needs_ipv6
def test_compat_tcpserver_ipv6_busy_port_names_tcp6() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.bind(("::1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with raises_leaving_no_socket(OSError) as info:
            socketserver.TCPServer(("::1", port), Quiet)
    assert info.value.errno == errno.EADDRINUSE
    assert f"cannot bind tcp6 [::1]:{port}" in str(info.value)


@needs_unix
def test_compat_unix_server_activate_failure_leaves_no_fd_and_no_file(unix_dir: str) -> None:
    class HugeBacklog(socketserver.UnixStreamServer):
        request_queue_size = 2**40  # listen() raises OverflowError after bind() made the file

    path = os.path.join(unix_dir, "s")
    with raises_leaving_no_socket(OverflowError):
        HugeBacklog(path, Quiet)
    assert os.listdir(unix_dir) == []


@needs_unix
def test_compat_unix_server_on_live_path_leaves_no_fd_and_keeps_the_file(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen()
        inode = os.stat(path).st_ino
        with raises_leaving_no_socket(OSError) as info:
            socketserver.UnixStreamServer(path, Quiet)
        assert info.value.errno == errno.EADDRINUSE
        assert os.stat(path).st_ino == inode
    os.unlink(path)


@needs_unix
def test_compat_unix_server_too_long_path_leaves_no_fd(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "x" * 200)
    with raises_leaving_no_socket(OSError):
        socketserver.UnixStreamServer(path, Quiet)
    assert os.listdir(unix_dir) == []
