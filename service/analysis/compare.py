"""Compare training runs: steps-to-target, speed-up over a baseline, per run and per arm.

Pure functions over metric series (numpy, scipy and the standard library only): no database, no
HTTP, no torch. The API loads runs into :class:`RunData`, calls :func:`compare` and serialises
``Comparison.to_json()`` (JSON) or ``service.analysis.table.to_csv`` (CSV).

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
from dataclasses import asdict

from bncore.events import EVAL_KEYS, TRAIN_KEYS
from service.analysis.arms import (
    arm_label,
    confounder_warnings,
    flatten,
    group_runs,
    value_text,
    varying_factors,
)
from service.analysis.downsample import downsample
from service.analysis.results import (
    METHOD,
    PLATEAU_RULE,
    ArmResult,
    ArmTarget,
    Comparison,
    RunResult,
    RunTarget,
)
from service.analysis.runs import (
    PLATEAU_TAIL,
    PLATEAU_TOLERANCE,
    RunData,
    best,
    final,
    higher_is_better,
    plateau,
    ratio,
    steps_to_target,
    tail_gain,
)
from service.analysis.stats import mann_whitney, mean_ci, no_stat, speedup_ci
from service.analysis.targets import Target, TargetError, baseline_best, choose_targets

__all__ = ["Comparison", "ComparisonError", "RunData", "compare", "metric_choices"]


class ComparisonError(ValueError):
    """A comparison that cannot be made as asked (an unknown metric, no baseline arm, a bad
    target); ``field`` is the query field at fault. The API answers 422 with the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------
# compare()
# --------------------------------------------------------------------------------------------


def compare(
    runs: Sequence[RunData],
    baseline_id: str | None = None,
    target: float | Sequence[float] | None = None,
    metric: str = "test_acc",
    points: int = 200,
    target_fractions: Sequence[float] | None = None,
) -> Comparison:
    """Compare runs on ``metric``: steps to reach each target and speed-up over the baseline.

    Baseline: ``baseline_id``, else the first run with ``spec.model.norm == "none"``; with
    neither, ComparisonError. Targets: ``service.analysis.targets`` (given values, fractions of
    the baseline's best; by default the best and 0.99, 0.95, 0.9 of it). An unknown ``metric``
    (not logged by any run, nor one the trainer emits) is a ComparisonError naming the choices.
    """
    if not runs:
        raise ValueError("compare needs at least one run")
    _check_metric(runs, metric)
    up = higher_is_better(metric)
    arms = group_runs(runs)
    factors = varying_factors(arms)
    labels = [arm_label(arm[0].spec, factors) for arm in arms]
    baseline = _pick_baseline(runs, baseline_id, arms, labels)
    base_arm = next(i for i, arm in enumerate(arms) if any(r is baseline for r in arm))

    base_best = baseline_best(arms[base_arm], metric, up)
    values = [] if target is None else [target] if isinstance(target, int | float) else target
    try:
        targets = choose_targets(values, target_fractions, base_best, metric, up)
    except TargetError as exc:
        raise ComparisonError(exc.field, str(exc)) from exc

    label_of = {r.id: label for arm, label in zip(arms, labels, strict=True) for r in arm}
    base_steps = _steps(baseline, targets, metric, up)
    run_results = [
        _run_result(r, label_of[r.id], metric, up, targets, base_steps, points) for r in runs
    ]
    by_id = {r.id: r for r in run_results}
    base_results = [by_id[r.id] for r in arms[base_arm]]
    arm_results = [
        _arm_result(arm, label, factors, base_results, by_id, i == base_arm)
        for i, (arm, label) in enumerate(zip(arms, labels, strict=True))
    ]
    warnings = confounder_warnings(arms, labels)
    if base_best is None:
        warnings.append(f"baseline arm has no {metric} values: no target, no steps-to-target")
    baseline_plateaued = arm_results[base_arm].plateaued
    if baseline_plateaued is False:
        gains = [r.tail_gain for r in base_results if r.tail_gain is not None]
        warnings.append(
            f"the baseline had not plateaued: its best {metric} still improved by up to "
            f"{max(gains):.1%} in the last {PLATEAU_TAIL:.0%} of its steps, so targets near "
            "its best (and their speed-ups) depend on how long it ran"
        )
    primary = targets[0]
    return Comparison(
        metric=metric,
        higher_is_better=up,
        target=primary.value,
        target_source=primary.source,
        target_label=primary.label,
        targets=targets,
        baseline_best=None if base_best is None else asdict(base_best),
        plateau={
            "baseline": baseline_plateaued,
            "tail": PLATEAU_TAIL,
            "tolerance": PLATEAU_TOLERANCE,
            "rule": PLATEAU_RULE,
        },
        baseline_id=baseline.id,
        baseline_arm=labels[base_arm],
        points=points,
        factors=factors,
        runs=run_results,
        arms=arm_results,
        warnings=warnings,
        method=dict(METHOD),
    )


def metric_choices(runs: Sequence[RunData]) -> list[str]:
    """The metrics a comparison of ``runs`` can use: the keys any of them logged, and the keys
    the trainer emits (so runs that have not logged yet can be compared too)."""
    return sorted({k for r in runs for k in r.metrics} | set(TRAIN_KEYS) | set(EVAL_KEYS))


