"""The hosting and embedding examples, each run in a fresh interpreter.

* examples/stdlib_servers.py: http.server and xmlrpc.server, unmodified, beside an echo server on one Reactor;
* examples/embed_select_loop.py: a Reactor driven by a plain select() loop with duties of its own;
* examples/embed_asyncio.py: a Reactor driven by an asyncio application that has its own server.

Each runs with ``--once`` (its output checked line by line), and serving (a client from
the test, then a signal, or stdin commands for the select loop).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pytest

from support import REPO_ROOT, run_python, spawn_python

EXAMPLES = REPO_ROOT / "examples"
STDLIB_SERVERS = EXAMPLES / "stdlib_servers.py"
SELECT_LOOP = EXAMPLES / "embed_select_loop.py"
ASYNCIO = EXAMPLES / "embed_asyncio.py"

TIMEOUT = 5.0
PORT = r"127\.0\.0\.1:(\d+)"
INDEX_HTML = b"<!doctype html>\n<title>reactor</title>\n<p>Hello from http.server</p>\n"
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT]


# -- helpers ------------------------------------------------------------------


def match_lines(lines: list[str], patterns: list[str]) -> list[re.Match[str]]:
    """Each line must fully match the pattern at the same position; return the matches."""
    assert len(lines) == len(patterns), "\n".join(lines)
    matches = []
    for line, pattern in zip(lines, patterns):
        match = re.fullmatch(pattern, line)
        assert match, f"{line!r} does not match {pattern!r} in:\n" + "\n".join(lines)
        matches.append(match)
    return matches


def run_once(script: Any, *args: str) -> list[str]:
    result = run_python(script, "--once", *args, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


class Child:
    """A spawned example whose stdout lines arrive through a reader thread, so every wait is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []  # every line read so far
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, name="example-stdout")
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Read lines until one fully matches ``pattern``; return its match."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout:g}s in:\n"
                                     + "\n".join(self.lines)) from None
            if line is None:
                self._queue.put(None)
                raise AssertionError(f"end of output before a line matching {pattern!r} in:\n"
                                     + "\n".join(self.lines))
            self.lines.append(line)
            match = re.fullmatch(pattern, line)
            if match:
                return match

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30.0) -> tuple[int, list[str], str]:
        """Wait for the exit; return the status, the lines not read yet, and stderr."""
        status = self.proc.wait(timeout)
        self._reader.join(timeout)
        rest = []
        while (line := self._queue.get(timeout=timeout)) is not None:
            rest.append(line)
        self._queue.put(None)
        self.lines += rest
        assert self.proc.stderr is not None
        return status, rest, self.proc.stderr.read()


@contextlib.contextmanager
def spawned(script: Any, *args: str) -> Iterator[Child]:
    """Start an example serving; kill it if the test fails before it exits, and reap it."""
    with spawn_python(script, *args) as proc:
        child = Child(proc)
        try:
            yield child
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            child._reader.join(10)


def echo(port: int, line: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(line)
        with sock.makefile("rb") as reader:
            return reader.readline()


class TimeoutTransport(xmlrpc.client.Transport):
    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = TIMEOUT
        return connection


def not_ticks(lines: list[str]) -> list[str]:
    """The select loop's output without its ``tick N`` lines, which come whenever the host's timer fires."""
    ticks = [int(line.split()[1]) for line in lines if re.fullmatch(r"tick \d+", line)]
    if ticks:
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), ticks  # consecutive, none twice
    return [line for line in lines if not re.fullmatch(r"tick \d+", line)]


