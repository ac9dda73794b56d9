"""The Protocol example (examples/chat.py), in fresh interpreters: --once, and serving until SIGTERM."""

from __future__ import annotations

import re
import signal
import socket

from support import EXAMPLES_DIR, run_python, spawn_python

CHAT = EXAMPLES_DIR / "chat.py"
CLIENT_TIMEOUT = 5.0

CHAT_TRANSCRIPT = """\
[alice] * say NICK <name> first
[alice] * welcome, alice (1 here)
[bob] * welcome, bob (2 here)
[alice] * bob joined
[bob] alice: hi bob
[alice] bob: hi alice
[bob] * here: alice, bob
[carol] * welcome, carol (3 here)
[carol] * error: line too long (limit 1024 bytes)
[carol] (closed by the server)
[alice] * carol joined
[bob] * carol joined
[alice] * carol left
[bob] * carol left
[bob] * bye
[bob] (closed by the server)
[alice] * bob left
ok
"""


def test_chat_once_prints_the_scripted_session() -> None:
    result = run_python(CHAT, "--once", timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"listening on tcp 127\.0\.0\.1:\d+", lines[0]), lines[0]
    assert lines[1:] == CHAT_TRANSCRIPT.splitlines()
    assert result.stderr == ""


def test_chat_serves_until_sigterm_and_closes_its_clients() -> None:
    with spawn_python(CHAT) as proc:
        assert proc.stdout is not None
        match = re.fullmatch(r"listening on tcp 127\.0\.0\.1:(\d+)\n", proc.stdout.readline())
        assert match
        with socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=CLIENT_TIMEOUT) as sock:
            reader = sock.makefile("rb")
            sock.sendall(b"NICK dave\n")
            assert reader.readline() == b"* welcome, dave (1 here)\n"
            proc.send_signal(signal.SIGTERM)
            assert reader.readline() == b""  # the server closed the connection as it left
            reader.close()
        assert proc.wait(CLIENT_TIMEOUT) == 0
        assert proc.stdout.read() == "stopped; closing 1 member connection(s)\n"
