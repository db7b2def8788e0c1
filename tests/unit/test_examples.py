"""Every spec shipped in examples/ is valid, so a user who copies one gets a run, not a 422."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bncore.spec import JobSpec
from service.schemas import SweepIn

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.json"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"mlp-sigmoid.json", "sweep-bn-vs-none.json"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_a_valid_spec_or_sweep(path: Path) -> None:
    data = json.loads(path.read_text())
    if "grid" in data:
        sweep = SweepIn.model_validate(data)
        assert sweep.grid and sweep.base.name
    else:
        spec = JobSpec.model_validate(data)
        assert spec.name == path.stem