def with_poll_selector(script: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the example's main() with a selector that has no descriptor (poll): it cannot be embedded."""
    code = "\n".join([
        "import runpy, selectors, sys",
        "selectors.DefaultSelector = selectors.PollSelector",
        f"sys.argv = [{str(script)!r}, *{list(args)!r}]",
        f"namespace = runpy.run_path({str(script)!r})",
        "sys.exit(namespace['main']())",
    ])
    return run_python(code, timeout=60)


# -- stdlib_servers.py ----------------------------------------------------------


def test_stdlib_servers_once_talks_to_http_xmlrpc_and_echo() -> None:
    lines = run_once(STDLIB_SERVERS)
    matches = match_lines(lines, [
        rf"listening on tcp4 {PORT}  \(http\.server\.ThreadingHTTPServer\)",
        rf"listening on tcp4 {PORT}  \(xmlrpc\.server\.SimpleXMLRPCServer\)",
        rf"listening on tcp4 {PORT}  \(reactor\.socketserver\.TCPServer\)",
        r"http\.server: serving files from (/\S+)",
        r"http: GET /",
        r'http\.server: "GET / HTTP/1\.1" 200 -  \(in a ThreadingMixIn thread\)',
        re.escape(f"http: 200 OK text/html {INDEX_HTML!r}"),
        re.escape("xmlrpc: system.listMethods() -> "
                  "['add', 'system.listMethods', 'system.methodHelp', 'system.methodSignature', 'upper']"),
        re.escape("xmlrpc: add(2, 3) -> 5"),
        re.escape("xmlrpc: upper('hello') -> 'HELLO'"),
        re.escape(r"echo: sent b'hello, echo\n'"),
        re.escape(r"echo: received b'HELLO, ECHO\n'"),
        r"stopped",
    ])
    assert len({match.group(1) for match in matches[:3]}) == 3  # three servers, three ports
    assert not os.path.exists(matches[3].group(1))  # the served directory is removed at exit


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_stdlib_servers_serve_until_signal(signum: signal.Signals) -> None:
    with spawned(STDLIB_SERVERS) as child:
        http_port = int(child.expect(rf"listening on tcp4 {PORT}  \(http\.server\.ThreadingHTTPServer\)").group(1))
        rpc_port = int(child.expect(rf"listening on tcp4 {PORT}  \(xmlrpc\.server\.SimpleXMLRPCServer\)").group(1))
        echo_port = int(child.expect(rf"listening on tcp4 {PORT}  \(reactor\.socketserver\.TCPServer\)").group(1))
        docroot = child.expect(r"http\.server: serving files from (/\S+)").group(1)
        assert os.listdir(docroot) == ["index.html"]

        connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=TIMEOUT)
        try:
            connection.request("GET", "/index.html")
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, INDEX_HTML)
        finally:
            connection.close()
        child.expect(r'http\.server: "GET /index\.html HTTP/1\.1" 200 -  \(in a ThreadingMixIn thread\)')

        with xmlrpc.client.ServerProxy(f"http://127.0.0.1:{rpc_port}/", transport=TimeoutTransport()) as proxy:
            assert proxy.add(40, 2) == 42
            assert proxy.upper("reactor") == "REACTOR"
            assert proxy.system.methodHelp("add") == "Return ``a + b``."

        assert echo(echo_port, b"from the test\n") == b"FROM THE TEST\n"

        child.proc.send_signal(signum)
        status, rest, stderr = child.finish()
    assert status == 0, stderr
    assert rest == [f"stopped ({signum.name})"]
    assert not os.path.exists(docroot)


# -- embed_select_loop.py ---------------------------------------------------------


def test_select_loop_once_serves_a_client_thread_then_exits_by_itself() -> None:
    lines = run_once(SELECT_LOOP, "--tick", "0.01")
    match_lines(not_ticks(lines), [
        rf"listening on tcp4 {PORT}  \(EchoServer\)",
        re.escape(r"client: sending b'hello from a client thread\n'"),
        re.escape(r"echo server: b'hello from a client thread\n', in thread MainThread"),  # the host's thread
        re.escape(r"client: received b'HELLO FROM A CLIENT THREAD\n'"),
        re.escape("stopped (client done)"),
    ])


def test_select_loop_ticks_serves_a_client_and_answers_status_then_quit() -> None:
    with spawned(SELECT_LOOP, "--tick", "0.05", "--idle", "0") as child:  # no reactor timer
        port = child.expect(rf"listening on tcp4 {PORT}  \(EchoServer\)").group(1)
        child.expect(r"commands: status, quit \(Ctrl-C or SIGTERM also stop\)")
        child.expect(r"tick 2")  # the host's own timer

        assert echo(int(port), b"while ticking\n") == b"WHILE TICKING\n"
        child.expect(re.escape(r"echo server: b'while ticking\n', in thread MainThread"))  # the host's thread

        child.send("status\n")
        child.expect(rf"status: server tcp4 127\.0\.0\.1:{port}  \(EchoServer\)")
        child.expect(r"status: next reactor timer none")
        assert float(child.expect(r"status: next tick in (\d+\.\d\d)s").group(1)) <= 0.05

        child.send("quit\n")
        status, rest, stderr = child.finish()
    assert status == 0, stderr
    assert stderr == ""
    assert not_ticks(child.lines)[-1] == "stopped (quit)"


