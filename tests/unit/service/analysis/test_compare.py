"""service.analysis.compare on hand-made metric series: every number here can be checked by hand."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import warnings

import pytest

from service.analysis.compare import ComparisonError, compare, metric_choices
from service.analysis.runs import RunData, steps_to_target
from service.analysis.table import to_csv

BASE_SPEC = {
    "name": "run",
    "dataset": "mnist1d",
    "model": {"arch": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid", "norm": "none"},
    "optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.0},
    "batch_size": 60,
    "steps": 1000,
    "eval_every": 100,
    "seed": 0,
}


def spec(norm: str = "none", lr: float = 0.5, seed: int = 0, **top) -> dict:
    s = copy.deepcopy(BASE_SPEC)
    s["model"]["norm"] = norm
    s["optimizer"]["lr"] = lr
    s["seed"] = seed
    s.update(top)
    return s


def acc_curve(reach_at: int | None, top: float = 0.9, steps: int = 1000) -> list:
    """test_acc every 100 steps: 0.1 until `reach_at`, `top` from then on (never if None)."""
    return [
        (s, top if reach_at is not None and s >= reach_at else 0.1)
        for s in range(0, steps + 1, 100)
    ]


def run(
    rid: str,
    reach_at: int | None,
    top: float = 0.9,
    norm: str = "none",
    lr: float = 0.5,
    seed: int = 0,
    **kw,
) -> RunData:
    metrics = {
        "test_acc": acc_curve(reach_at, top),
        "train_loss": [(s, 2.0 / (1 + s)) for s in range(1, 1001, 10)],
        "test_loss": [(s, 2.0 / (1 + s)) for s in range(0, 1001, 100)],
    }
    top_kw = {k: kw.pop(k) for k in ("dataset", "steps") if k in kw}
    return RunData(
        id=rid,
        name=rid,
        spec=spec(norm, lr, seed, **top_kw),
        metrics=metrics,
        wall_time=1.0,
        torch_version="2.13.0",
        device="cpu",
        **kw,
    )


# ---------------------------------------------------------------- steps_to_target


def test_steps_to_target_first_step_at_or_above():
    pts = [(0, 0.1), (100, 0.5), (200, 0.8), (300, 0.79), (400, 0.9)]
    assert steps_to_target(pts, 0.8) == 200
    assert steps_to_target(pts, 0.5) == 100
    assert steps_to_target(pts, 0.05) == 0


def test_steps_to_target_never_reached_is_none():
    assert steps_to_target([(0, 0.1), (100, 0.5)], 0.6) is None
    assert steps_to_target([], 0.6) is None


def test_steps_to_target_ignores_missing_values_and_sorts():
    pts = [(200, 0.9), (100, None), (150, float("nan")), (50, 0.2)]
    assert steps_to_target(pts, 0.5) == 200


def test_steps_to_target_lower_is_better():
    assert steps_to_target([(1, 2.0), (2, 1.0), (3, 0.5)], 1.0, higher_is_better=False) == 2


# ---------------------------------------------------------------- compare: runs


def test_baseline_defaults_to_first_no_norm_run_and_target_to_its_best():
    runs = [run("bn", 200, top=0.95, norm="batchnorm"), run("plain", 800, top=0.9)]
    c = compare(runs)
    assert c.baseline_id == "plain"
    assert c.target == 0.9 and c.target_source == "baseline"
    by = {r.id: r for r in c.runs}
    assert by["plain"].steps_to_target == 800
    assert by["bn"].steps_to_target == 200
    assert by["bn"].speedup == pytest.approx(4.0)
    assert by["plain"].speedup == pytest.approx(1.0)
    assert by["bn"].best_test_acc == 0.95  # from its evaluations: it has no summary yet
    assert by["bn"].final_test_acc is None  # a summary field: only the trainer's value


def test_no_baseline_arm_is_an_error_naming_the_arms_unless_a_baseline_is_given():
    runs = [run("a", 500, norm="batchnorm"), run("b", 200, norm="batchnorm", lr=1.0)]
    with pytest.raises(ComparisonError) as error:
        compare(runs)
    assert error.value.field == "baseline"
    message = str(error.value)
    assert "model.norm=none" in message and "baseline=RUN_ID" in message
    assert "lr=0.5 (1 run, norm=batchnorm); lr=1.0 (1 run, norm=batchnorm)" in message
    with pytest.raises(ComparisonError, match="arms found: all runs"):
        compare([run("solo", 300, norm="batchnorm")])
    c = compare(runs, baseline_id="b")
    assert c.baseline_id == "b"
    assert {r.id: r.speedup for r in c.runs} == {"a": 0.4, "b": 1.0}
    with pytest.raises(ValueError, match="not among the compared runs"):
        compare(runs, baseline_id="nope")


def test_unknown_metric_is_an_error_naming_the_valid_choices():
    runs = [run("plain", 800), run("bn", 300, norm="batchnorm")]
    runs[1].metrics["grad_norm"] = [(1, 0.5)]
    with pytest.raises(ComparisonError) as error:
        compare(runs, metric="test_ac")
    assert error.value.field == "metric"
    assert "'test_ac'" in str(error.value)
    choices = str(error.value).split(": ", 1)[1].split(", ")
    assert choices == metric_choices(runs)
    assert {"test_acc", "train_loss", "test_loss", "grad_norm"} <= set(choices)
    assert compare(runs, metric="test_loss").metric == "test_loss"


def test_given_target_and_never_reached():
    runs = [run("plain", 800, top=0.9), run("bn", 300, top=0.97, norm="batchnorm")]
    c = compare(runs, target=0.95)
    by = {r.id: r for r in c.runs}
    assert c.target_source == "given"
    assert by["plain"].steps_to_target is None and not by["plain"].reached
    assert by["bn"].steps_to_target == 300
    assert by["bn"].speedup is None  # the baseline is censored: no ratio


def test_divergence_reported():
    diverged = run("hot", None, norm="none", lr=5.0, status="diverged", diverged_step=40)
    diverged.metrics["train_loss"] = [(1, 2.3), (20, 50.0), (40, float("nan"))]
    c = compare([run("plain", 600), diverged])
    hot = next(r for r in c.runs if r.id == "hot")
    assert hot.diverged and hot.diverged_step == 40
    assert hot.steps_to_target is None and hot.speedup is None
    assert hot.last_train_loss == 50.0  # the last finite per-step value
    assert hot.final_train_loss is None  # the trainer's summary field: none was sent
    json.dumps(c.to_dict(), allow_nan=False)


def test_curves_are_downsampled_and_json_serialisable():
    r = run("plain", 500)
    r.metrics["train_loss"] = [(s, 1.0 / s) for s in range(1, 5001)]
    c = compare([r], points=50)
    d = c.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["runs"][0]["id"] == "plain"
    curve = d["runs"][0]["curves"]["train_loss"]
    assert len(curve) <= 50 and curve[0] == [1, 1.0] and curve[-1] == [5000, 1 / 5000]
    assert set(d) >= {"metric", "target", "baseline_id", "runs", "arms", "warnings", "method"}


# ---------------------------------------------------------------- compare: arms


def seeded_runs():
    """Baseline arm (3 seeds) reaches 0.9 at 700/800/900; BN arm at 100/200/300 (one never)."""
    plain = [run(f"p{s}", at, norm="none", seed=s) for s, at in enumerate([700, 800, 900])]
    bn = [run(f"b{s}", at, norm="batchnorm", seed=s) for s, at in enumerate([100, 200, 300])]
    return plain + bn


def test_seed_grouping_labels_and_counts():
    c = compare(seeded_runs())
    assert [a.label for a in c.arms] == ["norm=none", "norm=batchnorm"]
    assert [a.n for a in c.arms] == [3, 3]
    assert c.arms[0].is_baseline and not c.arms[1].is_baseline
    assert c.factors == ["model.norm"]
    assert {r.id: r.arm for r in c.runs}["b2"] == "norm=batchnorm"
    assert not [w for w in c.warnings if "differ" in w]  # no confounders


def test_labels_name_every_varying_factor():
    runs = [run("a", 500), run("b", 300, norm="batchnorm", lr=2.0), run("c", 300, lr=2.0)]
    labels = [a.label for a in compare(runs).arms]
    assert labels == ["norm=none, lr=0.5", "norm=batchnorm, lr=2.0", "norm=none, lr=2.0"]


def test_arm_statistics_and_ci():
    c = compare(seeded_runs())
    base, bn = c.arms
    assert base.steps_to_target["mean"] == pytest.approx(800)
    assert bn.steps_to_target["mean"] == pytest.approx(200)
    assert bn.speedup["mean"] == pytest.approx(4.0)
    for stat in (base.steps_to_target, bn.steps_to_target, bn.speedup):
        assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
        assert stat["bound"] is None
    assert bn.steps_to_target["ci_low"] >= 100 and bn.steps_to_target["ci_high"] <= 300
    assert bn.n_reached == 3
    # Every BN seed beats every baseline seed: the smallest two-sided p for 3 vs 3 is 0.1.
    assert bn.p_value == pytest.approx(0.1)
    assert base.p_value is None


def test_ci_is_deterministic():
    a, b = compare(seeded_runs()).to_dict(), compare(seeded_runs()).to_dict()
    assert a["arms"] == b["arms"]


def test_default_target_is_reached_by_every_baseline_seed():
    plain = [run("p0", 500, top=0.9, seed=0), run("p1", 600, top=0.85, seed=1)]
    c = compare(plain + [run("b0", 100, top=0.97, norm="batchnorm")])
    assert c.target == 0.85
    assert c.arms[0].n_reached == 2


def test_censored_runs_count_as_budget_and_mark_bounds():
    plain = [run(f"p{s}", 800, seed=s) for s in range(2)]
    bn = [run("b0", 200, norm="batchnorm", seed=0), run("b1", None, norm="batchnorm", seed=1)]
    c = compare(plain + bn)
    arm = c.arms[1]
    assert arm.n == 2 and arm.n_reached == 1
    assert arm.steps_to_target["mean"] == pytest.approx((200 + 1000) / 2)  # budget = 1000
    assert arm.steps_to_target["bound"] == "lower"
    assert arm.speedup["mean"] == pytest.approx(800 / 600)
    assert arm.speedup["bound"] == "upper"


def test_censored_on_both_sides_gives_no_speedup():
    plain = [run("p0", 800, seed=0), run("p1", None, seed=1)]
    bn = [run("b0", 200, norm="batchnorm", seed=0), run("b1", None, norm="batchnorm", seed=1)]
    c = compare(plain + bn, target=0.9)
    assert c.arms[1].speedup["mean"] is None
    assert c.arms[1].p_value == pytest.approx(1.0)  # U = n1·n2/2 after the continuity correction


def test_target_reached_at_step_zero_has_no_finite_speedup():
    """An arm at the target from its first evaluation took 0 steps: its speed-up is
    unbounded, and the JSON says null rather than a number (or an error)."""
    plain = [run(f"p{s}", 800, seed=s) for s in range(2)]
    bn = [run(f"b{s}", 0, norm="batchnorm", seed=s) for s in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        c = compare(plain + bn, target=0.9)
        arm = c.to_dict()["arms"][1]
    assert arm["steps_to_target"]["mean"] == 0
    assert arm["speedup"]["mean"] is None and arm["speedup"]["ci_high"] is None
    json.dumps(c.to_dict(), allow_nan=False)


def test_all_censored_test_is_none():
    plain = [run(f"p{s}", None, seed=s) for s in range(2)]
    bn = [run(f"b{s}", None, norm="batchnorm", seed=s) for s in range(2)]
    assert compare(plain + bn, target=0.95).arms[1].p_value is None


def test_confounder_warnings():
    runs = [
        run("a", 500),
        run("b", 300, norm="batchnorm", dataset="digits", steps=2000),
    ]
    runs[1].torch_version, runs[1].device = "2.12.0", "cuda"
    w = compare(runs).warnings
    assert any(x.startswith("arms differ in dataset:") and "digits" in x for x in w)
    assert any(x.startswith("arms differ in steps:") for x in w)
    assert any("torch version" in x and "2.12.0" in x for x in w)
    assert any("device" in x and "cuda" in x for x in w)


def test_no_baseline_metric_warns():
    r = run("a", 500)
    del r.metrics["test_acc"]
    c = compare([r])
    assert c.target is None and c.runs[0].steps_to_target is None
    assert any("no test_acc" in w for w in c.warnings)


# ---------------------------------------------------------------- CSV


def test_csv_parses_with_one_row_per_run_and_target_then_arm_and_target():
    c = compare(seeded_runs(), target=0.9, target_fractions=[0.5])
    rows = list(csv.DictReader(io.StringIO(to_csv(c))))
    assert [r["row_type"] for r in rows] == ["run"] * 12 + ["arm"] * 4
    assert [r["target_fraction"] for r in rows[:2]] == ["", "0.5"]
    runs = {(r["run_id"], r["target"]): r for r in rows if r["row_type"] == "run"}
    assert runs[("b1", "0.9")]["steps_to_target"] == "200"
    assert float(runs[("b1", "0.9")]["speedup"]) == pytest.approx(3.5)  # p0 (700) / 200
    assert runs[("b1", "0.45")]["steps_to_target"] == "200"  # 0.5 × 0.9; 0.1 before
    arm = rows[-2]
    assert arm["arm"] == "norm=batchnorm" and arm["n"] == "3" and arm["target"] == "0.9"
    assert math.isclose(float(arm["speedup"]), 4.0)


def test_csv_summary_columns_carry_the_trainers_values():
    plain = run("plain", 800)
    plain.summary = {"final_train_loss": 0.6959, "final_test_acc": 0.9, "best_test_acc": 0.9}
    c = compare([plain, run("bn", 300, norm="batchnorm")])
    row = next(csv.DictReader(io.StringIO(to_csv(c))))
    assert row["final_train_loss"] == "0.6959" and row["final_test_acc"] == "0.9"
    assert float(row["last_train_loss"]) == pytest.approx(2.0 / 992)  # a different number
