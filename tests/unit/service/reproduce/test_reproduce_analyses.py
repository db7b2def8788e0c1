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


def faster_comparison(target, bn_speedup, bn_reached=3) -> dict:
    return {
        "target": target,
        "baseline_arm": "norm=none",
        "arms": [
            arm("norm=none", "none", steps=stat(1800.0), speedup=stat(1.0)),
            arm("norm=batchnorm", "batchnorm", reached=bn_reached, speedup=bn_speedup),
        ],
        "runs": [],
    }


def test_analyse_faster_training_with_a_baseline_that_never_learned() -> None:
    # A 6× speed-up to 0.12, when chance is 0.10, says nothing about training speed.
    finding = r.analyse_faster_training(sweep_data(faster_comparison(0.12, stat(6.0, 4.5, 8.0))))
    assert finding.verdict == UNSURE
    assert finding.reason.endswith(
        "but the target 0.120 is near chance: the baseline never learned."
    )


def test_analyse_faster_training_censored_bn_arm() -> None:
    # 2 of 3 BN seeds reached the target: the speed-up ≤ 1.5× can only say "not 2× faster".
    comparison = faster_comparison(0.31, stat(1.5, 1.0, 2.0, "upper"), bn_reached=2)
    finding = r.analyse_faster_training(sweep_data(comparison))
    assert finding.verdict == FAILS
    assert "speed-up ≤ 1.50× [1.00, 2.00]" in finding.measured
    assert finding.reason.endswith("(censored: at most this).")
    never = r.analyse_faster_training(sweep_data(faster_comparison(0.31, stat(None), 0)))
    assert never.verdict == FAILS  # BN never reached the baseline's accuracy


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

    # Baseline gaps 0.10, 0.12, 0.08 (mean 0.10) against BN gaps 0.04, 0.05, 0.03 (mean 0.04):
    # a resampled difference of means lies in [0.08 − 0.05, 0.12 − 0.03] = [0.03, 0.09]: the CI
    # excludes 0 and the mean 0.06 is ≥ 0.02.
    runs = [run("none", s, 1.0, 1.0 - gap) for s, gap in enumerate([0.10, 0.12, 0.08])]
    runs += [run("batchnorm", s, 0.98, 0.98 - gap) for s, gap in enumerate([0.04, 0.05, 0.03])]
    finding = r.analyse_regularization(sweep_data({}, runs, "regularization"))
    assert finding.numbers["reduction"]["mean"] == pytest.approx(0.06)
    assert 0.03 - 1e-9 <= finding.numbers["reduction"]["ci_low"] <= 0.06
    assert finding.verdict == HOLDS
    assert finding.bars["no BN"] == {"train acc": 1.0, "test acc": pytest.approx(0.90)}
    assert finding.bars["BN"] == {"train acc": 0.98, "test acc": pytest.approx(0.94)}


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
    trains_too = dict(
        comparison,
        arms=[
            arm("norm=none", "none", best=stat(0.30)),
            arm("norm=batchnorm", "batchnorm", best=stat(0.45)),
        ],
    )
    assert r.analyse_saturating(sweep_data(trains_too, key="deep-sigmoid")).verdict == FAILS
    assert finding.numbers["depth"] == 10
    assert r.verdict_from_numbers("saturating-nonlinearities", finding.numbers) == HOLDS


def test_arms_are_found_by_norm_and_any_other_factor() -> None:
    """Dropout arms (a regularization experiment): the factors arrive as text."""
    arms = [
        arm(f"norm={norm}, dropout={p}", norm)
        | {"factors": {"model.norm": norm, "model.dropout": p}}
        for norm in ("none", "batchnorm")
        for p in ("0.0", "0.5")
    ]
    data = sweep_data({"arms": arms})
    assert data.arm(bn=True, where={"model.dropout": 0.5})["label"] == "norm=batchnorm, dropout=0.5"
    assert data.arm(bn=False, where={"model.dropout": 0})["label"] == "norm=none, dropout=0.0"
    assert data.arm(bn=False)["label"] == "norm=none, dropout=0.0"  # the first baseline arm
    # A factor that does not vary is not among the arms' factors: any value matches it.
    assert data.arm(bn=True, lr=0.5, where={"model.dropout": "0.5"})["label"].endswith("0.5")
    with pytest.raises(LookupError, match="no BN arm with {'model.dropout': 0.2}"):
        data.arm(bn=True, where={"model.dropout": 0.2})
    assert data.bn_arm_labels() == {"norm=batchnorm, dropout=0.0", "norm=batchnorm, dropout=0.5"}
