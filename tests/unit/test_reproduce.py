"""The reproduction suite's verdict logic and analyses, on hand-made numbers (no server)."""

from __future__ import annotations

import pytest

from service import reproduce as r
from service.reproduce import (
    FAILS,
    HOLDS,
    UNSURE,
    SweepData,
    arm_outcome,
    effect_verdict,
    run_drift,
    verdict_faster_training,
    verdict_higher_learning_rates,
    verdict_inference_statistics,
    verdict_regularization,
    verdict_saturating,
    verdict_stable_distributions,
)


def stat(mean, low=None, high=None, bound=None) -> dict:
    low = mean if low is None else low
    high = mean if high is None else high
    return {"mean": mean, "ci_low": low, "ci_high": high, "bound": bound}


# ---------------------------------------------------------------------------- effect_verdict


@pytest.mark.parametrize(
    ("estimate", "low", "high", "expected"),
    [
        (3.0, 1.5, 4.0, HOLDS),  # big enough, CI excludes no-effect
        (2.0, 1.01, 3.0, HOLDS),  # exactly at the threshold counts
        (3.0, 0.9, 4.0, UNSURE),  # big estimate, but the CI includes no effect
        (1.5, 1.2, 1.9, FAILS),  # real but too small: the whole CI is below the threshold
        (0.8, 0.5, 1.1, FAILS),  # no effect at all
        (1.8, 1.2, 2.5, UNSURE),  # CI straddles the threshold
        (None, None, None, UNSURE),
    ],
)
def test_effect_verdict(estimate, low, high, expected) -> None:
    assert effect_verdict(estimate, low, high, threshold=2.0, null=1.0) == expected


# ---------------------------------------------------------------------------- claim 1


def test_faster_training_branches() -> None:
    assert verdict_faster_training(stat(5.0, 3.0, 7.0), 3, 3) == HOLDS
    assert verdict_faster_training(stat(1.2, 0.9, 1.5), 3, 3) == FAILS
    assert verdict_faster_training(stat(2.5, 0.8, 4.0), 3, 3) == UNSURE
    assert verdict_faster_training(stat(None), 0, 3) == FAILS  # BN never got there
    assert verdict_faster_training(stat(None), 0, 0) == UNSURE  # no BN runs at all
    # The baseline never left chance: a race to 0.11 says nothing about training speed.
    assert verdict_faster_training(stat(5.0, 3.0, 7.0), 3, 3, target=0.11) == UNSURE
    assert verdict_faster_training(stat(5.0, 3.0, 7.0), 3, 3, target=0.31) == HOLDS


def test_faster_training_censored_speedup_is_only_an_upper_bound() -> None:
    # Some BN seeds never reached the target: the speed-up is at most this.
    assert verdict_faster_training(stat(1.5, 1.0, 2.0, "upper"), 2, 3) == FAILS
    assert verdict_faster_training(stat(4.0, 2.0, 6.0, "upper"), 2, 3) == UNSURE


# ---------------------------------------------------------------------------- claim 2


def test_stable_distributions_branches() -> None:
    assert verdict_stable_distributions(stat(10.0, 6.0, 14.0)) == HOLDS
    assert verdict_stable_distributions(stat(1.1, 0.7, 1.5)) == FAILS
    assert verdict_stable_distributions(stat(3.0, 0.9, 5.0)) == UNSURE


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


# ---------------------------------------------------------------------------- claim 3


def test_arm_outcome() -> None:
    assert arm_outcome(3, 3) == "reaches"
    assert arm_outcome(2, 3) == "reaches"  # more than half
    assert arm_outcome(1, 2) == "mixed"  # exactly half is not more than half
    assert arm_outcome(1, 3) == "mixed"
    assert arm_outcome(0, 3) == "fails"
    assert arm_outcome(0, 0) == "fails"


def test_higher_learning_rates_branches() -> None:
    base = {0.5: "reaches", 2.5: "reaches", 15.0: "fails"}
    assert verdict_higher_learning_rates(base, dict.fromkeys(base, "reaches")) == HOLDS
    # BN fails where the baseline fails: nothing gained.
    assert verdict_higher_learning_rates(base, base) == FAILS
    # BN gains 30× but loses 5×: not "tolerates higher rates" cleanly.
    lost = {0.5: "reaches", 2.5: "fails", 15.0: "reaches"}
    assert verdict_higher_learning_rates(base, lost) == UNSURE
    # A mixed arm leaves it open.
    mixed = {0.5: "reaches", 2.5: "reaches", 15.0: "mixed"}
    assert verdict_higher_learning_rates(base, mixed) == UNSURE
    assert verdict_higher_learning_rates({}, {}) == UNSURE


# ---------------------------------------------------------------------------- claim 4


