"""Every verdict rule on hand-built numbers whose answer is known (worked out by hand below).

The numbers are written out literally, thresholds included, so a changed threshold or a rule
that drifts from its documented wording fails here: nothing is re-derived with the functions
under test. The thresholds themselves are pinned in test_thresholds_are_the_documented_ones.
"""

from __future__ import annotations

import pytest

from service.reproduce import verdicts as v
from service.reproduce.experiments import verdict_from_numbers
from service.reproduce.verdicts import (
    FAILS,
    HOLDS,
    UNSURE,
    arm_outcome,
    effect_verdict,
    explain_effect,
    verdict_faster_training,
    verdict_higher_learning_rates,
    verdict_inference_statistics,
    verdict_regularization,
    verdict_saturating,
    verdict_stable_distributions,
)


def stat(mean, low=None, high=None, bound=None) -> dict:
    """A {"mean", "ci_low", "ci_high", "bound"} as the comparison layer returns it; one seed
    when no interval is given (the CI collapses to the value)."""
    low = mean if low is None else low
    high = mean if high is None else high
    return {"mean": mean, "ci_low": low, "ci_high": high, "bound": bound}


def test_thresholds_are_the_documented_ones() -> None:
    """The values the report and docs/reproduction.md state; a change must be deliberate."""
    assert (v.CHANCE_ACC, v.NEAR_CHANCE_MARGIN, v.TRAINS_MARGIN) == (0.10, 0.05, 0.15)
    assert (v.MIN_SPEEDUP, v.MIN_STABILITY_FACTOR) == (2.0, 2.0)
    assert (v.MIN_INFERENCE_GAIN, v.MIN_GAP_REDUCTION, v.REACH_FRACTION) == (0.005, 0.02, 0.5)
    names = [name for name, _, _ in v.THRESHOLDS]
    assert names == [
        "MIN_SPEEDUP",
        "MIN_STABILITY_FACTOR",
        "REACH_FRACTION",
        "CHANCE_ACC",
        "NEAR_CHANCE_MARGIN",
        "TRAINS_MARGIN",
        "MIN_INFERENCE_GAIN",
        "MIN_GAP_REDUCTION",
        "OVERFIT_TRAIN_ACC",
        "OVERFIT_LOSS_RISE",
        "DROPOUT_MARGIN",
        "MIN_ACC_GAIN",
        "REPLICA_TOLERANCE",
        "PLATEAU_TAIL",
        "PLATEAU_TOLERANCE",
    ]
    assert (v.OVERFIT_TRAIN_ACC, v.OVERFIT_LOSS_RISE) == (0.98, 0.10)
    assert (v.DROPOUT_MARGIN, v.MIN_ACC_GAIN) == (0.01, 0.005)
    shown = {name: value for name, value, _ in v.THRESHOLDS}
    assert shown["MIN_SPEEDUP"] == "2×" and shown["REACH_FRACTION"] == "> 50% of seeds"
    assert shown["NEAR_CHANCE_MARGIN"] == "+0.05" and shown["MIN_INFERENCE_GAIN"] == "0.005"


# ---------------------------------------------------------------------------- the generic rule


@pytest.mark.parametrize(
    ("estimate", "low", "high", "expected"),
    [
        (3.0, 1.5, 4.0, HOLDS),  # big enough, CI excludes no-effect
        (2.0, 1.01, 3.0, HOLDS),  # exactly at the threshold counts
        (2.0, 1.0, 3.0, UNSURE),  # the CI touching "no effect" does not exclude it
        (3.0, 0.9, 4.0, UNSURE),  # big estimate, but the CI includes no effect
        (1.5, 1.2, 1.9, FAILS),  # real but too small: the whole CI is below the threshold
        (1.9, 1.2, 2.0, UNSURE),  # the CI's upper end reaching the threshold keeps it open
        (0.8, 0.5, 1.1, FAILS),  # no effect at all
        (1.8, 1.2, 2.5, UNSURE),  # CI straddles the threshold
        (None, None, None, UNSURE),
        (3.0, None, 4.0, UNSURE),  # an estimate without its interval decides nothing
    ],
)
def test_effect_verdict(estimate, low, high, expected) -> None:
    assert effect_verdict(estimate, low, high, threshold=2.0, null=1.0) == expected


