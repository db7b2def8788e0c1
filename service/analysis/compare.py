"""Compare training runs: steps-to-target, speed-up over a baseline, per run and per arm.

Pure functions over metric series (numpy, scipy and the standard library only): no database, no
HTTP, no torch. The API loads runs into :class:`RunData`, calls :func:`compare` and serialises
``Comparison.to_dict()`` (JSON) or ``service.analysis.table.to_csv`` (CSV).

The paper's headline measure (Ioffe & Szegedy 2015, Fig. 2-3) is *steps to reach the baseline's
best accuracy*; the speed-up of a run is ``baseline steps ÷ run steps``. This module computes
that for single runs and, over several seeds, for groups of runs whose specs differ only in the
seed (an *arm*, see ``service.analysis.arms``), with bootstrap confidence intervals and a rank
test against the baseline arm (``service.analysis.stats``).

Censoring. A run that never reaches the target has no steps-to-target: its true value is
"more than the run's step budget" (or infinite, if it diverged). Such a value is *censored*,
not missing and not an error:

* per run, ``steps_to_target`` is ``None`` and the run's speed-up is ``None``;
* per arm, a censored run counts as its step budget (``spec.steps``, or the last logged step if
  larger). The arm's mean is then a *restricted mean* (survival analysis' RMST): a lower bound
  on the true mean steps-to-target, marked ``"bound": "lower"``. The arm's speed-up
  (baseline mean ÷ arm mean) is then an upper bound (``"bound": "upper"``) and, when the
  baseline arm is censored instead, a lower bound; with censoring on both sides the direction
  is unknown and the speed-up is ``None``;
* the significance test (two-sided Mann-Whitney U) ranks censored runs as +inf, i.e. slower
  than every run that reached the target, which is exactly what is known about them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.analysis.arms import (
    arm_label,
    confounder_warnings,
    flatten,
    group_runs,
    value_text,
    varying_factors,
)
from service.analysis.downsample import downsample
from service.analysis.runs import RunData, best, final, higher_is_better, ratio, steps_to_target
from service.analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    mann_whitney,
    mean_ci,
    speedup_ci,
)


@dataclass
class RunResult:
    """One run's row of a comparison. ``curves``: metric key → [[step, value], ...]."""

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
    best: float | None
    steps_to_target: int | None
    reached: bool
    speedup: float | None
    curves: dict[str, list[list[float]]]


@dataclass
class ArmResult:
    """One arm (runs differing only in seed). Stats are {"mean", "ci_low", "ci_high", "bound"}."""

    label: str
    factors: dict[str, Any]
    run_ids: list[str]
    is_baseline: bool
    n: int
    n_reached: int
    steps_to_target: dict[str, Any]
    speedup: dict[str, Any]
    best: dict[str, Any]
    p_value: float | None


