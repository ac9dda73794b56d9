"""Every example in examples/ is run by a test, and the index lists it.

The examples themselves are exercised by test_demo.py (multi_server.py) and
test_examples_*.py (the rest), each in a fresh interpreter, with --once and in
serving mode; this file keeps that true as examples are added.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(path.name for path in (REPO / "examples").glob("*.py") if not path.name.startswith("_"))
TEST_SOURCES = {path.name: path.read_text() for path in (REPO / "tests").glob("test_*.py")
                if path.name != Path(__file__).name}


def test_there_are_examples() -> None:
    assert "multi_server.py" in EXAMPLES and len(EXAMPLES) >= 11


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_is_run_by_a_test(example: str) -> None:
    runners = [name for name, source in TEST_SOURCES.items() if example in source]
    assert runners, f"examples/{example} is not run by any test in tests/"


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_is_listed_in_the_examples_index(example: str) -> None:
    assert f"`{example}`" in (REPO / "examples" / "README.md").read_text()
