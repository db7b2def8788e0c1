"""The real-data part of the suite: its plan entries (profiles, tuned LR, stages), the BN-vs-
dropout rule on hand-built numbers, and resuming by reusing runs already on the server."""

from __future__ import annotations

import pytest

from bncore.spec import JobSpec
from service.reproduce import verdicts as v
from service.reproduce.experiments import select_experiments
from service.reproduce.plan import DESIGNS, PROFILES, expand, sweep_plans
from service.reproduce.results import best_baseline_lr
from service.reproduce.reuse import pick_reusable, stored_form
from service.reproduce.runner import obtain_runs, suite_stages
from service.store import expand_grid

REAL = [
    "fashion-faster-training",
    "fashion-stable-distributions",
    "conv-table",
    "fashion-regularization",
    "fashion-inference-statistics",
]

# ------------------------------------------------------------------------------------- the plan


def test_quick_stays_on_toy_data_and_report_runs_the_real_data_first() -> None:
    quick = [e.name for e in select_experiments(None, PROFILES["quick"])]
    assert not set(REAL) & set(quick) and "faster-training" in quick
    report = [e.name for e in select_experiments(None, PROFILES["report"])]
    assert report[: len(REAL)] == REAL and "higher-learning-rates" in report
    with pytest.raises(ValueError, match="conv-table do not run in the 'quick' profile"):
        select_experiments(["conv-table"], PROFILES["quick"])


def test_the_paper_profile_uses_the_papers_step_counts() -> None:
    paper = sweep_plans(PROFILES["paper"])
    mlp = paper["fashion-mlp"]
    assert mlp.base["steps"] == 50_000 and mlp.base["batch_size"] == 60
    assert mlp.base["dataset"] == "fashion_mnist"
    assert mlp.base["model"] == {"arch": "mlp", "hidden": [100] * 3, "activation": "sigmoid"}
    assert mlp.grid == {"model.norm": ["none", "batchnorm"], "seed": [0, 1, 2]}
    assert sweep_plans(PROFILES["report"])["fashion-mlp"].base["steps"] == 20_000


def test_the_regularization_sweep_crosses_norm_and_dropout() -> None:
    reg = sweep_plans(PROFILES["report"])["fashion-regularization"]
    assert reg.grid == {
        "model.norm": ["none", "batchnorm"],
        "model.dropout": [0.0, 0.5],
        "seed": [0, 1, 2],
    }
    assert reg.base["train_size"] == 2000


def test_conv_rows_carry_the_papers_changes() -> None:
    report = PROFILES["report"]
    base = DESIGNS["inception-baseline"].plan(report)
    bn = DESIGNS["inception-bn"].plan(report, tuned_lr=0.03)
    sigmoid = DESIGNS["inception-bn-sigmoid"].plan(report, tuned_lr=0.03)
    assert base.grid["optimizer.lr"] == [0.01, 0.03, 0.1] and base.grid["model.norm"] == ["none"]
    assert bn.grid["optimizer.lr"] == [0.03, 0.15, 0.9]  # BN-Baseline, BN-x5, BN-x30
    assert sigmoid.grid["optimizer.lr"] == [0.15] and sigmoid.base["model"]["activation"] == (
        "sigmoid"
    )
    assert base.base["model"]["dropout"] == 0.4 and bn.base["model"]["dropout"] == 0.0
    l2 = base.base["optimizer"]["weight_decay"]
    assert bn.base["optimizer"]["weight_decay"] == pytest.approx(l2 / 5)
    # The LR decays exponentially: to half over the baseline's run, 6× as fast with BN (1/64).
    steps = base.base["steps"]
    assert base.base["optimizer"]["schedule"] == bn.base["optimizer"]["schedule"] == "exponential"
    assert base.base["optimizer"]["gamma"] ** steps == pytest.approx(0.5, rel=1e-4)
    assert bn.base["optimizer"]["gamma"] ** steps == pytest.approx(1 / 64, rel=1e-4)
    for plan in (base, bn, sigmoid):
        for spec in expand(plan):
            JobSpec.model_validate(spec)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_expand_names_runs_as_the_server_does(profile) -> None:
    for plan in sweep_plans(PROFILES[profile]).values():
        assert expand(plan) == expand_grid(plan.base, plan.grid)


def test_tuned_sweeps_train_after_the_sweep_they_take_their_lr_from() -> None:
    stages = suite_stages(select_experiments(["conv-table", "fashion-regularization"]))
    assert stages == [
        ["inception-baseline", "fashion-regularization"],
        ["inception-bn", "inception-bn-sigmoid"],
    ]
    assert suite_stages(select_experiments(["faster-training"])) == [["mlp-sigmoid"]]


def _run(norm: str, lr: float, best: float | None, status: str = "succeeded") -> dict:
    summary = None if best is None else {"best_test_acc": best}
    return {
        "spec": {"model": {"norm": norm}, "optimizer": {"lr": lr}},
        "summary": summary,
        "status": status,
    }


def test_best_baseline_lr_is_the_highest_mean_best_accuracy_without_bn() -> None:
    runs = [
        _run("none", 0.01, 0.80),
        _run("none", 0.01, 0.82),  # mean 0.81
        _run("none", 0.03, 0.85),
        _run("none", 0.03, 0.79),  # mean 0.82: the best
        _run("none", 0.1, None, "failed"),  # no summary: left out
        _run("batchnorm", 0.1, 0.95),  # BN runs do not count
    ]
    assert best_baseline_lr(runs) == 0.03
    with pytest.raises(LookupError):
        best_baseline_lr([_run("batchnorm", 0.1, 0.9)])


# ------------------------------------------------------------------------- the BN-vs-dropout rule


