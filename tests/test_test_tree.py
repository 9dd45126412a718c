"""The test tree itself: names conftest.py relies on exist, and test file names are unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from conftest import SPATIALDATA_TESTS

TESTS_DIR = Path(__file__).resolve().parent


def test_the_spatialdata_test_modules_named_in_conftest_exist():
    """CI fails a run without the spatialdata extra only if these names match real modules."""
    names = {p.name for p in TESTS_DIR.rglob("test_*.py")}
    assert set(SPATIALDATA_TESTS) <= names, sorted(set(SPATIALDATA_TESTS) - names)


def test_test_file_names_are_unique_across_the_tree():
    """pytest's default import mode imports test modules by their base name."""
    counts = Counter(p.name for p in TESTS_DIR.rglob("test_*.py"))
    assert not [name for name, n in counts.items() if n > 1]
