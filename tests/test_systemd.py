"""reactor.systemd: socket activation (hand-made and with the real systemd-socket-activate) and sd_notify.

Activation tests run the reading side in a fresh interpreter that really
inherited the descriptors; notification tests bind a real AF_UNIX datagram
socket (a path and an abstract name) and read what arrives.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from activation import SOCKET_ACTIVATE, activated_argv
from reactor.loop import EventLoop
from reactor.systemd import Notifier, listen_fds, watchdog_interval
from support import python_env, wait_for

#: Run in the activated process: take the sockets, describe them, serve one connection on the first.
REPORTER = r"""
import json, os, socket, sys
from reactor.systemd import listen_fds
activated = listen_fds()
report = {
    "sockets": [{"name": a.name, "fd": a.sock.fileno(), "family": a.sock.family.name, "type": a.sock.type.name,
                 "address": a.sock.getsockname() if a.sock.family != socket.AF_UNIX else
                            os.fsdecode(a.sock.getsockname()),
                 "inheritable": a.sock.get_inheritable()} for a in activated],
    "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
}
print(json.dumps(report), flush=True)
if activated and activated[0].sock.type == socket.SOCK_STREAM:
    connection, _ = activated[0].sock.accept()
    with connection:
        connection.sendall(b"served by " + str(os.getpid()).encode() + b"\n")
"""


def _read_report(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, f"no report; stderr: {proc.stderr.read() if proc.stderr else ''}"
    report: dict[str, object] = json.loads(line)
    return report


def test_inherited_descriptors_keep_their_family_type_address_and_names(unix_dir: str) -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(os.path.join(unix_dir, "s"))
    unix.listen()
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind("\0reactor-test-%d" % os.getpid())
    listeners = [tcp, udp, unix, dgram]
    tcp_address, udp_address = tcp.getsockname(), udp.getsockname()
    fds = [s.fileno() for s in listeners]
    argv = activated_argv(fds, [sys.executable, "-c", REPORTER], names=["web", "dns", "admin", "log"])
    try:
        with subprocess.Popen(argv, pass_fds=fds, env=python_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as proc:
            try:
                report = _read_report(proc)
                # Served on the socket the test made: never re-bound.
                with socket.create_connection(tcp.getsockname(), timeout=10) as client:
                    client.settimeout(10)
                    assert client.makefile("rb").readline() == f"served by {proc.pid}\n".encode()
                assert proc.wait(timeout=10) == 0
            finally:
                proc.kill()
    finally:
        for s in listeners:
            s.close()
    assert report["env_left"] == []
    sockets = report["sockets"]
    assert isinstance(sockets, list)
    assert [(s["name"], s["fd"], s["family"], s["type"], s["inheritable"]) for s in sockets] == [
        ("web", 3, "AF_INET", "SOCK_STREAM", False), ("dns", 4, "AF_INET", "SOCK_DGRAM", False),
        ("admin", 5, "AF_UNIX", "SOCK_STREAM", False), ("log", 6, "AF_UNIX", "SOCK_DGRAM", False)]
    assert [s["address"] for s in sockets] == [list(tcp_address), list(udp_address), os.path.join(unix_dir, "s"),
                                               "\0reactor-test-%d" % os.getpid()]


def test_addresses_of_inherited_inet_sockets_are_the_bound_ones() -> None:
    tcp = socket.create_server(("127.0.0.1", 0))
    fds = [tcp.fileno()]
    try:
        with subprocess.Popen(activated_argv(fds, [sys.executable, "-c", REPORTER]), pass_fds=fds,
                              env=python_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            try:
                report = _read_report(proc)
                with socket.create_connection(tcp.getsockname(), timeout=10) as client:
                    client.settimeout(10)
                    client.makefile("rb").readline()
                assert proc.wait(timeout=10) == 0
            finally:
                proc.kill()
    finally:
        address = tcp.getsockname()
        tcp.close()
    sockets = report["sockets"]
    assert isinstance(sockets, list)
    assert sockets[0]["address"] == list(address)
    assert sockets[0]["name"] == "unknown"  # no LISTEN_FDNAMES


def test_a_listen_pid_of_another_process_is_ignored_and_the_variables_cleared() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert listen_fds(environ=env) == []
    assert env == {"OTHER": "x"}
    env = {"LISTEN_FDS": "1"}  # no LISTEN_PID: not for us
    assert listen_fds(environ=env) == []
    assert env == {}
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1)}
    assert listen_fds(environ=env, unset_environment=False) == []
    assert "LISTEN_FDS" in env
    assert listen_fds(environ={}) == []
    assert listen_fds(environ={"LISTEN_FDS": "0", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": ""}) == []


@pytest.mark.parametrize("env, message", [
    ({"LISTEN_FDS": "two"}, "LISTEN_FDS='two' is not a non-negative number"),
    ({"LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a non-negative number"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, "LISTEN_FDNAMES has 1 names ('a') for LISTEN_FDS=2"),
    ({"LISTEN_FDS": "1", "LISTEN_PID": "me"}, "LISTEN_PID='me' is not a non-negative number"),
])
def test_malformed_activation_variables_are_a_clear_error(env: dict[str, str], message: str) -> None:
    env.setdefault("LISTEN_PID", str(os.getpid()))
    with pytest.raises(ValueError) as raised:
        listen_fds(environ=env)
    assert str(raised.value) == message
    assert not any(key.startswith("LISTEN_") for key in env)


def test_a_passed_descriptor_that_is_not_a_socket_is_refused() -> None:
    read_end, write_end = os.pipe()
    fds = [read_end]
    code = "from reactor.systemd import listen_fds\ntry:\n    listen_fds()\nexcept ValueError as e:\n    print(e)\n"
    try:
        result = subprocess.run(activated_argv(fds, [sys.executable, "-c", code], names=["pipe"]), pass_fds=fds,
                                env=python_env(), capture_output=True, text=True, timeout=30)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.stdout == "descriptor 3 (pipe) passed by the service manager is not a socket\n", result.stderr


def test_the_real_systemd_socket_activate_passes_named_stream_and_datagram_sockets(unix_dir: str) -> None:
    stream_path, dgram_path = os.path.join(unix_dir, "web.sock"), os.path.join(unix_dir, "log.sock")
    env = python_env()
    argv = [SOCKET_ACTIVATE, "-l", stream_path, "--fdname=web", "-E", f"PYTHONPATH={env['PYTHONPATH']}",
            sys.executable, "-c", REPORTER]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for(lambda: os.path.exists(stream_path) or proc.poll() is not None, timeout=10)
            # The activator starts the program on the first connection, which it then serves.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(10)
                client.connect(stream_path)
                report = _read_report(proc)
                assert client.makefile("rb").readline() == f"served by {proc.pid}\n".encode()
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
    assert report == {"sockets": [{"name": "web", "fd": 3, "family": "AF_UNIX", "type": "SOCK_STREAM",
                                   "address": stream_path, "inheritable": False}], "env_left": []}
    # Datagram: --datagram; two names for one descriptor each.
    argv = [SOCKET_ACTIVATE, "--datagram", "-l", dgram_path, "--fdname=log", "-E",
            f"PYTHONPATH={env['PYTHONPATH']}", sys.executable, "-c", REPORTER]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            wait_for(lambda: os.path.exists(dgram_path) or proc.poll() is not None, timeout=10)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
                client.sendto(b"wake up", dgram_path)
            report = _read_report(proc)
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
    assert report["sockets"] == [{"name": "log", "fd": 3, "family": "AF_UNIX", "type": "SOCK_DGRAM",
                                  "address": dgram_path, "inheritable": False}]


# ---------------------------------------------------------------- sd_notify


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, unix_dir: str) -> Iterator[tuple[str, socket.socket]]:
    """A bound AF_UNIX datagram socket and its NOTIFY_SOCKET spelling."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        name = os.path.join(unix_dir, "notify")
        sock.bind(name)
    else:
        name = f"@reactor-notify-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name[1:])
    sock.settimeout(10)
    with sock:
        yield name, sock


