"""Unix socket paths: stale files replaced, live ones and non-sockets refused, safe unlinking, abstract names."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from reactor import Reactor, socketserver
from reactor._platform import HAS_ABSTRACT_UNIX, HAS_UNIX_SOCKETS
from support import run_python

pytestmark = pytest.mark.skipif(not HAS_UNIX_SOCKETS, reason="no Unix sockets")

needs_abstract = pytest.mark.skipif(not HAS_ABSTRACT_UNIX, reason="abstract Unix names are Linux-only")


class StreamEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(5)
        self.request.sendall(self.request.recv(64).upper())


class DatagramEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data.upper(), self.client_address)


SERVERS: dict[str, tuple[Any, Any, int]] = {
    "stream": (socketserver.UnixStreamServer, StreamEcho, socket.SOCK_STREAM),
    "dgram": (socketserver.UnixDatagramServer, DatagramEcho, socket.SOCK_DGRAM),
}
KINDS = list(SERVERS)


def make_server(kind: str, path: str | bytes, **kwargs: Any) -> Any:
    cls, handler, _ = SERVERS[kind]
    return cls(path, handler, **kwargs)


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run ``server.serve_forever()`` in a thread; shut it down and close it afterwards."""
    thread = threading.Thread(target=server.serve_forever, name="unix-server")
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def is_abstract(address: str | bytes) -> bool:
    return address[:1] in ("\0", b"\0")


def round_trip(kind: str, address: str | bytes, client_address: str | bytes | None = None) -> bytes:
    """Send b"ping" to the echo server at ``address``; return its reply.

    A datagram client binds ``client_address`` to get the reply (a path is removed afterwards).
    """
    sock_type = SERVERS[kind][2]
    with socket.socket(socket.AF_UNIX, sock_type) as client:
        client.settimeout(5)
        if sock_type == socket.SOCK_STREAM:
            client.connect(address)
            client.sendall(b"ping")
            return client.recv(64)
        assert client_address is not None, "a datagram client needs an address to get a reply"
        client.bind(client_address)
        try:
            client.sendto(b"ping", address)
            return client.recv(64)
        finally:
            if not is_abstract(client_address):
                os.unlink(client_address)


def leave_stale_socket(path: str | bytes, sock_type: int) -> None:
    """Bind a socket to ``path`` and close it without unlinking: a file nobody answers on."""
    with socket.socket(socket.AF_UNIX, sock_type) as dead:
        dead.bind(path)
        if sock_type == socket.SOCK_STREAM:
            dead.listen()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def abstract_name(suffix: str = "") -> str:
    return f"\0rx-{uuid.uuid4().hex[:12]}{suffix}"


# ---------------------------------------------------------------- stale files

