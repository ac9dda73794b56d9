"""bench/pyloadgen.py, the pure-Python load generator, run as a program against servers of this test.

Each test starts its servers on threads (or leaves a socket unserved, or closes it) and runs the
load generator in a fresh interpreter with short durations; the assertions are on the result
line's consistency and on what the servers saw, never on speed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import REPO_ROOT, ipv6_available, run_python, spawn_python, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract autobind and IP_BIND_ADDRESS_NO_PORT are Linux's")

LOADGEN = REPO_ROOT / "bench" / "pyloadgen.py"
WARMUP, DURATION = 0.1, 0.5
SHORT_RUN = ("--warmup", str(WARMUP), "--duration", str(DURATION))
RESULT_FIELDS = {
    "generator", "mode", "transport", "concurrency", "seconds", "ops", "ops_per_s", "errors",
    "lost", "conns_served", "p50_us", "p99_us", "error_kinds",
}
DATAGRAM = {"tcp": False, "unix": False, "udp": True, "unixdgram": True}
IO_TIMEOUT = 10.0

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")


# -- servers ------------------------------------------------------------------


def bound_socket(transport: str, where: str) -> socket.socket:
    """A socket of ``transport`` bound to ``where`` (an IP literal, port 0; or a path);
    stream sockets listen."""
    datagram = DATAGRAM[transport]
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    if transport in ("unix", "unixdgram"):
        sock = socket.socket(socket.AF_UNIX, kind)
        address: Any = where
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in where else socket.AF_INET, kind)
        address = (where, 0)
    try:
        sock.bind(address)
        if not datagram:
            sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def address_arg(sock: socket.socket) -> str:
    """``sock``'s address in the loadgen's --address syntax."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return str(name)
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def echo(data: bytes) -> bytes | None:
    return data


