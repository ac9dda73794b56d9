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

from support import ResourceSnapshot, check_leaks, short_unix_dir, take_snapshot

#: How long teardown waits for the test's threads to finish, its children to
#: be reaped and its fds to be closed before declaring a leak.  Override with
#: the REACTOR_TEST_LEAK_TIMEOUT environment variable (seconds).
LEAK_TIMEOUT = float(os.environ.get("REACTOR_TEST_LEAK_TIMEOUT", "2.0"))

_call_failed = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_leaks: skip the fd/thread/child-process leak check for this test",
    )


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
