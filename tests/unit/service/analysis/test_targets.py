"""Several targets per comparison, how each is labelled, the plateau check, and the summary
fields a comparison shows (service.analysis.targets, .runs, .compare)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from bncore.events import SUMMARY_FIELDS
from service.analysis.compare import ComparisonError, compare
from service.analysis.results import RunResult
from service.analysis.runs import RunData, plateau, tail_gain
from service.analysis.targets import (
    DEFAULT_FRACTIONS,
    MAX_TARGETS,
    TargetError,
    choose_targets,
)


def rising(top: float, tau: float, steps: int = 1000, every: int = 50) -> list:
    """test_acc = top × (1 - exp(-step / tau)), evaluated every `every` steps."""
    return [(s, top * (1 - math.exp(-s / tau))) for s in range(0, steps + 1, every)]


def make(rid: str, curve: list, norm: str = "none", seed: int = 0, **kw) -> RunData:
    spec = {"model": {"norm": norm}, "optimizer": {"lr": 0.5}, "steps": 1000, "seed": seed}
    metrics = {"test_acc": curve, "train_loss": [(s, 2.0 / (1 + s)) for s in range(1, 1001)]}
    return RunData(id=rid, name=rid, spec=spec, metrics=metrics, **kw)


def first_at_or_above(curve: list, value: float) -> int | None:
    return next((s for s, v in curve if v >= value), None)


# ---------------------------------------------------------------- several targets


def test_default_targets_are_the_baseline_best_and_99_95_90_percent_of_it():
    base_curve, bn_curve = rising(0.9, 150), rising(0.95, 40)
    c = compare([make("plain", base_curve), make("bn", bn_curve, norm="batchnorm")])
    best = max(v for _, v in base_curve)
    assert [t.fraction for t in c.targets] == list(DEFAULT_FRACTIONS)
    assert [t.value for t in c.targets] == pytest.approx([f * best for f in DEFAULT_FRACTIONS])
    assert c.target == c.targets[0].value == best and c.target_source == "baseline"
    plain, bn = c.runs
    for hit_plain, hit_bn, t in zip(plain.targets, bn.targets, c.targets, strict=True):
        assert hit_plain.target == hit_bn.target == t.value
        assert hit_plain.steps_to_target == first_at_or_above(base_curve, t.value)
        assert hit_bn.steps_to_target == first_at_or_above(bn_curve, t.value)
        assert hit_bn.speedup == pytest.approx(hit_plain.steps_to_target / hit_bn.steps_to_target)
    # The primary target's numbers are also the top-level ones.
    assert (bn.steps_to_target, bn.speedup) == (
        bn.targets[0].steps_to_target,
        bn.targets[0].speedup,
    )
    arm = c.arms[1]
    assert [a.target for a in arm.targets] == [t.value for t in c.targets]
    assert arm.speedup == arm.targets[0].speedup and arm.n_reached == arm.targets[0].n_reached
    # A lower target is reached sooner by both, so its speed-up is a different number.
    assert plain.targets[3].steps_to_target < plain.targets[0].steps_to_target
    json.dumps(c.to_dict(), allow_nan=False)


def test_given_values_come_first_then_given_fractions():
    runs = [make("plain", rising(0.8, 100)), make("bn", rising(0.9, 30), norm="batchnorm")]
    c = compare(runs, target=[0.5, 0.7], target_fractions=[0.9])
    best = max(v for _, v in rising(0.8, 100))
    assert [(t.value, t.source, t.fraction) for t in c.targets] == [
        (0.5, "given", None),
        (0.7, "given", None),
        (pytest.approx(0.9 * best), "baseline", 0.9),
    ]
    assert c.target == 0.5 and c.target_label == "0.5: given"
    only_given = compare(runs, target=0.6)
    assert [t.value for t in only_given.targets] == [0.6]  # no default fractions then


def test_fractions_of_a_loss_are_the_best_divided_by_the_fraction():
    runs = [make("plain", rising(0.8, 100)), make("bn", rising(0.9, 30), norm="batchnorm")]
    c = compare(runs, metric="train_loss", target_fractions=[1.0, 0.5])
    best_loss = 2.0 / 1001
    assert [t.value for t in c.targets] == pytest.approx([best_loss, best_loss / 0.5])
    assert "÷ 0.5" in c.targets[1].label
    hit = c.runs[0].targets[1]
    assert hit.steps_to_target == 500  # 2 / (1 + s) <= 2 × 2 / 1001 first at s = 500


@pytest.mark.parametrize(
    ("values", "fractions", "field", "text"),
    [
        ([], [0.0], "target_fractions", "0 is not in (0, 1]"),
        ([], [1.5], "target_fractions", "1.5 is not in (0, 1]"),
        ([0.1] * 1 + [0.2, 0.3, 0.4, 0.5], [0.9, 0.8, 0.7, 0.6], "target_fractions", "at most"),
        ([], [], "target", "no target"),
    ],
)
def test_bad_target_requests_name_the_field(values, fractions, field, text):
    with pytest.raises(TargetError) as error:
        choose_targets(values, fractions, None, "test_acc", True)
    assert error.value.field == field and text in str(error.value)
    assert len(values) + len(fractions) <= MAX_TARGETS or "at most" in text
    runs = [make("plain", rising(0.8, 100))]
    with pytest.raises(ComparisonError) as via_compare:
        compare(runs, target=values or None, target_fractions=fractions)
    assert via_compare.value.field == field


# ---------------------------------------------------------------- the label says how


def test_target_label_names_the_lowest_best_over_the_baseline_seeds_and_its_seed():
    """Three baseline seeds whose bests are 0.318, 0.307 and 0.330: the target is 0.307,
    seed 1's best, and the label says it is the lowest of three, not "seed 0's best"."""
    tops = {0: 0.318, 1: 0.307, 2: 0.330}
    plain = [make(f"p{s}", rising(top, 50), seed=s) for s, top in tops.items()]
    c = compare(plain + [make("bn", rising(0.35, 10), norm="batchnorm")])
    best1 = max(v for _, v in rising(0.307, 50))
    assert c.target == best1 and c.baseline_id == "p0"
    assert c.baseline_best["run_id"] == "p1" and c.baseline_best["seed"] == 1
    assert c.baseline_best["n_runs"] == 3
    assert c.target_label.startswith(f"{best1:.4g}: the lowest of the 3 baseline seeds' best")
    assert "(seed 1's)" in c.target_label and "seed 0" not in c.target_label
    assert c.arms[0].n_reached == 3  # every baseline seed reaches it, as the label says
    assert c.targets[3].label.startswith(f"{0.9 * best1:.4g} = 0.9 × {best1:.4g}, the lowest")