def stat(mean: float, low: float, high: float) -> dict:
    return {"mean": mean, "ci_low": low, "ci_high": high, "bound": None}


def test_the_design_check_needs_fit_and_rising_test_loss() -> None:
    assert v.overfits(0.995, 0.25)
    assert not v.overfits(0.95, 0.25)  # has not fit its training set
    assert not v.overfits(1.0, 0.05)  # test loss did not rise (enough)
    assert not v.overfits(None, 0.3)


@pytest.mark.parametrize(
    ("overfit", "vs_dropout", "vs_plain", "expected"),
    [
        # as good as dropout (CI above -0.01) and 2 points better than nothing: holds
        (True, stat(0.002, -0.006, 0.01), stat(0.02, 0.012, 0.028), v.HOLDS),
        # clearly worse than dropout: CI upper end -0.015 < -0.01
        (True, stat(-0.03, -0.045, -0.015), stat(0.02, 0.01, 0.03), v.FAILS),
        # no better than no regularizer: CI upper end 0.003 < 0.005
        (True, stat(0.0, -0.005, 0.005), stat(-0.002, -0.006, 0.003), v.FAILS),
        # the CI vs dropout straddles -δ: cannot tell
        (True, stat(-0.01, -0.02, 0.0), stat(0.02, 0.01, 0.03), v.UNSURE),
        # the design cannot detect regularization: never a pass or fail
        (False, stat(0.002, -0.006, 0.01), stat(0.02, 0.012, 0.028), v.UNSURE),
        (False, stat(-0.03, -0.045, -0.015), stat(0.02, 0.01, 0.03), v.UNSURE),
    ],
)
def test_bn_vs_dropout_verdicts(overfit, vs_dropout, vs_plain, expected) -> None:
    assert v.verdict_bn_vs_dropout(overfit, vs_dropout, vs_plain) == expected


# --------------------------------------------------------------------------- resuming by reuse


SPEC = {"name": "fashion-mlp[norm=none,seed=0]", "dataset": "fashion_mnist", "steps": 50_000}


def _stored(status: str, created: str, **changes) -> dict:
    spec = stored_form(SPEC | changes)
    return {
        "id": f"{status}-{created}",
        "name": spec["name"],
        "status": status,
        "spec": spec,
        "created_at": created,
    }


def test_a_finished_run_with_the_same_name_and_spec_is_reused() -> None:
    done = _stored("succeeded", "2026-01-01")
    assert pick_reusable(SPEC, [done]) is done
    assert pick_reusable(SPEC, [_stored("diverged", "2026-01-01")])["status"] == "diverged"


def test_failed_cancelled_or_different_runs_are_not_reused() -> None:
    assert pick_reusable(SPEC, [_stored("failed", "1"), _stored("cancelled", "2")]) is None
    assert pick_reusable(SPEC, [_stored("succeeded", "1", steps=20_000)]) is None
    other_name = _stored("succeeded", "1") | {"name": "fashion-mlp[norm=none,seed=1]"}
    assert pick_reusable(SPEC, [other_name]) is None
    assert pick_reusable(SPEC, []) is None


def test_finished_runs_come_before_active_ones_then_the_newest() -> None:
    running = _stored("running", "2026-01-03")
    old, new = _stored("succeeded", "2026-01-01"), _stored("succeeded", "2026-01-02")
    assert pick_reusable(SPEC, [running, old, new]) is new
    assert pick_reusable(SPEC, [running, _stored("failed", "2026-01-04")]) is running


class RecordingServer:
    """Just the three calls ``obtain_runs`` makes, over an in-memory list of runs (the real
    server needs training processes; what is tested here is which runs get submitted)."""

    def __init__(self, runs: list[dict]) -> None:
        self.runs = runs
        self.sweeps: list[str] = []
        self.submitted: list[str] = []

    def list_runs(self, name: str) -> list[dict]:
        return [r for r in self.runs if r["name"] == name]

    def sweep(self, name: str, base: dict, grid: dict) -> dict:
        self.sweeps.append(name)
        specs = expand_grid(base, grid)
        return {"id": "new-sweep", "runs": [{"id": f"new-{s['name']}"} for s in specs]}

    def submit(self, spec: dict) -> dict:
        self.submitted.append(spec["name"])
        return {"id": f"new-{spec['name']}"}


def _finished(spec: dict) -> dict:
    stored = stored_form(spec)
    return {
        "id": f"old-{stored['name']}",
        "name": stored["name"],
        "status": "succeeded",
        "spec": stored,
        "created_at": "2026-01-01",
    }


def test_an_interrupted_suite_resumes_with_only_the_missing_runs() -> None:
    plan = sweep_plans(PROFILES["paper"])["fashion-mlp"]
    specs = expand(plan)
    server = RecordingServer([_finished(s) for s in specs[:4]])  # 4 of 6 finished before
    label, ids, reused = obtain_runs(server, plan, "paper", reuse=True)
    assert (label, reused) == ("reused", 4)
    assert ids[:4] == [f"old-{s['name']}" for s in specs[:4]]
    assert server.submitted == [s["name"] for s in specs[4:]] and not server.sweeps


def test_nothing_to_reuse_submits_one_sweep_and_reuse_off_ignores_old_runs() -> None:
    plan = sweep_plans(PROFILES["paper"])["fashion-mlp"]
    fresh = RecordingServer([])
    assert obtain_runs(fresh, plan, "paper", reuse=True)[0] == "new-sweep"
    assert fresh.sweeps == ["reproduce-paper-fashion-mlp"] and not fresh.submitted
    old = RecordingServer([_finished(s) for s in expand(plan)])
    label, _, reused = obtain_runs(old, plan, "report", reuse=False)
    assert (label, reused) == ("new-sweep", 0)
