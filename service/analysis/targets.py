"""Which values a comparison races to, and a label for each that says exactly how it was chosen.

A comparison measures steps-to-target for one or more *targets*, in this order:

1. values given by the user (``target``), as given;
2. fractions of the baseline's best (``target_fractions``, each in (0, 1]): ``f × best`` for
   a metric where higher is better (accuracy), ``best ÷ f`` for one where lower is better
   (a loss): either way a target worse than the best by the factor ``f``.

With neither, the fractions are DEFAULT_FRACTIONS: the baseline's best itself (the paper's
measure), then 99, 95 and 90 % of it. The first target is the *primary* one, whose numbers the
comparison also reports at the top level (``target``, ``steps_to_target``, ``speedup``).

The baseline's best is :func:`baseline_best`: over several baseline seeds, the *lowest* of
their best values (the highest best loss), so that every baseline seed reaches it; its label
names that rule and the seed it came from. A target near the best depends on how long the
baseline ran (it sits near the baseline's last steps); the lower ones depend on it less, and
``service.analysis.runs.plateau`` says whether the baseline had stopped improving.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.analysis.runs import RunData, best
from service.vocab import short_id

DEFAULT_FRACTIONS = (1.0, 0.99, 0.95, 0.9)
MAX_TARGETS = 8  # values and fractions together


class TargetError(ValueError):
    """A target request that cannot be honoured; ``field`` is the query field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class BaselineBest:
    """The baseline arm's best value as the default target uses it (see the module docstring)."""

    value: float
    run_id: str  # the run whose best it is
    seed: int | None
    n_runs: int  # baseline runs that logged the metric
    label: str  # e.g. "the lowest of the 3 baseline seeds' best test_acc (seed 2's)"


@dataclass
class Target:
    """One value to race to. ``source``: "given", "baseline" (a fraction of the baseline's
    best) or "none" (a fraction, but the baseline logged no values). ``label`` starts with
    the value and says how it was chosen."""

    value: float | None
    source: str
    fraction: float | None
    label: str


def baseline_best(arm: Sequence[RunData], metric: str, up: bool) -> BaselineBest | None:
    """The lowest per-seed best over the baseline arm (highest for a loss); None without values."""
    bests = [(b, r) for r in arm if (b := best(r.series(metric), up)) is not None]
    if not bests:
        return None
    value, run = (min if up else max)(bests, key=lambda pair: pair[0])
    who = f"seed {run.seed}" if run.seed is not None else f"run {short_id(run.id)}"
    if len(bests) == 1:
        label = f"the baseline's best {metric} ({who})"
    else:
        lowest = "lowest" if up else "highest"
        label = (
            f"the {lowest} of the {len(bests)} baseline seeds' best {metric} ({who}'s), "
            "so every baseline seed reaches it"
        )
    return BaselineBest(value, run.id, run.seed, len(bests), label)


def fraction_target(base: float, fraction: float, up: bool) -> float | None:
    """``fraction × base`` (higher is better) or ``base ÷ fraction`` (lower is better); None
    when ``base`` is not positive (a fraction of it would not be a worse value)."""
    if base <= 0:
        return None
    return base * fraction if up else base / fraction


def choose_targets(
    values: Sequence[float],
    fractions: Sequence[float] | None,
    base: BaselineBest | None,
    metric: str,
    up: bool,
) -> list[Target]:
    """The targets in order (see the module docstring); raises TargetError on a bad request."""
    values = list(dict.fromkeys(float(v) for v in values))
    if fractions is None:
        fractions = () if values else DEFAULT_FRACTIONS
    fractions = list(dict.fromkeys(float(f) for f in fractions))
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise TargetError("target_fractions", f"target_fractions: {bad[0]:g} is not in (0, 1]")
    if not values and not fractions:
        raise TargetError("target", "no target: give target values or target_fractions")
    if len(values) + len(fractions) > MAX_TARGETS:
        raise TargetError(
            "target_fractions" if fractions else "target",
            f"at most {MAX_TARGETS} targets (values and fractions together), "
            f"got {len(values) + len(fractions)}",
        )
    targets = [Target(v, "given", None, f"{v:.4g}: given") for v in values]
    return targets + [_fraction(f, base, metric, up) for f in fractions]


def _fraction(fraction: float, base: BaselineBest | None, metric: str, up: bool) -> Target:
    if base is None:
        return Target(None, "none", fraction, f"none: the baseline arm logged no {metric}")
    value = fraction_target(base.value, fraction, up)
    if fraction == 1.0:
        return Target(base.value, "baseline", 1.0, f"{base.value:.4g}: {base.label}")
    if value is None:
        why = f"none: {fraction:g} of a best {metric} of {base.value:.4g} is not a worse value"
        return Target(None, "none", fraction, why)
    how = f"{fraction:g} × {base.value:.4g}" if up else f"{base.value:.4g} ÷ {fraction:g}"
    return Target(value, "baseline", fraction, f"{value:.4g} = {how}, {base.label}")