@dataclass
class Comparison:
    metric: str
    higher_is_better: bool
    target: float | None
    target_source: str  # "given" | "baseline" | "none"
    baseline_id: str
    baseline_arm: str
    points: int
    factors: list[str]
    runs: list[RunResult]
    arms: list[ArmResult]
    warnings: list[str]
    method: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: non-finite floats become None (JSON has no NaN)."""
        return _json_safe(asdict(self))

    def arm_of(self, run_id: str) -> str:
        return next(r.arm for r in self.runs if r.id == run_id)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


METHOD = {
    "target": "Default target: the lowest of the baseline arm's best values, so that every "
    "baseline seed reaches it (with one baseline run: its best value, as in the paper).",
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
    "curves": "Each series downsampled to at most `points` points (LTTB plus first, last, min "
    "and max); x is the training step for every run.",
}


# --------------------------------------------------------------------------------------------
# compare()
# --------------------------------------------------------------------------------------------


def compare(
    runs: Sequence[RunData],
    baseline_id: str | None = None,
    target: float | None = None,
    metric: str = "test_acc",
    points: int = 200,
) -> Comparison:
    """Compare runs on ``metric``: steps to reach ``target`` and speed-up over the baseline.

    Baseline: ``baseline_id``, else the first run with ``spec.model.norm == "none"``, else the
    first run. Target: given, else the lowest best value over the baseline's arm (see METHOD).
    """
    if not runs:
        raise ValueError("compare needs at least one run")
    up = higher_is_better(metric)
    baseline = _pick_baseline(runs, baseline_id)
    arms = group_runs(runs)
    factors = varying_factors(arms)
    labels = [arm_label(arm[0].spec, factors) for arm in arms]
    base_arm = next(i for i, arm in enumerate(arms) if any(r is baseline for r in arm))

    target_source = "given"
    if target is None:
        bests = [best(r.series(metric), up) for r in arms[base_arm]]
        bests = [b for b in bests if b is not None]
        target_source = "baseline" if bests else "none"
        target = (min(bests) if up else max(bests)) if bests else None

    def stt(run: RunData) -> int | None:
        return None if target is None else steps_to_target(run.series(metric), target, up)

    base_steps = stt(baseline)
    label_of = {r.id: label for arm, label in zip(arms, labels, strict=True) for r in arm}
    run_results = [
        _run_result(r, label_of[r.id], metric, up, stt(r), base_steps, points) for r in runs
    ]
    by_id = {r.id: r for r in run_results}
    arm_results = [
        _arm_result(
            arm, label, factors, [by_id[r.id] for r in arms[base_arm]], by_id, i == base_arm
        )
        for i, (arm, label) in enumerate(zip(arms, labels, strict=True))
    ]
    warnings = confounder_warnings(arms, labels)
    if target is None:
        warnings.append(f"baseline arm has no {metric} values: no target, no steps-to-target")
    return Comparison(
        metric=metric,
        higher_is_better=up,
        target=target,
        target_source=target_source,
        baseline_id=baseline.id,
        baseline_arm=labels[base_arm],
        points=points,
        factors=factors,
        runs=run_results,
        arms=arm_results,
        warnings=warnings,
        method=dict(METHOD),
    )


def _pick_baseline(runs: Sequence[RunData], baseline_id: str | None) -> RunData:
    if baseline_id is not None:
        for run in runs:
            if run.id == baseline_id:
                return run
        raise ValueError(f"baseline run {baseline_id!r} is not among the compared runs")
    no_norm = [r for r in runs if (r.spec.get("model") or {}).get("norm") == "none"]
    return no_norm[0] if no_norm else runs[0]


def _run_result(
    run: RunData,
    label: str,
    metric: str,
    up: bool,
    steps: int | None,
    base_steps: int | None,
    points: int,
) -> RunResult:
    return RunResult(
        id=run.id,
        name=run.name,
        arm=label,
        seed=run.seed,
        status=run.status,
        diverged=run.diverged,
        diverged_step=run.diverged_step,
        wall_time=run.wall_time,
        torch_version=run.torch_version,
        device=run.device,
        budget=run.budget,
        best_test_acc=best(run.series("test_acc")),
        final_test_acc=final(run.series("test_acc")),
        final_train_loss=final(run.series("train_loss")),
        final_test_loss=final(run.series("test_loss")),
        best=best(run.series(metric), up),
        steps_to_target=steps,
        reached=steps is not None,
        speedup=ratio(base_steps, steps),
        curves={
            key: [[s, v] for s, v in downsample(run.series(key), points)]
            for key in sorted(run.metrics)
        },
    )


def _arm_result(
    arm: list[RunData],
    label: str,
    factors: Sequence[str],
    base: list[RunResult],
    by_id: dict[str, RunResult],
    is_baseline: bool,
) -> ArmResult:
    mine = [by_id[r.id] for r in arm]
    # Censored runs count as their step budget (restricted mean); see the module docstring.
    steps = [float(r.steps_to_target if r.reached else r.budget) for r in mine]
    base_steps = [float(r.steps_to_target if r.reached else r.budget) for r in base]
    censored, base_censored = not all(r.reached for r in mine), not all(r.reached for r in base)
    if is_baseline:  # 1 by definition; the CI shows the seed-to-seed noise
        speedup = speedup_ci(base_steps, steps, None)
    elif censored and base_censored:  # both means are lower bounds: the ratio has no bound
        speedup = speedup_ci([], [], None)
    else:
        speedup = speedup_ci(
            base_steps, steps, "upper" if censored else ("lower" if base_censored else None)
        )
    flat = flatten(arm[0].spec)
    inf = math.inf
    return ArmResult(
        label=label,
        factors={k: value_text(flat.get(k)) for k in factors},
        run_ids=[r.id for r in mine],
        is_baseline=is_baseline,
        n=len(mine),
        n_reached=sum(r.reached for r in mine),
        steps_to_target=mean_ci(steps, "lower" if censored else None),
        speedup=speedup,
        best=mean_ci([r.best for r in mine if r.best is not None]),
        p_value=None
        if is_baseline
        else mann_whitney(
            [r.steps_to_target if r.reached else inf for r in base],
            [r.steps_to_target if r.reached else inf for r in mine],
        ),
    )