def test_explain_effect_names_the_deciding_comparison() -> None:
    assert explain_effect(
        stat(-0.005, -0.027, 0.01995), FAILS, threshold=0.02, null=0.0, digits=4
    ) == (
        "CI upper end 0.0199 < 0.02"  # not "0.020 < 0.02"
    )
    held = explain_effect(stat(7.2, 5.7, 9.6), HOLDS, threshold=2.0, null=1.0, digits=2)
    assert held == "estimate 7.20 ≥ 2 and CI lower end 5.70 > 1"
    low = explain_effect(stat(1.8, 1.2, 2.5), UNSURE, threshold=2.0, null=1.0, digits=1)
    assert low == "estimate 1.8 < 2, but CI upper end 2.5 ≥ 2"
    wide = explain_effect(stat(3.0, 0.9, 4.0), UNSURE, threshold=2.0, null=1.0, digits=1)
    assert wide == "estimate 3.0 ≥ 2, but CI lower end 0.9 ≤ 1"
    assert explain_effect(stat(None), UNSURE, threshold=2.0, null=1.0, digits=1) == "no estimate"


# ---------------------------------------------------------------------------- 1. faster training


@pytest.mark.parametrize(
    ("speedup", "reached", "n", "target", "expected"),
    [
        (stat(5.0, 3.0, 7.0), 3, 3, 0.31, HOLDS),  # 5× ≥ 2× and the CI lies above 1×
        (stat(2.0, 1.1, 3.0), 3, 3, 0.31, HOLDS),  # exactly 2× counts
        (stat(1.2, 0.9, 1.5), 3, 3, 0.31, FAILS),  # the whole CI below 2×
        (stat(2.5, 0.8, 4.0), 3, 3, 0.31, UNSURE),  # big, but the CI includes 1×
        (stat(1.8, 1.2, 2.5), 3, 3, 0.31, UNSURE),  # the CI straddles 2×
        (stat(None), 0, 3, 0.31, FAILS),  # BN never got there
        (stat(None), 0, 0, 0.31, UNSURE),  # no BN runs at all
        (stat(5.0), 1, 1, 0.31, HOLDS),  # one seed: the CI is the value (5 > 1)
        (stat(5.0, 3.0, 7.0), 3, 3, None, HOLDS),  # no target given: nothing to check
    ],
)
def test_faster_training(speedup, reached, n, target, expected) -> None:
    assert verdict_faster_training(speedup, reached, n, target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (0.11, UNSURE),  # the baseline never left chance (0.10): a race to 0.11 says nothing
        (0.15, UNSURE),  # chance + 0.05 is still near chance (the limit is inclusive)
        (0.151, HOLDS),  # just above it, the same 5× speed-up decides
    ],
)
def test_faster_training_near_chance_target(target, expected) -> None:
    assert verdict_faster_training(stat(5.0, 3.0, 7.0), 3, 3, target) == expected


def test_faster_training_censored_speedup_is_only_an_upper_bound() -> None:
    # Some BN seeds never reached the target: the speed-up is at most this, so it can only
    # show that BN is NOT 2× faster (the bound below 2×), never that it is.
    assert verdict_faster_training(stat(1.5, 1.0, 2.0, "upper"), 2, 3, 0.31) == FAILS
    assert verdict_faster_training(stat(4.0, 2.0, 6.0, "upper"), 2, 3, 0.31) == UNSURE
    assert verdict_faster_training(stat(2.0, 2.0, 2.0, "upper"), 2, 3, 0.31) == UNSURE
    assert verdict_faster_training(stat(None, bound="upper"), 1, 3, 0.31) == UNSURE


# ---------------------------------------------------------------------------- 2. stable inputs


@pytest.mark.parametrize(
    ("stability", "expected"),
    [
        (stat(10.0, 6.0, 14.0), HOLDS),  # the baseline drifts 10× as much
        (stat(2.0, 1.5, 2.5), HOLDS),  # exactly twice, CI above 1
        (stat(1.1, 0.7, 1.5), FAILS),  # the CI ends below 2
        (stat(3.0, 0.9, 5.0), UNSURE),  # CI includes 1 (no difference)
        (stat(1.5, 1.2, 2.2), UNSURE),  # CI reaches 2
        (stat(None), UNSURE),  # no drift could be measured
    ],
)
def test_stable_distributions(stability, expected) -> None:
    assert verdict_stable_distributions(stability) == expected


