"""bncore.events.SUMMARY_FIELDS is the one definition of the end event's summary: the trainer
emits exactly those names, and the module stays importable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bncore import events


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_the_trainer_emits_exactly_the_defined_summary_fields(norm: str) -> None:
    from bncore import functional as bnf
    from bncore.spec import JobSpec
    from bncore.train import train

    backend = bnf.get_backend()
    bnf.set_backend("eager")  # no compilation for a 4-step run
    spec = JobSpec.model_validate(
        {
            "dataset": "synthetic",
            "synthetic_features": 8,
            "model": {"hidden": [8], "norm": norm},
            "batch_size": 16,
            "steps": 4,
            "eval_every": 2,
        }
    )
    try:
        end = list(train(spec))[-1]
    finally:
        bnf.set_backend(backend)
    bn_only = {"test_acc_batch_stats", "test_acc_running", "test_acc_population"}
    expected = set(events.SUMMARY_FIELDS) - (bn_only if norm == "none" else set())
    assert end["event"] == "end" and set(end["summary"]) == expected


def test_every_summary_field_has_a_one_line_meaning() -> None:
    for name, meaning in events.SUMMARY_FIELDS.items():
        assert name.isidentifier() and meaning.strip() and "\n" not in meaning, name


def test_events_does_not_import_torch() -> None:
    code = "import sys, bncore.events\nassert 'torch' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
