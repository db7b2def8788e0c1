"""The analyses on hand-made API answers (no server): which numbers each one reads, what it
computes from them, and the verdict those numbers must give (worked out by hand)."""

from __future__ import annotations

import pytest

from service import reproduce as r
from service.reproduce import FAILS, HOLDS, UNSURE, SweepData, run_drift


def stat(mean, low=None, high=None, bound=None) -> dict:
    low = mean if low is None else low
    high = mean if high is None else high
    return {"mean": mean, "ci_low": low, "ci_high": high, "bound": bound}


def test_run_drift_is_median_range_over_mean_spread() -> None:
    curves = {
        "act_p15": [[0, -1.0], [100, -3.0]],
        "act_p50": [[0, 0.0], [100, -2.0]],
        "act_p85": [[0, 1.0], [100, -1.0]],
    }
    assert run_drift(curves) == pytest.approx(2.0 / 2.0)
    assert run_drift({}) is None
    flat = {k: [[0, 1.0]] for k in ("act_p15", "act_p50", "act_p85")}
    assert run_drift(flat) is None  # no spread: undefined, not infinite


def arm(label, norm, *, n=3, reached=3, steps=None, speedup=None, best=None, lr=None) -> dict:
    factors = {"model.norm": norm} | ({"optimizer.lr": str(lr)} if lr is not None else {})
    return {
        "label": label,
        "factors": factors,
        "run_ids": [f"{label}-{i}" for i in range(n)],
        "n": n,
        "n_reached": reached,
        "steps_to_target": steps or stat(None),
        "speedup": speedup or stat(None),
        "best": best or stat(None),
        "p_value": 0.05,
        "is_baseline": norm == "none",
    }


def run_row(run_id, arm_label, *, best=0.3, diverged=False, curves=None) -> dict:
    return {
        "id": run_id,
        "name": run_id,
        "arm": arm_label,
        "best": best,
        "diverged": diverged,
        "curves": curves or {},
    }


def sweep_data(comparison: dict, runs: list[dict] | None = None, key="mlp-sigmoid") -> SweepData:
    plan = r.sweep_plans(r.PROFILES["tiny"])[key]
    return SweepData(plan, "sweep-1", runs or [], comparison)


def test_analyse_faster_training_reads_the_bn_arm() -> None:
    comparison = {
        "target": 0.31,
        "baseline_arm": "norm=none",
        "arms": [
            arm("norm=none", "none", steps=stat(1800.0), speedup=stat(1.0, 0.8, 1.2)),
            arm("norm=batchnorm", "batchnorm", steps=stat(300.0), speedup=stat(6.0, 4.5, 8.0)),
        ],
        "runs": [],
    }
    finding = r.analyse_faster_training(sweep_data(comparison))
    assert finding.verdict == HOLDS
    assert r.verdict_from_numbers("faster-training", finding.numbers) == HOLDS
    assert finding.numbers["speedup"]["mean"] == 6.0
    assert "6.00×" in finding.measured


def test_failed_runs_make_any_experiment_inconclusive() -> None:
    runs = [{"name": "x", "status": "failed", "spec": {}}, {"name": "y", "status": "succeeded"}]
    finding = r.analyse_faster_training(sweep_data({}, runs))
    assert finding.verdict == UNSURE
    assert "1 of 2 runs" in finding.reason
    assert r.verdict_from_numbers("regularization", finding.numbers) == UNSURE


def test_analyse_higher_learning_rates_per_lr_arm() -> None:
    lrs = [0.5, 2.5, 15.0]
    base_reached = {0.5: 3, 2.5: 3, 15.0: 0}
    arms, comp_runs, runs = [], [], []
    for norm in ("none", "batchnorm"):
        for lr in lrs:
            label = f"norm={norm}, lr={lr}"
            reached = base_reached[lr] if norm == "none" else 3
            arms.append(arm(label, norm, reached=reached, lr=lr))
            for i in range(3):
                comp_runs.append(run_row(f"{label}-{i}", label, best=0.1 if not reached else 0.4))
                runs.append(
                    {
                        "status": "succeeded",
                        "spec": {"model": {"norm": norm}, "optimizer": {"lr": lr}},
                    }
                )
    comparison = {"target": 0.31, "baseline_arm": "norm=none, lr=0.5", "arms": arms}
    comparison["runs"] = comp_runs
    finding = r.analyse_higher_learning_rates(sweep_data(comparison, runs, "learning-rates"))
    assert finding.verdict == HOLDS
    assert finding.numbers["baseline"]["15.0"] == "fails"
    assert finding.numbers["bn"]["15.0"] == "reaches"
    assert r.verdict_from_numbers("higher-learning-rates", finding.numbers) == HOLDS
    stalled = [row["stalled near chance"] for row in finding.table]
    assert stalled == [0, 0, 3, 0, 0, 0]


