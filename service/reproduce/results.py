"""What flows through the suite: the API's answers in, findings and results out, and their JSON.

:class:`SweepData` is what an analysis reads (the finished sweep's runs and one comparison from
``GET /compare``), with the look-ups every analysis needs (arms by norm and learning rate,
failed runs). An analysis returns a :class:`Finding`; the runner wraps it with the experiment's
description in an :class:`ExperimentResult`, and all of them make a :class:`SuiteResult`.
:func:`save_numbers` writes a suite as ``reproduction.json`` (enough to re-derive every verdict)
and :func:`load_numbers` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from service.reproduce.plan import SweepPlan
from service.reproduce.verdicts import Verdict
from service.vocab import RunStatus

NUMBERS_NAME = "reproduction.json"
UNUSABLE_STATUSES = (RunStatus.failed, RunStatus.cancelled)  # runs that measured nothing


# ---------------------------------------------------------------------------------------- run specs


def norm_of(spec: dict[str, Any]) -> str:
    return (spec.get("model") or {}).get("norm", "batchnorm")


def is_bn(spec: dict[str, Any]) -> bool:
    return norm_of(spec) != "none"


def lr_of(spec: dict[str, Any]) -> float:
    return float((spec.get("optimizer") or {}).get("lr", 0.0))


def summary_values(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    """``key`` of each run's trainer summary, where the run has it."""
    values = [(r.get("summary") or {}).get(key) for r in runs]
    return [float(v) for v in values if v is not None]


def _same(text: str | None, value: Any) -> bool:
    """Whether an arm's factor (the comparison gives its value as text) is ``value``; numbers
    compare as numbers ("15.0" is 15), and a factor the arm does not name matches anything."""
    if text is None:
        return True
    try:
        return abs(float(text) - float(value)) <= 1e-9
    except (TypeError, ValueError):
        return str(text) == str(value)


def best_baseline_lr(runs: Sequence[dict[str, Any]]) -> float:
    """The learning rate at which the no-BN runs reach the highest mean best test accuracy
    (from their summaries; runs without one are left out): the baseline's "best LR"."""
    by_lr: dict[float, list[float]] = {}
    for run in runs:
        value = (run.get("summary") or {}).get("best_test_acc")
        if not is_bn(run["spec"]) and value is not None:
            by_lr.setdefault(lr_of(run["spec"]), []).append(float(value))
    if not by_lr:
        raise LookupError("no finished baseline run to pick a learning rate from")
    return max(sorted(by_lr), key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))


# -------------------------------------------------------------------------------------------- input


@dataclass
class SweepData:
    """What the API returned for one finished sweep and one experiment's comparison query."""

    plan: SweepPlan
    sweep_id: str
    runs: list[dict[str, Any]]  # RunOut, as GET /sweeps/{id} lists them
    comparison: dict[str, Any]  # Comparison.to_dict(), from GET /compare

    def unusable_runs(self) -> list[dict[str, Any]]:
        """Runs that failed or were cancelled: they measured nothing."""
        return [r for r in self.runs if r.get("status") in UNUSABLE_STATUSES]

    def arm(
        self, *, bn: bool, lr: float | None = None, where: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The comparison arm with (or without) BN, at learning rate ``lr`` and with the other
        factor values in ``where`` (dotted spec paths, e.g. ``{"model.dropout": 0.5}``) where
        given. Every sweep here varies ``model.norm``, so each arm names its norm among its
        factors; a factor an arm does not name does not vary in the sweep, so it matches."""
        wanted = dict(where or {}) | ({"optimizer.lr": lr} if lr is not None else {})
        for arm in self.comparison["arms"]:
            factors = arm["factors"]
            if (factors.get("model.norm") != "none") != bn:
                continue
            if all(_same(factors.get(path), value) for path, value in wanted.items()):
                return arm
        raise LookupError(f"no {'BN' if bn else 'baseline'} arm with {wanted} in the comparison")

    def bn_arm_labels(self) -> set[str]:
        arms = self.comparison["arms"]
        return {a["label"] for a in arms if a["factors"].get("model.norm") != "none"}


# ------------------------------------------------------------------------------------------- output


@dataclass
class Finding:
    """One experiment's outcome: its numbers, the verdict derived from them, and why."""

    verdict: Verdict
    measured: str  # one line for the headline table
    reason: str  # the numbers held against the thresholds
    rule: str  # the decision rule, thresholds included
    numbers: dict[str, Any]  # everything the verdict was computed from (JSON-ready)
    table: list[dict[str, Any]] = field(default_factory=list)  # the section's table rows
    notes: list[str] = field(default_factory=list)
    # A grouped bar chart of summary numbers (group → bar → value), drawn next to the API's
    # comparison figure where curves alone do not show the claim.
    bars: dict[str, dict[str, float | None]] = field(default_factory=dict)
    bars_title: str = ""
    # More tables after the main one: (title, rows).
    more_tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)


@dataclass
class ExperimentResult:
    name: str
    title: str
    claim: str
    paper: str
    sweep: str
    sweep_id: str
    settings: str
    finding: Finding
    figures: list[str]  # paths relative to the report


@dataclass
class SuiteResult:
    profile: str
    out_dir: Path
    report: Path
    results: list[ExperimentResult]
    wall_time: float
    runs: int
    environment: dict[str, Any]
    reused: int = 0  # runs taken from an earlier invocation (reuse.py), not trained in wall_time

    @property
    def verdicts(self) -> dict[str, Verdict]:
        return {r.name: r.finding.verdict for r in self.results}


# --------------------------------------------------------------------------------------------- JSON


def suite_numbers(suite: SuiteResult, server: str, generated: datetime) -> dict[str, Any]:
    """The report's data, JSON-ready: enough to re-derive every verdict."""
    return {
        "profile": suite.profile,
        "server": server,
        "generated": generated.isoformat(),
        "wall_time": suite.wall_time,
        "runs": suite.runs,
        "reused": suite.reused,
        "environment": suite.environment,
        "experiments": [
            {k: v for k, v in asdict(result).items() if k != "finding"}
            | {"finding": asdict(result.finding)}
            for result in suite.results
        ],
    }


def save_numbers(suite: SuiteResult, server: str, generated: datetime) -> Path:
    """Write ``reproduction.json`` next to the report; returns its path."""
    path = suite.out_dir / NUMBERS_NAME
    data = suite_numbers(suite, server, generated)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def load_numbers(path: Path) -> dict[str, Any]:
    """A saved ``reproduction.json`` (a file, or the folder holding it) as written."""
    if path.is_dir():
        path = path / NUMBERS_NAME
    return json.loads(path.read_text())