class EchoServer:
    """Serves one socket on a thread of its own: answers ``reply(data)`` to every chunk
    (stream) or datagram it receives; a None reply closes the connection (stream).

    Records what the tests check: stream connections accepted and open now, the source hosts
    of those accepted, and the distinct datagrams received.
    """

    def __init__(self, sock: socket.socket, reply: Callable[[bytes], bytes | None] = echo) -> None:
        self.sock = sock
        self.reply = reply
        self.address = address_arg(sock)
        self.accepted = 0
        self.open_connections = 0
        self.peer_hosts: set[str] = set()
        self.datagrams: set[bytes] = set()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="pyloadgen-test-server")

    def __enter__(self) -> EchoServer:
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._wake_w.send(b"x")
        self._thread.join(IO_TIMEOUT)
        assert not self._thread.is_alive(), "the test server did not stop"
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._wake_w.close()

    def _serve(self) -> None:
        datagram = self.sock.type == socket.SOCK_DGRAM
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_r:
                    return
                if key.fileobj is not self.sock:
                    self._answer(key.fileobj)  # type: ignore[arg-type]
                elif datagram:
                    self._answer_datagram()
                else:
                    self._accept()

    def _accept(self) -> None:
        conn, peer = self.sock.accept()
        conn.settimeout(IO_TIMEOUT)  # recv() only when readable; sendall() of a big echo may wait
        if self.sock.family != socket.AF_UNIX:
            self.peer_hosts.add(peer[0])
        self._selector.register(conn, selectors.EVENT_READ)
        self.accepted += 1
        self.open_connections += 1

    def _answer(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
            reply = self.reply(data) if data else None
            if reply is not None:
                conn.sendall(reply)
                return
        except OSError:  # the client reset the connection
            pass
        self._selector.unregister(conn)
        conn.close()
        self.open_connections -= 1

    def _answer_datagram(self) -> None:
        data, sender = self.sock.recvfrom(65536)
        self.datagrams.add(data)
        reply = self.reply(data)
        if reply is not None:
            with contextlib.suppress(OSError):  # the sender may be gone already
                self.sock.sendto(reply, sender)


Where = Callable[..., str]


@pytest.fixture
def where(unix_dir: str) -> Where:
    """``where(transport, ipv6=False)``: the host literal or socket path to bind a server of
    ``transport`` to."""

    def choose(transport: str, ipv6: bool = False) -> str:
        if transport in ("unix", "unixdgram"):
            return os.path.join(unix_dir, f"{transport}.sock")
        return "::1" if ipv6 else "127.0.0.1"

    return choose


@contextlib.contextmanager
def serving(transport: str, where: str,
            reply: Callable[[bytes], bytes | None] = echo) -> Iterator[EchoServer]:
    with EchoServer(bound_socket(transport, where), reply) as server:
        yield server


def closed_address(transport: str, where: str) -> str:
    """An address nobody serves: a port bound then closed; a unix path whose socket is closed
    (the file stays, so connecting is refused rather than not finding it)."""
    with bound_socket(transport, where) as sock:
        return address_arg(sock)


# -- running the load generator ------------------------------------------------


def bound_for(*args: str) -> float:
    """The contract's limit on the run time, warmup + duration + timeout + 1, plus a second of
    slack for starting the interpreter on a loaded machine."""
    options = dict(zip(args[::2], args[1::2]))
    return sum(float(options.get(name, default)) for name, default in
               (("--warmup", 0.5), ("--duration", 2.0), ("--timeout", 2.0))) + 1 + 1


def run_loadgen(*args: str) -> dict[str, Any]:
    """Run the load generator to completion (stdin at EOF); return its result line, checked
    for the consistency every run must have."""
    proc = run_python(LOADGEN, *args, timeout=bound_for(*args), input="")
    assert proc.returncode == 0, proc.stderr
    return checked_result(proc.stdout, args)


def checked_result(stdout: str, args: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    assert set(result) == RESULT_FIELDS
    options = dict(zip(args[::2], args[1::2]))
    assert result["generator"] == "python"
    assert result["mode"] == options["--mode"]
    assert result["transport"] == options["--transport"]
    assert result["concurrency"] == int(options.get("--concurrency", 1))
    assert result["errors"] == sum(result["error_kinds"].values())
    assert all(count > 0 for count in result["error_kinds"].values())
    assert result["seconds"] > 0
    assert math.isclose(result["ops_per_s"], result["ops"] / result["seconds"], rel_tol=1e-3, abs_tol=0.1)
    if result["ops"]:
        assert 0 < result["p50_us"] <= result["p99_us"]
    else:
        assert result["p50_us"] is None and result["p99_us"] is None
    return result


def assert_healthy(result: dict[str, Any], concurrency: int) -> None:
    assert result["ops"] > 0
    assert result["errors"] == 0, result["error_kinds"]
    assert result["lost"] == 0
    assert result["conns_served"] == concurrency


# -- the modes against a healthy server ------------------------------------------

MODE_CASES = [
    pytest.param("crr", "tcp", False, id="crr-tcp"),
    pytest.param("crr", "tcp", True, id="crr-tcp-ipv6", marks=needs_ipv6),
    pytest.param("crr", "unix", False, id="crr-unix"),
    pytest.param("rr", "tcp", False, id="rr-tcp"),
    pytest.param("rr", "tcp", True, id="rr-tcp-ipv6", marks=needs_ipv6),
    pytest.param("rr", "unix", False, id="rr-unix"),
    pytest.param("dgram", "udp", False, id="dgram-udp"),
    pytest.param("dgram", "udp", True, id="dgram-udp-ipv6", marks=needs_ipv6),
    pytest.param("dgram", "unixdgram", False, id="dgram-unixdgram"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mode", "transport", "ipv6"), MODE_CASES)
def test_mode_against_an_echo_server(mode: str, transport: str, ipv6: bool, where: Where) -> None:
    with serving(transport, where(transport, ipv6)) as server:
        result = run_loadgen("--mode", mode, "--transport", transport, "--address", server.address,
                             "--concurrency", "4", *SHORT_RUN)
    assert_healthy(result, 4)
    # The window is about --duration long (loosely: the machine may be busy).
    assert DURATION / 2 <= result["seconds"] <= DURATION + 0.5


@pytest.mark.timeout(30)
def test_rr_keeps_its_connections(where: Where) -> None:
    with serving("tcp", where("tcp")) as server:
        result = run_loadgen("--mode", "rr", "--transport", "tcp", "--address", server.address,
                             "--concurrency", "3", *SHORT_RUN)
    assert_healthy(result, 3)
    assert server.accepted == 3
    assert result["ops"] > 3


@pytest.mark.timeout(30)
def test_source_spread_spreads_crr_connections_over_loopback_addresses(where: Where) -> None:
    with serving("tcp", where("tcp")) as server:
        result = run_loadgen("--mode", "crr", "--transport", "tcp", "--address", server.address,
                             "--concurrency", "2", "--source-spread", "3", *SHORT_RUN)
    assert_healthy(result, 2)
    assert result["ops"] >= 3
    assert server.peer_hosts == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("size", [5, 12, 40])
def test_request_is_hello_world_padded_or_cut_to_the_message_size(size: int, where: Where) -> None:
    with serving("udp", where("udp")) as server:
        result = run_loadgen("--mode", "dgram", "--transport", "udp", "--address", server.address,
                             "--message-size", str(size), *SHORT_RUN)
    assert_healthy(result, 1)
    assert server.datagrams == {b"Hello, world".ljust(size, b".")[:size]}


@pytest.mark.timeout(30)
def test_a_request_bigger_than_the_socket_buffers_is_echoed_while_sent(where: Where) -> None:
    # Unix stream buffers hold a few hundred KB (TCP's grow to megabytes): unless the loadgen
    # reads the echo while it sends, the server blocks in sendall() and stops reading.
    with serving("unix", where("unix")) as server:
        result = run_loadgen("--mode", "rr", "--transport", "unix", "--address", server.address,
                             "--message-size", str(4 << 20), "--timeout", "10", *SHORT_RUN)
    assert_healthy(result, 1)


# -- failures ---------------------------------------------------------------------

CLOSED_CASES = [
    pytest.param("crr", "tcp", "ECONNREFUSED", id="crr-tcp"),
    pytest.param("rr", "tcp", "ECONNREFUSED", id="rr-tcp"),
    pytest.param("crr", "unix", "ECONNREFUSED", id="crr-unix"),
    pytest.param("dgram", "udp", "ECONNREFUSED", id="dgram-udp"),
    pytest.param("dgram", "unixdgram", "ECONNREFUSED", id="dgram-unixdgram"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mode", "transport", "kind"), CLOSED_CASES)
def test_a_closed_address_counts_errors_and_the_run_stays_bounded(
    mode: str, transport: str, kind: str, where: Where
) -> None:
    # run_loadgen's subprocess timeout is the contract's bound on the run time.
    result = run_loadgen("--mode", mode, "--transport", transport,
                         "--address", closed_address(transport, where(transport)),
                         "--concurrency", "4", "--timeout", "0.5", *SHORT_RUN)
    assert result["ops"] == 0
    assert result["conns_served"] == 0
    assert result["errors"] > 0
    assert result["error_kinds"] == {kind: result["errors"]}


@pytest.mark.timeout(30)
def test_a_missing_unix_path_counts_enoent(unix_dir: str) -> None:
    result = run_loadgen("--mode", "crr", "--transport", "unix", "--address", os.path.join(unix_dir, "none"),
                         *SHORT_RUN)
    assert result["ops"] == 0
    assert result["error_kinds"] == {"ENOENT": result["errors"]}
    assert result["errors"] > 0


SILENT_CASES = [
    pytest.param("crr", "tcp", id="crr-tcp"),
    pytest.param("rr", "unix", id="rr-unix"),
    pytest.param("dgram", "udp", id="dgram-udp"),
    pytest.param("dgram", "unixdgram", id="dgram-unixdgram"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mode", "transport"), SILENT_CASES)
def test_a_server_that_never_replies_causes_timeouts_or_losses(
    mode: str, transport: str, where: Where
) -> None:
    # The socket is bound (and listens) but nobody serves it: stream connections complete
    # in the kernel's backlog and datagrams queue, but no reply ever comes.
    with bound_socket(transport, where(transport)) as silent:
        result = run_loadgen("--mode", mode, "--transport", transport, "--address", address_arg(silent),
                             "--concurrency", "2", "--timeout", "0.1", *SHORT_RUN)
    assert result["ops"] == 0
    if DATAGRAM[transport]:
        assert result["lost"] > 0
        assert result["errors"] == 0
    else:
        assert result["lost"] == 0
        assert result["error_kinds"] == {"TIMEOUT": result["errors"]}
        assert result["errors"] > 0


def close_after_reading(data: bytes) -> bytes | None:
    return None


WRONG_REPLY_CASES = [
    pytest.param("rr", "tcp", bytes.upper, "MISMATCH", id="mismatch-rr-tcp"),
    pytest.param("crr", "unix", bytes.upper, "MISMATCH", id="mismatch-crr-unix"),
    pytest.param("dgram", "udp", lambda data: data + b"!", "MISMATCH", id="mismatch-dgram-udp"),
    pytest.param("rr", "unix", close_after_reading, "EOF", id="eof-rr-unix"),
    pytest.param("crr", "tcp", close_after_reading, "EOF", id="eof-crr-tcp"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("mode", "transport", "reply", "kind"), WRONG_REPLY_CASES)
def test_a_wrong_reply_is_an_error(mode: str, transport: str, reply: Callable[[bytes], bytes | None],
                                   kind: str, where: Where) -> None:
    with serving(transport, where(transport), reply) as server:
        result = run_loadgen("--mode", mode, "--transport", transport, "--address", server.address,
                             "--concurrency", "2", *SHORT_RUN)
    assert result["ops"] == 0
    assert result["conns_served"] == 0
    assert result["error_kinds"] == {kind: result["errors"]}
    assert result["errors"] > 0


# -- idle -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_idle_holds_its_connections_until_stdin_ends(transport: str, where: Where) -> None:
    # --hold outlasts the test's timeout: only stdin's EOF can end the run in time. idle ignores
    # --warmup and --duration; bench/run.py passes --duration 0.
    args = ("--mode", "idle", "--transport", transport, "--concurrency", "50", "--hold", "600",
            "--warmup", "0.5", "--duration", "0")
    with serving(transport, where(transport)) as server, \
            spawn_python(LOADGEN, *args, "--address", server.address) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline() == "HOLDING 50\n"
        assert server.open_connections == 50  # all served, so all accepted; none closed yet
        proc.stdin.close()
        stdout = proc.stdout.read()
        assert proc.wait(IO_TIMEOUT) == 0
        wait_for(lambda: server.open_connections == 0, timeout=IO_TIMEOUT,
                 message=lambda: f"{server.open_connections} connections still open")
    result = checked_result(stdout, args)
    assert_healthy(result, 50)
    assert result["ops"] == 50


@pytest.mark.timeout(30)
def test_idle_stops_holding_after_hold_seconds(where: Where) -> None:
    with serving("tcp", where("tcp")) as server, \
            spawn_python(LOADGEN, "--mode", "idle", "--transport", "tcp", "--address", server.address,
                         "--concurrency", "3", "--hold", "0.2") as proc:
        assert proc.stdout is not None
        stdout = proc.stdout.read()  # stdin stays open: only --hold ends the run
        assert proc.wait(IO_TIMEOUT) == 0
    assert stdout.splitlines()[0] == "HOLDING 3"
    result = checked_result(stdout, ("--mode", "idle", "--transport", "tcp", "--concurrency", "3"))
    assert_healthy(result, 3)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stdin", ["devnull", "file"])
def test_idle_ends_holding_at_once_when_stdin_is_devnull_or_a_file(stdin: str, where: Where,
                                                                    tmp_path: Path) -> None:
    source = os.devnull
    if stdin == "file":
        source = str(tmp_path / "stdin.txt")
        Path(source).write_text("some input\n")
    with serving("tcp", where("tcp")) as server, open(source, "rb") as stdin_file:
        proc = subprocess.run([sys.executable, str(LOADGEN), "--mode", "idle", "--transport", "tcp",
                               "--address", server.address, "--concurrency", "2", "--hold", "600"],
                              stdin=stdin_file, capture_output=True, text=True, timeout=IO_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "HOLDING 2"
    result = checked_result(proc.stdout, ("--mode", "idle", "--transport", "tcp", "--concurrency", "2"))
    assert_healthy(result, 2)


@pytest.mark.timeout(30)
def test_idle_against_a_closed_port_serves_nobody(where: Where) -> None:
    args = ("--mode", "idle", "--transport", "tcp", "--address", closed_address("tcp", where("tcp")),
            "--concurrency", "5")
    proc = run_python(LOADGEN, *args, timeout=IO_TIMEOUT, input="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "HOLDING 0"
    result = checked_result(proc.stdout, args)
    assert (result["ops"], result["conns_served"]) == (0, 0)
    assert result["error_kinds"] == {"ECONNREFUSED": 5}


@pytest.mark.timeout(30)
def test_idle_counts_a_silent_server_as_timeouts(where: Where) -> None:
    with bound_socket("tcp", where("tcp")) as silent:
        args = ("--mode", "idle", "--transport", "tcp", "--address", address_arg(silent),
                "--concurrency", "4", "--timeout", "0.2")
        proc = run_python(LOADGEN, *args, timeout=IO_TIMEOUT, input="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "HOLDING 0"
    result = checked_result(proc.stdout, args)
    assert result["error_kinds"] == {"TIMEOUT": 4}


# -- arguments ----------------------------------------------------------------------------

GOOD = {"--mode": "crr", "--transport": "tcp", "--address": "127.0.0.1:9"}


def argv(**changes: str | None) -> list[str]:
    """GOOD with ``changes`` (``message_size="0"`` sets --message-size; None drops the option)."""
    options: dict[str, str | None] = {**GOOD, **{f"--{k.replace('_', '-')}": v for k, v in changes.items()}}
    return [item for name, value in options.items() if value is not None for item in (name, value)]


BAD_ARGUMENTS = {
    "no mode": argv(mode=None),
    "unknown mode": argv(mode="flood"),
    "no address": argv(address=None),
    "stream mode, datagram transport": argv(transport="udp"),
    "dgram mode, stream transport": argv(mode="dgram"),
    "hostname": argv(address="localhost:80"),
    "no port": argv(address="127.0.0.1"),
    "port 0": argv(address="127.0.0.1:0"),
    "port too big": argv(address="127.0.0.1:65536"),
    "signed port": argv(address="127.0.0.1:+80"),
    "IPv6 without brackets": argv(address="::1:80"),
    "IPv4 in brackets": argv(address="[127.0.0.1]:80"),
    "short IPv4": argv(address="127.1:80"),
    "unix path too long": argv(transport="unix", address="/" + "x" * 107),
    "empty unix path": argv(transport="unix", address=""),
    "zero concurrency": argv(concurrency="0"),
    "concurrency over a million": argv(concurrency="1000001"),
    "fractional concurrency": argv(concurrency="1.5"),
    "negative duration": argv(duration="-0.5"),
    "negative warmup": argv(warmup="-1"),
    "nan timeout": argv(timeout="nan"),
    "infinite hold": argv(hold="inf"),
    "zero message size": argv(message_size="0"),
    "message size over 16 MiB": argv(message_size=str((1 << 24) + 1)),
    "hold over a million seconds": argv(hold="1e6000"),
    "duration over a million seconds": argv(duration="1000001"),
    "source spread over 255": argv(source_spread="256"),
    "source spread on unix": argv(transport="unix", address="/tmp/x.sock", source_spread="2"),
    "source spread on IPv6": argv(address="[::1]:80", source_spread="2"),
    "unknown option": [*argv(), "--rate", "5"],
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", list(BAD_ARGUMENTS.values()), ids=list(BAD_ARGUMENTS))
def test_bad_arguments_exit_2_with_a_message(args: list[str]) -> None:
    proc = run_python(LOADGEN, *args, timeout=IO_TIMEOUT, input="")
    assert proc.returncode == 2
    assert "pyloadgen: error:" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.timeout(30)
def test_help_exits_0() -> None:
    proc = run_python(LOADGEN, "--help", timeout=IO_TIMEOUT, input="")
    assert proc.returncode == 0
    assert "--source-spread" in proc.stdout


# -- pure functions -------------------------------------------------------------------


@pytest.fixture(scope="module")
def pyloadgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyloadgen", LOADGEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # @dataclass looks its module up in sys.modules while the class is being created.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize(("samples", "p50", "p99"), [
    ([], None, None),
    ([7000], 7.0, 7.0),
    ([1000, 2000], 1.0, 2.0),
    (list(range(1000, 101000, 1000)), 50.0, 99.0),  # 1..100 us: rank 50 and rank 99
    (list(range(1000, 201000, 1000)), 100.0, 198.0),
])
def test_percentiles_are_nearest_rank(pyloadgen: ModuleType, samples: list[int],
                                      p50: float | None, p99: float | None) -> None:
    assert pyloadgen.percentile_us(samples, 50) == p50
    assert pyloadgen.percentile_us(samples, 99) == p99


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:80", (socket.AF_INET, ("127.0.0.1", 80))),
    ("[::1]:65535", (socket.AF_INET6, ("::1", 65535))),
])
def test_inet_addresses(pyloadgen: ModuleType, text: str, expected: tuple[int, Any]) -> None:
    assert pyloadgen.parse_address("tcp", text) == expected
    assert pyloadgen.parse_address("udp", text) == expected


def test_a_unix_path_has_at_most_107_bytes(pyloadgen: ModuleType) -> None:
    path = "/" + "x" * 106
    assert pyloadgen.parse_address("unixdgram", path) == (socket.AF_UNIX, path)
    with pytest.raises(ValueError, match="at most 107 bytes"):
        pyloadgen.parse_address("unix", path + "x")