def test_saturating_branches() -> None:
    assert verdict_saturating(0.10, 0.45) == HOLDS
    assert verdict_saturating(0.15, 0.25) == HOLDS  # both limits are inclusive
    assert verdict_saturating(0.30, 0.45) == FAILS  # the baseline trains too
    assert verdict_saturating(0.10, 0.12) == FAILS  # BN does not help
    assert verdict_saturating(0.20, 0.45) == UNSURE  # baseline neither stuck nor training
    assert verdict_saturating(None, 0.45) == UNSURE


# ---------------------------------------------------------------------------- claims 5 and 6


def test_inference_statistics_branches() -> None:
    assert verdict_inference_statistics(stat(0.02, 0.01, 0.03)) == HOLDS
    assert verdict_inference_statistics(stat(0.0, -0.01, 0.004)) == FAILS
    assert verdict_inference_statistics(stat(0.01, -0.01, 0.03)) == UNSURE


def test_regularization_branches() -> None:
    assert verdict_regularization(stat(0.05, 0.03, 0.07)) == HOLDS
    assert verdict_regularization(stat(-0.02, -0.04, 0.0)) == FAILS  # BN's gap is larger
    assert verdict_regularization(stat(0.03, -0.01, 0.06)) == UNSURE


# ---------------------------------------------------------------------------- analyses


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


# ---------------------------------------------------------------------------- plans


def test_select_experiments() -> None:
    assert [e.name for e in r.select_experiments(None)] == r.EXPERIMENT_NAMES
    assert [e.name for e in r.select_experiments(["regularization", "faster-training"])] == [
        "faster-training",
        "regularization",
    ]
    with pytest.raises(ValueError, match="unknown experiment"):
        r.select_experiments(["nope"])


@pytest.mark.parametrize("profile", sorted(r.PROFILES))
def test_every_planned_spec_is_valid(profile) -> None:
    from bncore.spec import JobSpec
    from service.store import expand_grid

    for plan in r.sweep_plans(r.PROFILES[profile]).values():
        specs = list(expand_grid(plan.base, plan.grid))
        assert len(specs) == plan.runs
        for spec in specs:
            JobSpec.model_validate(spec)


def test_learning_rate_grid_follows_the_paper_multipliers() -> None:
    plan = r.sweep_plans(r.PROFILES["full"])["learning-rates"]
    assert plan.grid["optimizer.lr"] == [r.BASE_LR, 5 * r.BASE_LR, 30 * r.BASE_LR]
    assert plan.grid["seed"] == [0, 1, 2]


def test_explain_effect_names_the_deciding_comparison() -> None:
    close = stat(-0.005, -0.027, 0.01995)
    assert r.verdict_regularization(close) == FAILS
    why = r.explain_effect(close, FAILS, threshold=0.02, null=0.0, digits=4)
    assert why == "CI upper end 0.0199 < 0.02"  # not "0.020 < 0.02"
    held = r.explain_effect(stat(7.2, 5.7, 9.6), HOLDS, threshold=2.0, null=1.0, digits=2)
    assert held == "estimate 7.20 ≥ 2 and CI lower end 5.70 > 1"
    open_low = r.explain_effect(stat(1.8, 1.2, 2.5), UNSURE, threshold=2.0, null=1.0, digits=1)
    assert open_low.startswith("estimate 1.8 < 2, but CI upper end 2.5")


def test_profiles_can_give_a_sweep_more_seeds() -> None:
    full = r.sweep_plans(r.PROFILES["full"])
    assert full["regularization"].grid["seed"] == [0, 1, 2, 3, 4]
    assert full["mlp-sigmoid"].grid["seed"] == [0, 1, 2]
    assert full["mlp-sigmoid-digits"].base["dataset"] == "digits"
    assert r.sweep_plans(r.PROFILES["quick"])["regularization"].grid["seed"] == [0]


# ---------------------------------------------------------------------------- CLI glue


def test_cli_rejects_an_unknown_experiment() -> None:
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(app, ["reproduce", "--only", "nope", "--server", "http://x"])
    assert result.exit_code == 2
    assert "unknown experiment" in result.output


def test_cli_runs_the_suite_against_the_given_server(monkeypatch, tmp_path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    seen = {}

    def fake_run_suite(client, *, quick, only, out_dir, progress, server_label):
        seen.update(base_url=client.base_url, quick=quick, only=only, out=out_dir)
        progress(3, 4, "1 running")
        finding = r.Finding(HOLDS, "speed-up 7×", "because", "rule", {})
        item = r.ExperimentResult(
            "faster-training", "1. Faster training", "claim", "Fig. 1a", "s", "id", "", finding, []
        )
        return r.SuiteResult("quick", out_dir, out_dir / "reproduction.md", [item], 60.0, 4, {})

    monkeypatch.setattr(r, "run_suite", fake_run_suite)
    args = ["reproduce", "--quick", "--only", "faster-training", "--server", "http://h:1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == {
        "base_url": "http://h:1",
        "quick": True,
        "only": ["faster-training"],
        "out": tmp_path,
    }
    assert "1. Faster training" in result.output and "holds" in result.output
