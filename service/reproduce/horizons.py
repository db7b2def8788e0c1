"""Speed-ups that do not hide their horizon: several targets, several horizons, one set of runs.

"Steps to reach the baseline's best accuracy" depends on how long the baseline ran: its best
sits near its last step while it is still improving, so a longer horizon moves the target and
the speed-up with it. Two tables make that visible, both computed from the test-accuracy curves
of ONE long run per arm and seed (nothing is trained again):

- :func:`target_table`: steps-to-target for the baseline's best and fractions of it
  (:data:`TARGET_FRACTIONS`: 100, 99, 95, 90 %); targets below the best are reached on the
  steep part of the curve, where a longer horizon changes little.
- :func:`horizon_table`: the curves truncated at each horizon (:func:`horizons_for`: 6, 20 and
  100 % of the run, i.e. 3k, 10k and 50k steps of the paper's 50k), the target re-derived from
  the truncated baseline, and whether the baseline had plateaued by then.

Plateau (``service.analysis.runs.plateau``): a baseline seed has plateaued at a horizon when
the last ``PLATEAU_TAIL`` (20 %) of its evaluations improved its best test accuracy by at most
``PLATEAU_TOLERANCE`` (1 %, relative) over the best before them; the baseline has plateaued when
every seed has. Only then is "the baseline's best" a property of the baseline, not of the
horizon.

Conventions are the comparison layer's (``service.analysis.compare``): target = the lowest of
the baseline seeds' best values, steps-to-target = the first evaluation at or above it, a run
that never reaches it counts as the horizon (a censored value: the arm's mean steps is a lower
bound and its speed-up an upper bound), bootstrap CIs from ``service.analysis.stats``.
Pure functions on ``[[step, value], ...]`` curves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from service.analysis.runs import best, clean, plateau, steps_to_target
from service.analysis.stats import mean_ci, speedup_ci

TARGET_FRACTIONS = (1.0, 0.99, 0.95, 0.90)  # of the baseline's best test accuracy
HORIZON_FRACTIONS = (0.06, 0.2, 1.0)  # of the run: 3k, 10k, 50k steps of the paper's 50k

Curve = Sequence[Sequence[float]]  # [[step, value], ...] as GET /compare returns curves


def truncate(curve: Curve, horizon: int) -> list[tuple[int, float]]:
    """The curve as a run stopped at ``horizon`` would have logged it."""
    return [(s, v) for s, v in clean(curve) if s <= horizon]


def horizons_for(steps: int, eval_every: int) -> list[int]:
    """:data:`HORIZON_FRACTIONS` of a run of ``steps``, on its evaluation grid, distinct."""
    out: list[int] = []
    for fraction in HORIZON_FRACTIONS:
        horizon = max(eval_every, round(steps * fraction / eval_every) * eval_every)
        horizon = min(horizon, steps)
        if horizon not in out:
            out.append(horizon)
    return out


def baseline_best(curves: Sequence[Curve]) -> float | None:
    """The lowest of the baseline seeds' best values: every seed reaches it."""
    bests = [b for b in (best(c) for c in curves) if b is not None]
    return min(bests) if bests else None


def race(
    baseline: Sequence[Curve], bn: Sequence[Curve], target: float, budget: int
) -> dict[str, Any]:
    """Steps to ``target`` for each arm (censored runs count as ``budget``) and the speed-up
    mean(baseline steps) ÷ mean(BN steps), with bootstrap CIs and the censoring bound."""
    base_steps = [steps_to_target(c, target) for c in baseline]
    bn_steps = [steps_to_target(c, target) for c in bn]
    base_censored = any(s is None for s in base_steps)
    bn_censored = any(s is None for s in bn_steps)
    base_values = [float(budget if s is None else s) for s in base_steps]
    bn_values = [float(budget if s is None else s) for s in bn_steps]
    if base_censored and bn_censored:
        bound: str | None = "both"
    else:
        bound = "upper" if bn_censored else ("lower" if base_censored else None)
    speedup = speedup_ci(base_values, bn_values, None if bound == "both" else bound)
    # Both means lower bounds (their ratio bounds nothing), or a target met at step 0 by BN
    # (a ratio over 0): no speed-up, as the comparison's JSON gives it.
    if bound == "both" or not all(
        x is not None and math.isfinite(x) for x in (speedup["mean"], *_ends(speedup))
    ):
        speedup = {"mean": None, "ci_low": None, "ci_high": None, "bound": None}
    return {
        "target": target,
        "baseline_steps": mean_ci(base_values, "lower" if base_censored else None),
        "bn_steps": mean_ci(bn_values, "lower" if bn_censored else None),
        "speedup": speedup,
        "baseline_n_reached": sum(s is not None for s in base_steps),
        "bn_n_reached": sum(s is not None for s in bn_steps),
        "n": len(bn_steps),
    }


def _ends(stat: dict[str, Any]) -> tuple[Any, Any]:
    return stat["ci_low"], stat["ci_high"]


def target_table(
    baseline: Sequence[Curve], bn: Sequence[Curve], budget: int
) -> list[dict[str, Any]]:
    """One :func:`race` per target of :data:`TARGET_FRACTIONS` (empty without a baseline)."""
    top = baseline_best(baseline)
    if top is None:
        return []
    return [race(baseline, bn, top * f, budget) | {"fraction": f} for f in TARGET_FRACTIONS]


def baseline_plateaued(baseline: Sequence[Curve]) -> bool | None:
    """Every baseline seed has plateaued (see the module docstring); None when unknown."""
    flags = [plateau(c) for c in baseline]
    if not flags or any(f is None for f in flags):
        return None
    return all(flags)


def horizon_table(
    baseline: Sequence[Curve], bn: Sequence[Curve], horizons: Sequence[int]
) -> list[dict[str, Any]]:
    """For each horizon: the curves cut there, the target re-derived from the cut baseline,
    the race to it, and whether the cut baseline had plateaued."""
    rows = []
    for horizon in horizons:
        base_cut = [truncate(c, horizon) for c in baseline]
        bn_cut = [truncate(c, horizon) for c in bn]
        top = baseline_best(base_cut)
        if top is None:
            continue
        rows.append(
            race(base_cut, bn_cut, top, horizon)
            | {"horizon": horizon, "baseline_plateaued": baseline_plateaued(base_cut)}
        )
    return rows
