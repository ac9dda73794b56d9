#!/usr/bin/env python3
"""The ``reactor`` command: an unmodified http.server handler and a line protocol, two addresses, one process.

What it shows
-------------
* No server code at all for a stdlib handler: ``http.server:SimpleHTTPRequestHandler``
  is a SPEC (``module:attr``), and the command builds the server for each ``--bind``.
* A *server factory* as a SPEC: ``command_line:key_value_server`` below is called
  with each bound socket and returns the server that serves it; here, the
  key-value line protocol of ``line_protocol.py``, whose handler reads its
  store from the server.
* ``--serve SPEC`` starts a second server in the same process, with its own
  ``--bind`` and ``--dispatch``.
* Readiness and shutdown as an operator sees them: JSON log lines
  (``--log-format json``) with ``"event": "ready"`` once everything listens,
  then SIGTERM drains both servers and the Unix socket file disappears.

Run it
------
::

    cd examples
    python -m reactor http.server:SimpleHTTPRequestHandler --bind tcp://127.0.0.1:8000 \\
        --serve command_line:key_value_server --bind unix:///tmp/kv.sock --dispatch threads:8
    curl http://127.0.0.1:8000/                # the directory listing
    nc -U /tmp/kv.sock                          # type: SET a 1, GET a, QUIT

    python examples/command_line.py            # the same command (port 8000, /tmp/kv.sock), until Ctrl-C
    python examples/command_line.py --once     # runs it, plays both clients, stops it

Exit status: 0 on success (``--once``: both servers answered and the command stopped cleanly), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from line_protocol import KeyValueHandler, Store

from reactor.cli import adopt_socket, server_class_for

HERE = os.path.dirname(os.path.abspath(__file__))

#: One store for every connection of every socket the factory serves.
STORE = Store()


def key_value_server(sock: socket.socket) -> Any:
    """A server factory for ``reactor``: serve the key-value protocol on ``sock`` (already bound)."""
    server = adopt_socket(server_class_for(sock), sock, KeyValueHandler)
    server.store = STORE
    return server


# -- --once: run the command and be its clients -----------------------------------


def read_events(proc: subprocess.Popen[bytes], until: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Read the command's JSON log lines until one has ``"event": until``."""
    assert proc.stderr is not None
    events: list[dict[str, Any]] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while not any(event.get("event") == until for event in events):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stderr], [], [], remaining)[0]:
            raise RuntimeError(f"no {until!r} event within {timeout:g}s")
        data = os.read(proc.stderr.fileno(), 65536)
        if not data:
            raise RuntimeError(f"the command exited before {until!r}")
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            print(f"  log: {line.decode()}")
            if line.startswith(b"{"):  # http.server writes its access log to stderr itself, as text
                events.append(json.loads(line))
    return events


def run_once() -> bool:
    with tempfile.TemporaryDirectory(prefix="rx", dir="/tmp") as directory:
        with open(os.path.join(directory, "hello.txt"), "w") as stream:
            stream.write("hello over HTTP\n")
        kv_path = os.path.join(directory, "kv.sock")
        argv = command("tcp://127.0.0.1:0", kv_path, directory, log_format="json")
        print("$ " + " ".join(["reactor", *argv[3:]]))
        with subprocess.Popen(argv, stderr=subprocess.PIPE, env=command_env()) as proc:
            try:
                events = read_events(proc, "ready")
                for event in events:
                    if event.get("event") == "listening":
                        print(f"listening on {event['address']}")
                http = next(event for event in events if event.get("spec") == "http.server:SimpleHTTPRequestHandler")
                with socket.create_connection((http["host"], http["port"]), timeout=10) as client:
                    client.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
                    reply = b"".join(iter(lambda: client.recv(65536), b""))
                body = reply.partition(b"\r\n\r\n")[2]
                print(f"> GET /hello.txt\n< {body.decode().strip()}")
                with socket.socket(socket.AF_UNIX) as client:
                    client.settimeout(10)
                    client.connect(kv_path)
                    lines = client.makefile("rb")
                    answers = []
                    for line in (b"SET greeting hello over a Unix socket", b"GET greeting", b"QUIT"):
                        client.sendall(line + b"\n")
                        answers.append(lines.readline().decode().strip())
                        print(f"> {line.decode()}\n< {answers[-1]}")
                proc.send_signal(signal.SIGTERM)
                read_events(proc, "stopped")
                code = proc.wait(timeout=30)
            finally:
                if proc.poll() is None:
                    proc.kill()
        print(f"exit status {code}; socket file left: {os.path.exists(kv_path)}")
        return (body == b"hello over HTTP\n" and answers == ["OK", "VALUE hello over a Unix socket", "OK"]
                and code == 0 and not os.path.exists(kv_path))


def command(http_bind: str, kv_path: str, directory: str, log_format: str = "text") -> list[str]:
    """The command line this example is about."""
    return [sys.executable, "-m", "reactor", "--log-format", log_format, "--app-dir", HERE, "--chdir", directory,
            "http.server:SimpleHTTPRequestHandler", "--bind", http_bind,
            "--serve", "command_line:key_value_server", "--bind", f"unix://{kv_path}", "--dispatch", "threads:4"]


def command_env() -> dict[str, str]:
    """The environment, with this checkout's reactor importable."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--once", action="store_true", help="run the command, be its clients, stop it, exit")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port when serving (default 8000)")
    parser.add_argument("--kv-socket", default="/tmp/kv.sock", help="the line protocol's Unix socket when serving")
    options = parser.parse_args(argv)
    if options.once:
        return 0 if run_once() else 1
    # Serve: become the command itself (same pid), until Ctrl-C or SIGTERM.
    argv_ = command(f"tcp://127.0.0.1:{options.port}", options.kv_socket, HERE)
    print("$ " + " ".join(["reactor", *argv_[3:]]), flush=True)
    os.execve(sys.executable, argv_, command_env())


if __name__ == "__main__":
    sys.exit(main())