# ---------------------------------------------------------------------------- 3. learning rates


@pytest.mark.parametrize(
    ("reached", "n", "expected"),
    [
        (3, 3, "reaches"),
        (2, 3, "reaches"),  # 2/3 > 1/2
        (3, 5, "reaches"),
        (1, 2, "mixed"),  # exactly half is not more than half
        (1, 3, "mixed"),
        (0, 3, "fails"),
        (0, 0, "fails"),  # no seeds reached it, because there were none
    ],
)
def test_arm_outcome(reached, n, expected) -> None:
    assert arm_outcome(reached, n) == expected


BASE = {0.5: "reaches", 2.5: "reaches", 15.0: "fails"}


@pytest.mark.parametrize(
    ("baseline", "bn", "expected"),
    [
        # BN reaches the target everywhere, the baseline fails at 30×: gained, nothing lost.
        (BASE, {0.5: "reaches", 2.5: "reaches", 15.0: "reaches"}, HOLDS),
        # BN fails exactly where the baseline fails: nothing gained.
        (BASE, BASE, FAILS),
        # BN gains 30× but loses 5×: not "tolerates higher rates" cleanly.
        (BASE, {0.5: "reaches", 2.5: "fails", 15.0: "reaches"}, UNSURE),
        # A mixed BN arm at the only rate that could decide it leaves it open.
        (BASE, {0.5: "reaches", 2.5: "reaches", 15.0: "mixed"}, UNSURE),
        # A mixed baseline arm at 30× leaves it open too, even though BN reaches it there.
        (
            {0.5: "reaches", 2.5: "reaches", 15.0: "mixed"},
            {0.5: "reaches", 2.5: "reaches", 15.0: "reaches"},
            UNSURE,
        ),
        # The baseline fails everywhere and BN reaches the target at one rate: holds.
        ({0.5: "fails", 2.5: "fails"}, {0.5: "fails", 2.5: "reaches"}, HOLDS),
        # Both fail everywhere: does not hold.
        ({0.5: "fails"}, {0.5: "fails"}, FAILS),
        # No rate in common, or none at all: nothing to compare.
        ({0.5: "fails"}, {2.5: "reaches"}, UNSURE),
        ({}, {}, UNSURE),
    ],
)
def test_higher_learning_rates(baseline, bn, expected) -> None:
    assert verdict_higher_learning_rates(baseline, bn) == expected


def test_higher_learning_rates_reads_learning_rates_as_json_text() -> None:
    """reproduction.json keeps the rates as text keys; the rule must read those too."""
    baseline = {"0.5": "reaches", "2.5": "reaches", "15.0": "fails"}
    bn = {"0.5": "reaches", "2.5": "reaches", "15.0": "reaches"}
    assert verdict_higher_learning_rates(baseline, bn) == HOLDS


# ---------------------------------------------------------------------------- 4. saturating


@pytest.mark.parametrize(
    ("baseline_best", "bn_best", "expected"),
    [
        (0.10, 0.45, HOLDS),  # baseline at chance, BN trains
        (0.15, 0.25, HOLDS),  # both limits are inclusive: ≤ 0.15 and ≥ 0.25
        (0.151, 0.45, UNSURE),  # the baseline just left "near chance" but does not train
        (0.10, 0.249, UNSURE),  # BN above chance but short of "trains"
        (0.30, 0.45, FAILS),  # the baseline trains too
        (0.25, 0.45, FAILS),  # exactly at "trains" counts as training
        (0.10, 0.12, FAILS),  # BN stays near chance: it did not help
        (0.10, 0.15, FAILS),  # BN exactly at the near-chance limit
        (0.20, 0.45, UNSURE),  # baseline neither stuck nor training
        (None, 0.45, UNSURE),
        (0.10, None, UNSURE),
    ],
)
def test_saturating(baseline_best, bn_best, expected) -> None:
    assert verdict_saturating(baseline_best, bn_best) == expected


# ---------------------------------------------------------------------------- 5. inference


