"""What a comparison returns: per run, per arm, per target, and the method it followed.

Plain dataclasses; ``Comparison.to_json()`` is the JSON body of ``GET /api/v1/compare`` and
``service.analysis.table.to_csv`` its CSV. Field meanings are in the class docstrings and in
METHOD (sent with every comparison, so a reader of the JSON has them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from bncore.events import SUMMARY_FIELDS
from service.analysis.runs import PLATEAU_TAIL, PLATEAU_TOLERANCE
from service.analysis.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, Stat
from service.analysis.targets import Target

# The trainer's summary fields a comparison reports, under their summary names and meanings.
SUMMARY_SHOWN = ("best_test_acc", "final_test_acc", "final_test_loss", "final_train_loss")


@dataclass
class RunTarget:
    """One run's race to one target."""

    target: float | None
    steps_to_target: int | None
    reached: bool
    speedup: float | None  # the baseline run's steps ÷ this run's; None when either is censored


@dataclass
class RunResult:
    """One run's row of a comparison. ``curves``: metric key → [[step, value], ...].

    Names shared with the trainer's summary (``bncore.events.SUMMARY_FIELDS``: best_test_acc,
    final_test_acc, final_test_loss, final_train_loss) carry the summary's value and meaning;
    the final ones are None until the run has ended. ``best_test_acc`` of a run still going is
    the best of its evaluations so far (the same rule). ``last_train_loss`` is the last logged
    per-step training loss (a mini-batch in train mode, not the summary's final_train_loss).
    ``steps_to_target``, ``reached`` and ``speedup`` are those of the primary target
    (``targets[0]``).
    """

    id: str
    name: str
    arm: str
    seed: int | None
    status: str
    diverged: bool
    diverged_step: int | None
    wall_time: float | None
    torch_version: str | None
    device: str | None
    budget: int
    best_test_acc: float | None
    final_test_acc: float | None
    final_train_loss: float | None
    final_test_loss: float | None
    last_train_loss: float | None
    best: float | None
    plateaued: bool | None
    tail_gain: float | None
    steps_to_target: int | None
    reached: bool
    speedup: float | None
    targets: list[RunTarget]
    curves: dict[str, list[list[float]]]


@dataclass
class ArmTarget:
    """One arm's race to one target. Stats are {"mean", "ci_low", "ci_high", "bound"}."""

    target: float | None
    n_reached: int
    steps_to_target: Stat
    speedup: Stat
    p_value: float | None


@dataclass
class ArmResult:
    """One arm (runs differing only in seed). ``n_reached``, ``steps_to_target``, ``speedup``
    and ``p_value`` are those of the primary target (``targets[0]``)."""

    label: str
    factors: dict[str, Any]
    run_ids: list[str]
    is_baseline: bool
    n: int
    n_reached: int
    steps_to_target: Stat
    speedup: Stat
    best: Stat
    p_value: float | None
    plateaued: bool | None  # every run plateaued (True), some did not (False), else None
    targets: list[ArmTarget]


@dataclass
class Comparison:
    """The whole comparison; ``target``, ``target_source`` and ``target_label`` describe the
    primary target (``targets[0]``)."""

    metric: str
    higher_is_better: bool
    target: float | None
    target_source: str  # "given" | "baseline" | "none"
    target_label: str
    targets: list[Target]
    baseline_best: dict[str, Any] | None  # {"value", "run_id", "seed", "n_runs", "label"}
    plateau: dict[str, Any]  # {"baseline", "tail", "tolerance", "rule"}
    baseline_id: str
    baseline_arm: str
    points: int
    factors: list[str]
    runs: list[RunResult]
    arms: list[ArmResult]
    warnings: list[str]
    method: dict[str, str]

    def to_json(self) -> bytes:
        """The JSON body of ``GET /api/v1/compare``: every field, nested dataclasses as
        objects, numpy scalars as numbers, non-finite floats as null (JSON has no NaN).

        orjson serializes the dataclasses directly; ``dataclasses.asdict`` (a deep copy of
        every curve point) plus a walk to replace NaN took longer than the comparison."""
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, as the API sends it (see :meth:`to_json`)."""
        return orjson.loads(self.to_json())

    def arm_of(self, run_id: str) -> str:
        return next(r.arm for r in self.runs if r.id == run_id)


PLATEAU_RULE = (
    f"A curve has plateaued when the last {PLATEAU_TAIL:.0%} of its logged steps improved its "
    f"best value by at most {PLATEAU_TOLERANCE:.0%} of the best before them (tail_gain); the "
    "baseline has when every baseline run has. If not, targets near its best, and the "
    "speed-ups there, depend on how long it ran."
)

METHOD = {
    "target": "Targets, in order: the given values, then the given fractions f of the baseline's "
    "best (f × best; best ÷ f for a loss); by default the best itself and 0.99, 0.95, 0.9 of it. "
    "The baseline's best: the lowest of the baseline arm's per-seed best values (every baseline "
    "seed reaches it); with one baseline run, its best. The first target is the primary one.",
    "steps_to_target": "First logged step whose value is >= target (<= for a loss); None = "
    "never reached (censored).",
    "speedup": "Per run: baseline run's steps-to-target / the run's; None when either is "
    "censored. Per arm: mean baseline-arm steps / mean arm steps.",
    "censoring": "In arm statistics a censored run counts as its step budget: the mean is a "
    "restricted mean, a lower bound ('bound': 'lower'); the arm's speed-up is then an upper "
    "bound, or a lower bound when only the baseline is censored; None when both are.",
    "ci": f"{CONFIDENCE:.0%} percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, "
    f"rng seed {BOOTSTRAP_SEED}; groups resampled independently.",
    "test": "Two-sided Mann-Whitney U on steps-to-target, arm vs baseline arm, censored ranked "
    "as +inf.",
    "plateau": PLATEAU_RULE,
    "curves": "Each series downsampled to at most `points` points (LTTB plus first, last, min "
    "and max); x is the training step for every run.",
    "fields": "best_test_acc, final_test_acc, final_test_loss, final_train_loss: the trainer's "
    "summary (" + "; ".join(f"{k}: {SUMMARY_FIELDS[k]}" for k in SUMMARY_SHOWN) + "). "
    "last_train_loss: the last logged per-step training loss.",
}
