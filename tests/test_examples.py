"""Every example in examples/ is run by a test, and the index lists it.

The examples themselves are exercised by test_demo.py (multi_server.py) and
test_examples_*.py (the rest), each in a fresh interpreter, with --once and in
serving mode. This file keeps that true as examples are added: support's
``run_python`` / ``spawn_python`` note every examples/ script they start, and
the last test of a full run checks that each example was started by some test.
"""

from __future__ import annotations

import os

import pytest

from support import EXAMPLES_DIR, examples_started

EXAMPLES = sorted(path.name for path in EXAMPLES_DIR.glob("*.py") if not path.name.startswith("_"))


def test_there_are_examples() -> None:
    assert "multi_server.py" in EXAMPLES and len(EXAMPLES) >= 11


@pytest.mark.run_last
def test_every_example_was_run_by_a_test_of_this_session(whole_suite_runs: bool) -> None:
    if not whole_suite_runs:
        reason = "only a run of the whole suite shows which examples its tests run"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run it all", pytrace=False)
        pytest.skip(reason)
    never_run = [name for name in EXAMPLES if name not in examples_started]
    assert not never_run, (
        f"no test of this session ran examples/{', examples/'.join(never_run)} "
        "(start it as a script with support.run_python() or spawn_python(), which note it; "
        "or a test that runs it was skipped)")


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_is_listed_in_the_examples_index(example: str) -> None:
    assert f"`{example}`" in (EXAMPLES_DIR / "README.md").read_text()
