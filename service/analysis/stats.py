"""Statistics over an arm's seeds: bootstrap confidence intervals and a rank test.

Every statistic is a dict ``{"mean", "ci_low", "ci_high", "bound"}``; ``bound`` says what the
mean is when censored values entered it (``"lower"``/``"upper"``: a bound, not an estimate;
see ``service.analysis.compare``). The bootstrap's rng is seeded, so the same input always
gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

Stat = dict[str, Any]


def bootstrap_ci(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*groups)``, each group resampled independently.

    ``statistic`` takes one (resamples × n_i) array per group and returns one value per row.
    """
    rng = np.random.default_rng(seed)
    draws = [rng.choice(np.asarray(s, float), size=(resamples, len(s))) for s in samples]
    values = statistic(*draws)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def no_stat() -> Stat:
    return {"mean": None, "ci_low": None, "ci_high": None, "bound": None}


def mean_ci(values: Sequence[float], bound: str | None = None) -> Stat:
    """The mean of ``values`` and its bootstrap CI (all None when there are no values)."""
    if not values:
        return no_stat()
    lo, hi = bootstrap_ci([values], lambda a: a.mean(axis=1))
    return {"mean": float(np.mean(values)), "ci_low": lo, "ci_high": hi, "bound": bound}


def speedup_ci(baseline: Sequence[float], arm: Sequence[float], bound: str | None) -> Stat:
    """Speed-up of an arm = mean(baseline steps) ÷ mean(arm steps), bootstrap CI of that ratio."""
    if not baseline or not arm:
        return no_stat()
    # An arm that is at the target at step 0 (a target at chance) has a mean, or resamples,
    # of 0 steps: the ratio is inf (or nan for 0/0), which the JSON output reports as null.
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = bootstrap_ci([baseline, arm], lambda b, a: b.mean(axis=1) / a.mean(axis=1))
        mean = np.mean(baseline) / np.mean(arm)
    return {"mean": float(mean), "ci_low": lo, "ci_high": hi, "bound": bound}


def mann_whitney(baseline: Sequence[float], arm: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value on steps-to-target (censored values given as +inf).

    None when it says nothing: an empty group, or every value tied (e.g. all censored).
    """
    values = list(baseline) + list(arm)
    if not baseline or not arm or len(set(values)) == 1:
        return None
    # Rank-based: +inf ranks above every finite value, ties share a rank.
    p = stats.mannwhitneyu(arm, baseline, alternative="two-sided").pvalue
    return float(p) if math.isfinite(p) else None
