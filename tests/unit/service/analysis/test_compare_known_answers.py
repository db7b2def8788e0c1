"""The compare maths on hand-built numbers whose answers are known without running the code
under test: steps to a target at its boundary, speed-ups, targets for a loss, and the exact
Mann-Whitney p-values of small fully separated groups (two-sided p = 2 / C(n1 + n2, n1))."""

from __future__ import annotations

import math

import pytest

from service.analysis.runs import steps_to_target
from service.analysis.stats import mann_whitney, mean_ci, speedup_ci
from service.analysis.targets import fraction_target

SERIES = [(0, 0.1), (100, 0.4), (200, 0.5), (300, 0.45), (400, 0.7)]
LOSS = [(0, 2.3), (100, 1.5), (200, 1.0), (300, 1.2), (400, 0.8)]


@pytest.mark.parametrize(
    ("target", "step"),
    [(0.1, 0), (0.4, 100), (0.41, 200), (0.5, 200), (0.6, 400), (0.7, 400), (0.71, None)],
)
def test_steps_to_target_counts_the_step_that_equals_it(target: float, step: int | None) -> None:
    assert steps_to_target(SERIES, target) == step


@pytest.mark.parametrize(("target", "step"), [(2.3, 0), (1.0, 200), (0.9, 400), (0.79, None)])
def test_steps_to_a_loss_target(target: float, step: int | None) -> None:
    assert steps_to_target(LOSS, target, higher_is_better=False) == step


def test_fraction_targets() -> None:
    """90 % of an accuracy of 0.8 is 0.72; for a loss of 0.5 the 'worse' value is 0.5 ÷ 0.9."""
    assert fraction_target(0.8, 0.9, up=True) == pytest.approx(0.72)
    assert fraction_target(0.5, 0.9, up=False) == pytest.approx(0.5 / 0.9)
    assert fraction_target(0.5, 1.0, up=False) == 0.5
    assert fraction_target(0.0, 0.9, up=True) is None


def test_speedup_is_baseline_over_arm() -> None:
    """Baseline 400 and 800 steps (mean 600), arm 100 and 200 (mean 150): 4× faster; with no
    spread in either group the interval is the point."""
    assert speedup_ci([400, 800], [100, 200], None)["mean"] == pytest.approx(4.0)
    same = speedup_ci([300, 300, 300], [100, 100, 100], "upper")
    assert same == {"mean": 3.0, "ci_low": 3.0, "ci_high": 3.0, "bound": "upper"}
    assert mean_ci([2.0, 4.0])["mean"] == 3.0


@pytest.mark.parametrize(
    ("baseline", "arm", "p"),
    [
        ([800, 900], [100, 200], 2 / math.comb(4, 2)),  # 1/3
        ([700, 800, 900], [100, 200, 300], 2 / math.comb(6, 3)),  # 0.1
        ([100, 200, 300], [700, 800, 900], 2 / math.comb(6, 3)),  # two-sided: either way
    ],
)
def test_mann_whitney_exact_p_of_separated_groups(
    baseline: list[float], arm: list[float], p: float
) -> None:
    assert mann_whitney(baseline, arm) == pytest.approx(p)


def test_mann_whitney_says_nothing_without_information() -> None:
    inf = math.inf
    assert mann_whitney([inf, inf], [inf, inf]) is None  # every run censored: all tied
    assert mann_whitney([], [100.0]) is None
