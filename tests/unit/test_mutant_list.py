"""benchmarks/mutant_list.py stays in step with the code it mutates: each mutant's original
text occurs exactly once in its file and names tests that exist (a stale mutant would report
"killed" for a change that was never made)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from mutant_list import MUTANTS  # noqa: E402


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_each_mutant_applies_once_and_names_real_tests(mutant) -> None:  # noqa: ANN001
    source = (ROOT / mutant.path).read_text()
    assert source.count(mutant.old) == 1, f"{mutant.path}: {mutant.old!r}"
    assert mutant.old != mutant.new
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).exists(), test