def test_analyse_stable_distributions_compares_arm_drifts() -> None:
    def curves(p50_values, spread):
        steps = range(0, 100 * len(p50_values), 100)
        return {
            "act_p50": [[s, v] for s, v in zip(steps, p50_values, strict=True)],
            "act_p15": [[s, v - spread / 2] for s, v in zip(steps, p50_values, strict=True)],
            "act_p85": [[s, v + spread / 2] for s, v in zip(steps, p50_values, strict=True)],
        }

    comparison = {
        "baseline_arm": "norm=none",
        "arms": [arm("norm=none", "none", n=2), arm("norm=batchnorm", "batchnorm", n=2)],
        "runs": [
            run_row("a", "norm=none", curves=curves([0.0, -2.0, -3.0], 0.5)),  # drift 6
            run_row("b", "norm=none", curves=curves([0.0, -1.0, -2.0], 0.5)),  # drift 4
            run_row("c", "norm=batchnorm", curves=curves([0.0, -0.2, -0.1], 2.0)),  # 0.1
            run_row("d", "norm=batchnorm", curves=curves([0.0, 0.3, 0.2], 2.0)),  # 0.15
        ],
    }
    finding = r.analyse_stable_distributions(sweep_data(comparison))
    assert finding.numbers["baseline_drifts"] == pytest.approx([6.0, 4.0])
    assert finding.numbers["bn_drifts"] == pytest.approx([0.1, 0.15])
    assert finding.numbers["stability"]["mean"] == pytest.approx(5.0 / 0.125)
    assert finding.verdict == HOLDS
    assert r.verdict_from_numbers("stable-distributions", finding.numbers) == HOLDS


def bn_run(seed, batch, running, population) -> dict:
    return {
        "name": f"bn-{seed}",
        "status": "succeeded",
        "spec": {"model": {"norm": "batchnorm"}, "seed": seed},
        "summary": {
            "test_acc_batch_stats": batch,
            "test_acc_running": running,
            "test_acc_population": population,
        },
    }


def test_analyse_inference_statistics_uses_bn_runs_only() -> None:
    runs = [
        bn_run(0, 0.50, 0.52, 0.53),
        bn_run(1, 0.48, 0.51, 0.52),
        bn_run(2, 0.49, 0.50, 0.52),
        {
            "name": "plain",
            "status": "succeeded",
            "spec": {"model": {"norm": "none"}},
            "summary": {},
        },
    ]
    finding = r.analyse_inference_statistics(sweep_data({}, runs))
    assert finding.numbers["gain"]["mean"] == pytest.approx((0.03 + 0.04 + 0.03) / 3)
    assert finding.numbers["runs"] == 3
    assert finding.verdict == HOLDS
    assert r.verdict_from_numbers("inference-statistics", finding.numbers) == HOLDS
    assert len(finding.table) == 3


def test_analyse_regularization_gap_reduction() -> None:
    def run(norm, seed, train, test):
        summary = {"train_acc_full": train, "final_test_acc": test}
        spec = {"model": {"norm": norm}, "seed": seed}
        return {"name": f"{norm}-{seed}", "status": "succeeded", "spec": spec, "summary": summary}

    runs = [run("none", s, 1.0, 0.52) for s in range(3)]
    runs += [run("batchnorm", s, 1.0, 0.50) for s in range(3)]
    finding = r.analyse_regularization(sweep_data({}, runs, "regularization"))
    assert finding.numbers["reduction"]["mean"] == pytest.approx(-0.02)
    assert finding.verdict == FAILS
    assert r.verdict_from_numbers("regularization", finding.numbers) == FAILS


def test_analyse_saturating_reads_mean_best_accuracies() -> None:
    comparison = {
        "baseline_arm": "norm=none",
        "arms": [
            arm("norm=none", "none", reached=3, best=stat(0.104, 0.1, 0.11)),
            arm("norm=batchnorm", "batchnorm", reached=3, best=stat(0.45, 0.42, 0.48)),
        ],
        "runs": [],
    }
    finding = r.analyse_saturating(sweep_data(comparison, key="deep-sigmoid"))
    assert finding.verdict == HOLDS
    assert finding.numbers["depth"] == 10
    assert r.verdict_from_numbers("saturating-nonlinearities", finding.numbers) == HOLDS