def _check_metric(runs: Sequence[RunData], metric: str) -> None:
    choices = metric_choices(runs)
    if metric not in choices:
        raise ComparisonError(
            "metric", f"metric {metric!r} is not one of these runs' metrics: {', '.join(choices)}"
        )


def _pick_baseline(
    runs: Sequence[RunData],
    baseline_id: str | None,
    arms: Sequence[list[RunData]],
    labels: Sequence[str],
) -> RunData:
    if baseline_id is not None:
        for run in runs:
            if run.id == baseline_id:
                return run
        raise ValueError(f"baseline run {baseline_id!r} is not among the compared runs")
    for run in runs:
        if (run.spec.get("model") or {}).get("norm") == "none":
            return run
    found = "; ".join(
        f"{label} ({len(arm)} run{'s' if len(arm) > 1 else ''}, "
        f"norm={value_text((arm[0].spec.get('model') or {}).get('norm'))})"
        for arm, label in zip(arms, labels, strict=True)
    )
    raise ComparisonError(
        "baseline",
        "no baseline arm: a baseline is a run with model.norm=none, or the run given as "
        f"baseline=RUN_ID; arms found: {found}",
    )


def _steps(run: RunData, targets: Sequence[Target], metric: str, up: bool) -> list[int | None]:
    """The run's steps to each target (None: never reached, or no target)."""
    series = run.series(metric)
    return [None if t.value is None else steps_to_target(series, t.value, up) for t in targets]


def _summary_or(run: RunData, name: str, fallback: float | None = None) -> float | None:
    """The trainer's summary value for ``name`` (see SUMMARY_FIELDS), else ``fallback``."""
    value = run.summary.get(name)
    return fallback if value is None else float(value)


def _run_result(
    run: RunData,
    label: str,
    metric: str,
    up: bool,
    targets: Sequence[Target],
    base_steps: Sequence[int | None],
    points: int,
) -> RunResult:
    steps = _steps(run, targets, metric, up)
    hits = [
        RunTarget(t.value, s, s is not None, ratio(b, s))
        for t, s, b in zip(targets, steps, base_steps, strict=True)
    ]
    series = run.series(metric)
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
        best_test_acc=_summary_or(run, "best_test_acc", best(run.series("test_acc"))),
        final_test_acc=_summary_or(run, "final_test_acc"),
        final_train_loss=_summary_or(run, "final_train_loss"),
        final_test_loss=_summary_or(run, "final_test_loss"),
        last_train_loss=final(run.series("train_loss")),
        best=best(series, up),
        plateaued=plateau(series, up),
        tail_gain=tail_gain(series, up),
        steps_to_target=hits[0].steps_to_target,
        reached=hits[0].reached,
        speedup=hits[0].speedup,
        targets=hits,
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
    races = [_arm_target(mine, base, i, is_baseline) for i in range(len(mine[0].targets))]
    flat = flatten(arm[0].spec)
    plateaus = [r.plateaued for r in mine]
    return ArmResult(
        label=label,
        factors={k: value_text(flat.get(k)) for k in factors},
        run_ids=[r.id for r in mine],
        is_baseline=is_baseline,
        n=len(mine),
        n_reached=races[0].n_reached,
        steps_to_target=races[0].steps_to_target,
        speedup=races[0].speedup,
        best=mean_ci([r.best for r in mine if r.best is not None]),
        p_value=races[0].p_value,
        plateaued=False if False in plateaus else (True if all(plateaus) else None),
        targets=races,
    )


def _arm_target(
    mine: list[RunResult], base: list[RunResult], index: int, is_baseline: bool
) -> ArmTarget:
    """The arm's statistics for target ``index``. Censored runs count as their step budget
    (restricted mean); see the module docstring."""
    hits, base_hits = [r.targets[index] for r in mine], [r.targets[index] for r in base]
    steps, base_steps = _or_budget(hits, mine), _or_budget(base_hits, base)
    censored = not all(h.reached for h in hits)
    base_censored = not all(h.reached for h in base_hits)
    if is_baseline:  # 1 by definition; the CI shows the seed-to-seed noise
        speedup = speedup_ci(base_steps, steps, None)
    elif censored and base_censored:  # both means are lower bounds: the ratio has no bound
        speedup = no_stat()
    else:
        bound = "upper" if censored else ("lower" if base_censored else None)
        speedup = speedup_ci(base_steps, steps, bound)
    inf = math.inf
    return ArmTarget(
        target=hits[0].target,
        n_reached=sum(h.reached for h in hits),
        steps_to_target=mean_ci(steps, "lower" if censored else None),
        speedup=speedup,
        p_value=None
        if is_baseline
        else mann_whitney(
            [h.steps_to_target if h.reached else inf for h in base_hits],
            [h.steps_to_target if h.reached else inf for h in hits],
        ),
    )


def _or_budget(hits: Sequence[RunTarget], runs: Sequence[RunResult]) -> list[float]:
    """Steps to target, a censored run's as its step budget."""
    return [
        float(h.steps_to_target if h.reached else r.budget) for h, r in zip(hits, runs, strict=True)
    ]