def test_select_loop_wakes_for_the_reactor_timer_without_any_other_event() -> None:
    # The host's own tick is an hour away: only time_until_next() can wake the loop.
    with spawned(SELECT_LOOP, "--tick", "3600", "--idle", "0.05") as child:
        port = child.expect(rf"listening on tcp4 {PORT}  \(EchoServer\)").group(1)
        child.expect(r"echo server: no request for 0\.05s")
        child.expect(r"echo server: no request for 0\.05s")  # re-armed

        child.send("status\n")
        child.expect(rf"status: server tcp4 127\.0\.0\.1:{port}  \(EchoServer\)")
        assert float(child.expect(r"status: next reactor timer in (\d+\.\d\d)s").group(1)) <= 0.05
        assert float(child.expect(r"status: next tick in (\d+\.\d\d)s").group(1)) > 60

        child.send("quit\n")
        status, rest, stderr = child.finish()
    assert status == 0, stderr
    assert stderr == ""
    assert child.lines[-1] == "stopped (quit)"


def test_select_loop_reports_unknown_commands_and_stops_at_end_of_input() -> None:
    result = run_python(SELECT_LOOP, "--tick", "3600", input="bogus\n", timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    match_lines(result.stdout.splitlines(), [
        rf"listening on tcp4 {PORT}  \(EchoServer\)",
        r"commands: status, quit \(Ctrl-C or SIGTERM also stop\)",
        r"unknown command 'bogus': try status or quit",
        r"stopped \(end of input\)",
    ])


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_select_loop_serve_stops_on_signal_through_the_self_pipe(signum: signal.Signals) -> None:
    with spawned(SELECT_LOOP) as child:  # stdin stays open: only the signal can stop it
        port = int(child.expect(rf"listening on tcp4 {PORT}  \(EchoServer\)").group(1))
        child.expect(r"commands: .*")
        assert echo(port, b"before the signal\n") == b"BEFORE THE SIGNAL\n"
        child.expect(re.escape(r"echo server: b'before the signal\n', in thread MainThread"))
        child.proc.send_signal(signum)
        status, rest, stderr = child.finish()
    assert status == 0, stderr
    assert stderr == ""
    assert not_ticks(rest) == [f"stopped ({signum.name})"]


def test_select_loop_refuses_a_selector_without_descriptor() -> None:
    result = with_poll_selector(SELECT_LOOP, "--once")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot embed the reactor here: PollSelector has no descriptor")


# -- embed_asyncio.py ---------------------------------------------------------------


def test_asyncio_once_client_talks_to_both_servers() -> None:
    lines = run_once(ASYNCIO)
    matches = match_lines(lines, [
        rf"listening on tcp4 {PORT}  \(reactor: EchoServer\)",
        rf"listening on tcp4 {PORT}  \(asyncio\.start_server\)",
        re.escape(r"client: sending b'hello, reactor\n' to tcp4 127.0.0.1:") + r"(\d+)",
        re.escape(r"echo server: b'hello, reactor\n', in thread MainThread"),  # the event loop's thread
        re.escape(r"client: received b'HELLO, REACTOR\n'"),
        re.escape(r"client: sending b'hello, asyncio\n' to tcp4 127.0.0.1:") + r"(\d+)",
        re.escape(r"asyncio server: b'hello, asyncio\n', in thread MainThread"),
        re.escape(r"client: received b'asyncio: hello, asyncio\n'"),
        r"stopped",
    ])
    assert matches[2].group(1) == matches[0].group(1)
    assert matches[5].group(1) == matches[1].group(1)


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: s.name)
def test_asyncio_serve_drives_reactor_timers_and_stops_on_signal(signum: signal.Signals) -> None:
    with spawned(ASYNCIO, "--idle", "0.05") as child:
        echo_port = int(child.expect(rf"listening on tcp4 {PORT}  \(reactor: EchoServer\)").group(1))
        asyncio_port = int(child.expect(rf"listening on tcp4 {PORT}  \(asyncio\.start_server\)").group(1))
        child.expect(r"echo server: no request for 0\.05s")  # a reactor timer, via loop.call_later
        child.expect(r"echo server: no request for 0\.05s")  # ... re-armed after the tick

        assert echo(echo_port, b"to the reactor\n") == b"TO THE REACTOR\n"
        child.expect(re.escape(r"echo server: b'to the reactor\n', in thread MainThread"))
        assert echo(asyncio_port, b"to asyncio\n") == b"asyncio: to asyncio\n"
        child.expect(re.escape(r"asyncio server: b'to asyncio\n', in thread MainThread"))

        child.proc.send_signal(signum)
        status, rest, stderr = child.finish()
    assert status == 0, stderr
    assert stderr == ""
    assert [line for line in rest if "no request" not in line] == [f"stopped ({signum.name})"]


def test_asyncio_refuses_a_selector_without_descriptor() -> None:
    result = with_poll_selector(ASYNCIO, "--once")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: cannot embed the reactor here: PollSelector has no descriptor")