def test_a_single_baseline_runs_label_says_so():
    c = compare([make("plain", rising(0.8, 100), seed=4)])
    assert c.target_label.endswith("the baseline's best test_acc (seed 4)")


# ---------------------------------------------------------------- plateau


def test_plateau_rule_on_curves():
    flat = rising(0.9, 50)  # at its top long before the last 20 %
    still_rising = [(s, 0.1 + 0.8 * s / 1000) for s in range(0, 1001, 50)]
    assert plateau(flat) is True and tail_gain(flat) == pytest.approx(0, abs=1e-6)
    assert plateau(still_rising) is False
    # Head best 0.70 (step 750); the tail reaches 0.9: a relative gain of 0.2 / 0.7.
    assert tail_gain(still_rising) == pytest.approx(0.2 / 0.7)
    assert plateau([(0, 0.1), (1000, 0.9)]) is None  # too few points to tell
    loss = [(s, 1.0 / (1 + s)) for s in range(1, 1001)]  # still falling by ~25 % at the end
    assert plateau(loss, higher_is_better=False) is False
    # A 0.5 % rise in the tail is within the 1 % tolerance.
    assert plateau([(0, 0.5), (100, 0.9), (900, 0.9), (1000, 0.9045)]) is True


def test_comparison_says_whether_the_baseline_had_plateaued_and_warns_if_not():
    bn = make("bn", rising(0.95, 20), norm="batchnorm")
    done = compare([make("plain", rising(0.9, 50)), bn])
    assert done.plateau["baseline"] is True and done.arms[0].plateaued is True
    assert not [w for w in done.warnings if "plateau" in w]
    assert "20%" in done.plateau["rule"] and done.plateau["tail"] == 0.2

    slow = compare([make("plain", rising(0.9, 2000)), bn])
    assert slow.plateau["baseline"] is False and slow.runs[0].plateaued is False
    assert any("had not plateaued" in w for w in slow.warnings)


# ---------------------------------------------------------------- one meaning per name


def test_fields_named_like_summary_fields_carry_the_summary_values():
    summary = {
        "best_test_acc": 0.91,
        "best_test_acc_step": 900,
        "final_test_acc": 0.905,
        "final_test_loss": 0.31,
        "final_train_loss": 0.6959,
        "train_acc_full": 0.93,
    }
    r = make("plain", rising(0.9, 100), summary=summary)
    result = compare([r]).runs[0]
    shared = [f.name for f in dataclasses.fields(RunResult) if f.name in SUMMARY_FIELDS]
    assert set(shared) == {"best_test_acc", "final_test_acc", "final_test_loss", "final_train_loss"}
    for name in shared:
        assert getattr(result, name) == summary[name], name
    assert result.last_train_loss == pytest.approx(2.0 / 1001)  # its own name, its own number