@pytest.mark.parametrize("kind", KINDS)
def test_stale_socket_file_is_replaced(kind: str, unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(unix_dir, "s")
    leave_stale_socket(path, SERVERS[kind][2])
    caplog.set_level(logging.INFO, logger="reactor.binding")
    with serving(make_server(kind, path)):
        assert round_trip(kind, path, os.path.join(unix_dir, "c")) == b"PING"
    messages = [r.getMessage() for r in caplog.records if r.name == "reactor.binding"]
    assert any("removed stale Unix socket" in m and path in m for m in messages), messages


@pytest.mark.parametrize("kind", KINDS)
def test_stale_socket_of_the_other_type_is_replaced(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    other = socket.SOCK_DGRAM if SERVERS[kind][2] == socket.SOCK_STREAM else socket.SOCK_STREAM
    leave_stale_socket(path, other)
    with serving(make_server(kind, path)):
        assert round_trip(kind, path, os.path.join(unix_dir, "c")) == b"PING"


def test_no_stale_message_when_the_path_is_free(unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reactor.binding")
    make_server("stream", os.path.join(unix_dir, "s")).server_close()
    assert "removed stale Unix socket" not in caplog.text


# ---------------------------------------------------------------- live servers are refused

@pytest.mark.parametrize("kind", KINDS)
def test_path_of_a_live_server_is_refused_and_left_serving(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    with serving(make_server(kind, path)):
        inode = os.stat(path).st_ino
        with pytest.raises(OSError) as info:
            make_server(kind, path)
        assert info.value.errno == errno.EADDRINUSE
        assert path in str(info.value)
        assert "live server" in str(info.value)
        assert os.stat(path).st_ino == inode
        assert round_trip(kind, path, os.path.join(unix_dir, "c")) == b"PING"


@pytest.mark.parametrize("kind", KINDS)
def test_path_of_a_live_server_of_the_other_type_is_refused(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    other = "dgram" if kind == "stream" else "stream"
    with serving(make_server(other, path)):
        inode = os.stat(path).st_ino
        with pytest.raises(OSError) as info:
            make_server(kind, path)
        assert info.value.errno == errno.EADDRINUSE
        assert path in str(info.value)
        assert os.stat(path).st_ino == inode
        assert round_trip(other, path, os.path.join(unix_dir, "c")) == b"PING"


def test_live_listener_with_a_full_backlog_is_refused(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        live.bind(path)
        live.listen(0)
        while True:  # fill the backlog: the next connect would say EAGAIN
            client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            client.setblocking(False)
            try:
                client.connect(path)
            except BlockingIOError:
                break
        with pytest.raises(OSError) as info:
            make_server("stream", path)
        assert info.value.errno == errno.EADDRINUSE
        assert path in str(info.value)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    os.unlink(path)


# ---------------------------------------------------------------- not a socket

@pytest.mark.parametrize("kind", KINDS)
def test_regular_file_is_refused_and_untouched(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    with open(path, "w") as fh:
        fh.write("precious")
    with pytest.raises(FileExistsError) as info:
        make_server(kind, path)
    assert path in str(info.value)
    with open(path) as fh:
        assert fh.read() == "precious"


@pytest.mark.parametrize("kind", KINDS)
def test_directory_is_refused_and_untouched(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "d")
    os.mkdir(path)
    with open(os.path.join(path, "inside"), "w") as fh:
        fh.write("x")
    with pytest.raises(FileExistsError) as info:
        make_server(kind, path)
    assert path in str(info.value)
    assert os.listdir(path) == ["inside"]


def test_symlink_to_a_stale_socket_is_refused_and_untouched(unix_dir: str) -> None:
    target = os.path.join(unix_dir, "t")
    leave_stale_socket(target, socket.SOCK_STREAM)
    link = os.path.join(unix_dir, "l")
    os.symlink(target, link)
    with pytest.raises(FileExistsError):
        make_server("stream", link)
    assert os.readlink(link) == target
    assert stat.S_ISSOCK(os.lstat(target).st_mode)


# ---------------------------------------------------------------- unlinking on close

@pytest.mark.parametrize("kind", KINDS)
def test_server_close_unlinks_the_path(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    server = make_server(kind, path)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    server.server_close()
    assert not os.path.exists(path)


@pytest.mark.parametrize("kind", KINDS)
def test_server_close_is_idempotent(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    server = make_server(kind, path)
    server.server_close()
    server.server_close()
    assert not os.path.exists(path)


@pytest.mark.parametrize("kind", KINDS)
def test_server_close_leaves_a_successor_socket_alone(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    server = make_server(kind, path)
    try:
        os.unlink(path)
        with socket.socket(socket.AF_UNIX, SERVERS[kind][2]) as successor:
            successor.bind(path)
            successor_inode = os.stat(path).st_ino
            server.server_close()
            assert os.stat(path).st_ino == successor_inode
    finally:
        server.server_close()
    os.unlink(path)


@pytest.mark.parametrize("kind", KINDS)
def test_server_close_leaves_a_file_that_replaced_the_socket_alone(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    server = make_server(kind, path)
    os.unlink(path)
    with open(path, "w") as fh:
        fh.write("someone else's")
    server.server_close()
    with open(path) as fh:
        assert fh.read() == "someone else's"


FORK_CHILD_CLOSES = """
    import os, sys
    from reactor import socketserver
    kind, path = sys.argv[1], sys.argv[2]
    cls = socketserver.UnixStreamServer if kind == "stream" else socketserver.UnixDatagramServer
    server = cls(path, socketserver.BaseRequestHandler)
    pid = os.fork()
    if pid == 0:
        server.server_close()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status))
    print("after child close", os.path.exists(path))
    server.server_close()
    print("after parent close", os.path.exists(path))
"""


@pytest.mark.parametrize("kind", KINDS)
def test_forked_child_server_close_does_not_unlink(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    result = run_python(FORK_CHILD_CLOSES, kind, path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "child exit 0",
        "after child close True",
        "after parent close False",
    ], result.stderr


# ---------------------------------------------------------------- abstract names

@needs_abstract
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_abstract_name_serves_and_touches_no_file(kind: str, as_bytes: bool, unix_dir: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(unix_dir)  # a name mistaken for a relative path would show up here
    name: str | bytes = abstract_name()
    client_name: str | bytes = abstract_name("-c")
    if as_bytes:
        name, client_name = os.fsencode(name), os.fsencode(client_name)
    with serving(make_server(kind, name)) as server:
        assert os.fsencode(server.server_address) == os.fsencode(name)
        assert round_trip(kind, name, client_name) == b"PING"
        assert os.listdir(unix_dir) == []
    assert os.listdir(unix_dir) == []


@needs_abstract
def test_abstract_name_in_use_is_refused(unix_dir: str) -> None:
    name = abstract_name()
    server = make_server("stream", name)
    try:
        with pytest.raises(OSError) as info:
            make_server("stream", name)
        assert info.value.errno == errno.EADDRINUSE
        assert "cannot bind unix @" + name[1:] in str(info.value)
    finally:
        server.server_close()


@needs_abstract
def test_abstract_name_is_free_again_after_server_close() -> None:
    name = abstract_name()
    make_server("stream", name).server_close()
    make_server("stream", name).server_close()


# ---------------------------------------------------------------- mode

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [0o600, 0o660])
def test_mode_sets_the_file_permissions(kind: str, mode: int, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    with serving(make_server(kind, path, mode=mode)):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        assert round_trip(kind, path, os.path.join(unix_dir, "c")) == b"PING"


@pytest.mark.parametrize("kind", KINDS)
def test_mode_is_applied_to_a_replaced_stale_socket(kind: str, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    leave_stale_socket(path, SERVERS[kind][2])
    os.chmod(path, 0o777)
    server = make_server(kind, path, mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        server.server_close()


# ---------------------------------------------------------------- hosted in a Reactor

def test_reactor_close_removes_hosted_unix_files(unix_dir: str) -> None:
    stream_path = os.path.join(unix_dir, "s")
    dgram_path = os.path.join(unix_dir, "d")
    reactor = Reactor()
    try:
        reactor.add_server(make_server("stream", stream_path))
        reactor.add_server(make_server("dgram", dgram_path))
        thread = threading.Thread(target=reactor.serve_forever, name="reactor")
        thread.start()
        try:
            assert round_trip("stream", stream_path) == b"PING"
            assert round_trip("dgram", dgram_path, os.path.join(unix_dir, "c")) == b"PING"
        finally:
            reactor.stop()
            thread.join(10)
        assert os.path.exists(stream_path) and os.path.exists(dgram_path)
    finally:
        reactor.close()
    assert os.listdir(unix_dir) == []


def test_reactor_remove_server_keeps_the_file_until_server_close(unix_dir: str) -> None:
    path = os.path.join(unix_dir, "s")
    server = make_server("stream", path)
    with Reactor() as reactor:
        reactor.add_server(server)
        reactor.remove_server(server)
    assert os.path.exists(path)
    server.server_close()
    assert not os.path.exists(path)


# ---------------------------------------------------------------- bytes paths

@pytest.mark.parametrize("kind", KINDS)
def test_bytes_path_serves_and_is_unlinked(kind: str, unix_dir: str) -> None:
    path = os.fsencode(os.path.join(unix_dir, "s"))
    with serving(make_server(kind, path)):
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert round_trip(kind, path, os.fsencode(os.path.join(unix_dir, "c"))) == b"PING"
    assert not os.path.exists(path)


@pytest.mark.parametrize("kind", KINDS)
def test_bytes_path_stale_socket_is_replaced(kind: str, unix_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    path = os.fsencode(os.path.join(unix_dir, "s"))
    leave_stale_socket(path, SERVERS[kind][2])
    caplog.set_level(logging.INFO, logger="reactor.binding")
    with serving(make_server(kind, path)):
        assert round_trip(kind, path, os.fsencode(os.path.join(unix_dir, "c"))) == b"PING"
    assert "removed stale Unix socket" in caplog.text
    assert not os.path.exists(path)


def test_bytes_path_of_a_live_server_is_refused(unix_dir: str) -> None:
    path = os.fsencode(os.path.join(unix_dir, "s"))
    with serving(make_server("stream", path)):
        with pytest.raises(OSError) as info:
            make_server("stream", path)
        assert info.value.errno == errno.EADDRINUSE
        assert os.fsdecode(path) in str(info.value)
        assert round_trip("stream", path) == b"PING"