def _received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_notifications_reach_a_path_or_abstract_socket(notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.ready("serving 2 servers")
    assert _received(sock) == ["READY=1", "STATUS=serving 2 servers"]
    assert notifier.reloading()
    reloading = _received(sock)
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert int(reloading[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert _received(sock) == ["STOPPING=1"]
    assert notifier.status("two\nlines")
    assert _received(sock) == ["STATUS=two lines"]
    assert notifier.watchdog()
    assert _received(sock) == ["WATCHDOG=1"]
    assert notifier.main_pid(4242, "upgraded")
    assert _received(sock) == ["MAINPID=4242", "STATUS=upgraded"]
    with pytest.raises(ValueError):
        notifier.notify("no equals sign")


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier(environ={"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval is None
    with EventLoop() as loop:
        assert not notifier.start_watchdog(loop)
    assert repr(notifier) == "Notifier(disabled)"


def test_an_unreachable_manager_is_logged_once_and_never_raises(unix_dir: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": os.path.join(unix_dir, "nobody")})
    with caplog.at_level(logging.WARNING, logger="reactor.systemd"):
        assert not notifier.ready()
        assert not notifier.stopping()
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot notify the service manager at {os.path.join(unix_dir, 'nobody')} "
        "([Errno 2] No such file or directory); going on without it"]
    assert not Notifier(environ={"NOTIFY_SOCKET": "relative/path"}).enabled


def test_watchdog_interval_follows_watchdog_usec_and_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}) == 3.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 3.0
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_watchdog_keepalives_run_on_the_loop_until_stopped(notify_socket: tuple[str, socket.socket]) -> None:
    name, sock = notify_socket
    notifier = Notifier(environ={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "40000"})
    assert notifier.watchdog_interval == 0.04
    received: list[str] = []
    with EventLoop() as loop:
        sock.setblocking(False)
        loop.add_reader(sock, lambda: received.extend(_received(sock)))
        assert notifier.start_watchdog(loop)
        assert received == []  # the first keep-alive is sent now, read by the loop
        loop.run_until(lambda: len(received) >= 3, timeout=10)
        assert received[:3] == ["WATCHDOG=1"] * 3
        notifier.stop_watchdog()
        assert loop.time_until_next() is None  # no timer left
        loop.remove_reader(sock)
    sock.setblocking(True)
