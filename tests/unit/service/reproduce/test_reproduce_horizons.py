"""Steps-to-target at several targets and horizons, and the plateau rule, on hand-built curves
whose answers can be worked out by hand."""

from __future__ import annotations

import pytest

from service.reproduce import horizons as h


def curve(values: list[float], every: int = 100) -> list[list[float]]:
    """Evaluations at steps 0, every, 2·every, ..."""
    return [[i * every, v] for i, v in enumerate(values)]


# Baseline: rises until step 600, then flat at 0.80 (plateaued by 1,000).
BASE = [curve([0.1, 0.4, 0.6, 0.7, 0.75, 0.78, 0.80, 0.80, 0.80, 0.80, 0.80])] * 2
# BN: 0.73 at step 100, 0.77 at 200, 0.80 at 300, 0.85 at 500.
BN = [curve([0.1, 0.73, 0.77, 0.80, 0.82, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85])] * 2


def test_target_table_several_fractions_of_the_baselines_best() -> None:
    table = h.target_table(BASE, BN, budget=1000)
    assert [row["fraction"] for row in table] == [1.0, 0.99, 0.95, 0.90]
    assert [row["target"] for row in table] == pytest.approx([0.80, 0.792, 0.76, 0.72])
    # 0.80: baseline at 600, BN at 300 → 2×; 0.792: 600 vs 300; 0.76: 500 vs 200; 0.72: 400/100.
    assert [row["baseline_steps"]["mean"] for row in table] == [600, 600, 500, 400]
    assert [row["bn_steps"]["mean"] for row in table] == [300, 300, 200, 100]
    assert [row["speedup"]["mean"] for row in table] == pytest.approx([2.0, 2.0, 2.5, 4.0])
    assert all(row["bn_n_reached"] == row["n"] == 2 for row in table)
    assert all(row["speedup"]["bound"] is None for row in table)


def test_the_target_is_the_lowest_best_over_baseline_seeds() -> None:
    other = curve([0.1, 0.5, 0.7])
    assert h.baseline_best([curve([0.1, 0.9]), other]) == 0.7
    assert h.baseline_best([]) is None
    assert h.target_table([], BN, 1000) == []


def test_a_censored_bn_run_counts_as_the_budget_and_bounds_the_speedup() -> None:
    slow = curve([0.1, 0.2, 0.3])  # never reaches 0.5
    race = h.race([curve([0.1, 0.5, 0.6])], [slow, curve([0.1, 0.5])], 0.5, budget=200)
    assert race["bn_steps"] == pytest.approx(race["bn_steps"] | {"mean": 150.0})
    assert race["bn_steps"]["bound"] == "lower" and race["speedup"]["bound"] == "upper"
    assert race["speedup"]["mean"] == pytest.approx(100 / 150)
    assert race["bn_n_reached"] == 1


def test_both_arms_censored_give_no_speedup() -> None:
    slow = [curve([0.1, 0.2])]
    race = h.race(slow, slow, 0.9, budget=100)
    assert race["speedup"]["mean"] is None


def test_horizons_are_fractions_of_the_run_on_the_evaluation_grid() -> None:
    assert h.horizons_for(50_000, 500) == [3000, 10_000, 50_000]  # the paper's 3k, 10k, 50k
    assert h.horizons_for(20_000, 200) == [1200, 4000, 20_000]
    assert h.horizons_for(60, 20) == [20, 60]  # too short for three distinct horizons


def test_truncate_keeps_what_a_shorter_run_would_have_logged() -> None:
    assert h.truncate(curve([0.1, 0.2, 0.3, 0.4]), 200) == [(0, 0.1), (100, 0.2), (200, 0.3)]


def test_the_horizon_table_rederives_the_target_from_the_cut_baseline() -> None:
    short, middle, full = h.horizon_table(BASE, BN, [300, 500, 1000])
    # Cut at 300: baseline best 0.70 at step 300; BN is at 0.73 by 100 → 3×. Four evaluations
    # leave one in the last 20 %: too few to tell a plateau.
    assert short["horizon"] == 300 and short["target"] == pytest.approx(0.70)
    assert short["speedup"]["mean"] == pytest.approx(3.0)
    assert short["baseline_plateaued"] is None
    # Cut at 500: best 0.78 at 500, first ≥ 0.78: baseline 500, BN 300 (0.80); still rising.
    assert middle["target"] == pytest.approx(0.78)
    assert middle["speedup"]["mean"] == pytest.approx(500 / 300)
    assert middle["baseline_plateaued"] is False
    # Full: target 0.80 at 600 vs 300 → 2×; the last 20 % (800-1000) added nothing: plateaued.
    assert full["target"] == pytest.approx(0.80) and full["speedup"]["mean"] == pytest.approx(2.0)
    assert full["baseline_plateaued"] is True


def test_plateau_needs_every_baseline_seed() -> None:
    rising = curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    assert h.baseline_plateaued(BASE) is True
    assert h.baseline_plateaued([BASE[0], rising]) is False
    assert h.baseline_plateaued([curve([0.1])]) is None  # too short to tell
    assert h.baseline_plateaued([]) is None


def test_a_target_met_at_step_zero_gives_no_speedup() -> None:
    at_chance = [curve([0.1, 0.1, 0.1])]
    race = h.race(at_chance, at_chance, 0.1, budget=200)
    assert race["baseline_steps"]["mean"] == race["bn_steps"]["mean"] == 0
    assert race["speedup"]["mean"] is None  # 0 / 0, not nan in the report
