"""Test harness for reactor: resource-leak checking and shared fixtures.

Every test runs under the autouse ``no_leaks`` fixture, which fails the test
if it leaves behind a socket/pipe/anon-inode fd, a live thread, or an
unreaped child process.  Opt out with ``@pytest.mark.allow_leaks``.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from pki import Pki, make_pki
from support import TESTS_DIR, ResourceSnapshot, check_leaks, short_unix_dir, take_snapshot

#: How long teardown waits for the test's threads to finish, its children to
#: be reaped and its fds to be closed before declaring a leak.  Override with
#: the REACTOR_TEST_LEAK_TIMEOUT environment variable (seconds).
LEAK_TIMEOUT = float(os.environ.get("REACTOR_TEST_LEAK_TIMEOUT", "2.0"))

_call_failed = pytest.StashKey[bool]()
_deselected = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_leaks: skip the fd/thread/child-process leak check for this test",
    )
    config.addinivalue_line(
        "markers",
        "run_last: run this test after every other test of the session (it checks what they did)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Move the tests marked ``run_last`` to the end, in their order."""
    last = [item for item in items if item.get_closest_marker("run_last") is not None]
    if last:
        items[:] = [item for item in items if item.get_closest_marker("run_last") is None] + last


def pytest_deselected(items: list[pytest.Item]) -> None:
    """Count what -k, -m, --lf, --deselect... left out (see ``whole_suite_runs``)."""
    if items:
        config = items[0].config
        config.stash[_deselected] = config.stash.get(_deselected, 0) + len(items)


@pytest.fixture
def whole_suite_runs(request: pytest.FixtureRequest) -> bool:
    """True when this session runs every test module of tests/ and deselected nothing
    (no -k, -m, --lf, --deselect): only then can a test judge what the whole suite did."""
    session = request.session
    ran = {item.path.name for item in session.items}
    every = {path.name for path in TESTS_DIR.glob("test_*.py")}
    return every <= ran and session.config.stash.get(_deselected, 0) == 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        # The stored traceback keeps the test's frames (and their sockets)
        # alive, so a leak report would only be noise on top of the failure.
        item.stash[_call_failed] = True


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaks fds (sockets, pipes, epoll...), threads or
    child processes.  Autouse: set up before and torn down after the test's
    other function-scoped fixtures, so their cleanup is taken into account."""
    if request.node.get_closest_marker("allow_leaks") is not None:
        yield
        return
    before: ResourceSnapshot = take_snapshot()
    yield
    if request.node.stash.get(_call_failed, False):
        return
    leaks = check_leaks(before, timeout=LEAK_TIMEOUT)
    if leaks:
        pytest.fail(
            f"test leaked {len(leaks)} resource(s) "
            f"(still present {LEAK_TIMEOUT:g}s after the test):\n  "
            + "\n  ".join(leaks)
            + "\n(mark the test @pytest.mark.allow_leaks if this is intended)",
            pytrace=False,
        )


@pytest.fixture
def unix_dir() -> Iterator[str]:
    """A short directory under /tmp (``/tmp/rxXXXXXXXX``) for Unix socket
    paths, far below the 108-byte sun_path limit; removed afterwards."""
    with short_unix_dir() as path:
        yield path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 (made once per session with openssl)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
