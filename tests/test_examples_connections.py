"""The connections examples (examples/connections.py, https.py, framed_lines.py), in fresh interpreters."""

from __future__ import annotations

from support import REPO_ROOT, run_python

EXAMPLE = REPO_ROOT / "examples" / "connections.py"


def test_connections_example_admits_proxied_clients_and_closes_idle_ones() -> None:
    result = run_python(EXAMPLE, "--once", timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("listening on tcp4 127.0.0.1:") and "(echo, wait_for_data=2)" in lines[0]
    assert lines[1].startswith("listening on tcp4 127.0.0.1:") and "(http.server behind PROXY v1)" in lines[1]
    assert lines[2:] == [
        "idle client connected to the echo server and says nothing",
        lines[3],
        "proxied request answered: hello, 192.0.2.10",
        "echo answered meanwhile: STILL ANSWERING",
        "the idle client was closed after wait_for_data: True",
        "a client outside the allow list got: b''",
        "http stats: admitted=1 refused_by_rule=1",
        "echo stats: admitted=1 timeouts=1",
        "stopped",
    ]
    assert lines[3].startswith("http.server log: 192.0.2.10 \"GET / HTTP/1.0\" 200")


HTTPS_EXAMPLE = REPO_ROOT / "examples" / "https.py"


def test_https_example_serves_an_unmodified_handler_over_tls_and_parks_keepalive_connections() -> None:
    result = run_python(HTTPS_EXAMPLE, "--once", timeout=90)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.splitlines() == [
        "hello over TLSv1.3",
        "9 requests over 3 connections, 6 of them on parked connections",
    ]


FRAMED_EXAMPLE = REPO_ROOT / "examples" / "framed_lines.py"


def test_framed_lines_example_serves_50_open_connections_with_4_threads() -> None:
    result = run_python(FRAMED_EXAMPLE, "--once", timeout=60)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines[0].startswith("listening on tcp4 127.0.0.1:")
    assert lines[1:] == [
        "50 connections open at once, 3 rounds of SET and GET each: answered in order",
        "an overlong line: ERROR line too long (limit 256 bytes); then the connection closed: True",
        lines[3],
        "ok",
    ]
    assert lines[3].endswith("(of 4), for 50 open connections")