@pytest.mark.parametrize(
    ("gain", "expected"),
    [
        (stat(0.02, 0.01, 0.03), HOLDS),  # two points, CI above 0
        (stat(0.005, 0.001, 0.009), HOLDS),  # exactly the half point counts
        (stat(0.0, -0.01, 0.004), FAILS),  # CI ends below 0.005
        (stat(-0.03, -0.05, -0.01), FAILS),  # batch statistics were better
        (stat(0.01, -0.01, 0.03), UNSURE),  # CI includes 0
        (stat(0.004, 0.001, 0.006), UNSURE),  # positive, small, CI reaching 0.005
        (stat(0.01, 0.0, 0.02), UNSURE),  # CI touching 0 does not exclude it
    ],
)
def test_inference_statistics(gain, expected) -> None:
    assert verdict_inference_statistics(gain) == expected


# ---------------------------------------------------------------------------- 6. regularization


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        (stat(0.05, 0.03, 0.07), HOLDS),  # BN's gap 5 points smaller
        (stat(0.02, 0.001, 0.04), HOLDS),  # exactly 2 points counts
        (stat(-0.02, -0.04, 0.0), FAILS),  # BN's gap is larger
        (stat(0.01, 0.005, 0.0199), FAILS),  # smaller gap, but not by 2 points
        (stat(0.03, -0.01, 0.06), UNSURE),  # CI includes 0
        (stat(0.015, 0.01, 0.02), UNSURE),  # CI's upper end reaches 0.02
    ],
)
def test_regularization(reduction, expected) -> None:
    assert verdict_regularization(reduction) == expected


# ---------------------------------------------------------------------------- saved numbers


SAVED = {  # experiment → (numbers as reproduction.json holds them, the verdict they give)
    "faster-training": (
        {"target": 0.31, "speedup": stat(6.0, 4.5, 8.0), "bn_n_reached": 3, "bn_n": 3},
        HOLDS,
    ),
    "faster-training-digits": (
        {"target": 0.12, "speedup": stat(6.0, 4.5, 8.0), "bn_n_reached": 3, "bn_n": 3},
        UNSURE,
    ),
    "stable-distributions": ({"stability": stat(1.2, 0.8, 1.6)}, FAILS),
    "higher-learning-rates": (
        {
            "baseline": {"0.5": "reaches", "15.0": "fails"},
            "bn": {"0.5": "reaches", "15.0": "reaches"},
        },
        HOLDS,
    ),
    "saturating-nonlinearities": (
        {"baseline_best": stat(0.30), "bn_best": stat(0.45), "depth": 10},
        FAILS,
    ),
    "inference-statistics": ({"gain": stat(0.01, -0.01, 0.03)}, UNSURE),
    "regularization": ({"reduction": stat(0.05, 0.03, 0.07)}, HOLDS),
    "fashion-faster-training": (
        {"target": 0.85, "speedup": stat(1.5, 1.2, 1.8), "bn_n_reached": 3, "bn_n": 3},
        FAILS,
    ),
    "fashion-stable-distributions": ({"stability": stat(5.0, 3.0, 8.0)}, HOLDS),
    "fashion-inference-statistics": ({"gain": stat(0.0, -0.001, 0.001)}, FAILS),
    "conv-table": (  # BN-x5 never reached the Baseline's max
        {"target": 0.8, "speedup": stat(1.0, 1.0, 1.0), "bn_n_reached": 0, "bn_n": 2},
        FAILS,
    ),
    "replica-statistics": ({"sync_delta": stat(0.001, -0.004, 0.006)}, HOLDS),
    "fashion-replica-statistics": ({"sync_delta": stat(-0.01, -0.02, 0.0)}, UNSURE),
    "fashion-regularization": (  # the plain arm did not overfit: the design cannot tell
        {
            "plain_overfits": False,
            "vs_dropout": stat(0.02, 0.01, 0.03),
            "vs_plain": stat(0.02, 0.01, 0.03),
        },
        UNSURE,
    ),
}


@pytest.mark.parametrize("experiment", sorted(SAVED))
def test_verdict_from_saved_numbers(experiment) -> None:
    numbers, expected = SAVED[experiment]
    assert verdict_from_numbers(experiment, numbers) == expected


def test_every_experiment_can_be_rechecked() -> None:
    from service.reproduce.experiments import EXPERIMENTS

    assert sorted(e.name for e in EXPERIMENTS) == sorted(SAVED)


def test_failed_runs_make_the_saved_verdict_inconclusive() -> None:
    numbers, _ = SAVED["regularization"]
    assert verdict_from_numbers("regularization", numbers | {"failed_runs": 1}) == UNSURE
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        verdict_from_numbers("nope", numbers)
