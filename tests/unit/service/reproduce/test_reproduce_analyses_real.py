"""The real-data analyses on hand-built runs passed through the comparison layer's own
``compare()`` (what GET /compare serves), with answers worked out by hand."""

from __future__ import annotations

import pytest

from service.analysis.compare import RunData, compare
from service.reproduce import HOLDS, UNSURE, SweepData, verdict_from_numbers
from service.reproduce.analyses_real import (
    analyse_bn_vs_dropout,
    analyse_conv_table,
    analyse_faster_training_horizons,
)
from service.reproduce.experiments import EXPERIMENTS
from service.reproduce.plan import DESIGNS, PROFILES


def curve(values: list[float], every: int = 100) -> list[tuple[int, float]]:
    return [(i * every, v) for i, v in enumerate(values)]


def make_run(run_id: str, spec: dict, summary: dict, **metrics) -> RunData:
    return RunData(id=run_id, name=run_id, spec=spec, summary=summary, metrics=metrics)


def sweep_data(key: str, runs: list[RunData], **query) -> SweepData:
    out = [
        {"id": r.id, "name": r.name, "spec": r.spec, "summary": r.summary, "status": r.status}
        for r in runs
    ]
    comparison = compare(runs, points=1000, **query).to_dict()
    return SweepData(DESIGNS[key].plan(PROFILES["tiny"]), "s", out, comparison)


# ------------------------------------------------------------------------ BN vs dropout


def reg_runs(plain_loss: list[float]) -> list[RunData]:
    final_acc = {  # per arm, three seeds
        ("none", 0.0): [0.80, 0.81, 0.79],
        ("none", 0.5): [0.84, 0.85, 0.86],
        ("batchnorm", 0.0): [0.85, 0.86, 0.85],
        ("batchnorm", 0.5): [0.86, 0.86, 0.87],
    }
    runs = []
    for (norm, dropout), accs in final_acc.items():
        for seed, acc in enumerate(accs):
            spec = {"model": {"norm": norm, "dropout": dropout}, "seed": seed, "steps": 400}
            plain = (norm, dropout) == ("none", 0.0)
            summary = {
                "final_test_acc": acc,
                "best_test_acc": acc + 0.01,
                "train_acc_full": 1.0 if plain else 0.95,
                "final_train_loss": 0.01,
                "final_test_loss": plain_loss[-1],
            }
            runs.append(
                make_run(
                    f"{norm}-{dropout}-{seed}",
                    spec,
                    summary,
                    test_loss=curve(plain_loss if plain else [2.0, 0.5, 0.45]),
                    test_acc=curve([0.1, acc - 0.05, acc]),
                )
            )
    return runs


def test_bn_without_dropout_matches_dropout_and_beats_nothing() -> None:
    data = sweep_data("fashion-regularization", reg_runs([2.0, 0.5, 0.6]))
    finding = analyse_bn_vs_dropout(data)
    n = finding.numbers
    assert n["plain_train_acc"] == 1.0
    assert n["plain_test_loss_rise"] == pytest.approx(0.2)  # 0.6 / 0.5 − 1
    assert n["plain_overfits"] is True
    assert n["vs_dropout"]["mean"] == pytest.approx(2.56 / 3 - 0.85)
    assert n["vs_plain"]["mean"] == pytest.approx(2.56 / 3 - 0.80)
    assert finding.verdict == HOLDS
    assert verdict_from_numbers("fashion-regularization", n) == HOLDS
    rows = {row["arm"]: row for row in finding.table}
    assert rows["no BN, no dropout"]["acc gap (train − test)"] == "0.200"  # 1.0 − 0.80
    assert rows["no BN, no dropout"]["test-loss rise"] == "0.20"


def test_a_plain_arm_that_does_not_overfit_makes_it_inconclusive() -> None:
    data = sweep_data("fashion-regularization", reg_runs([2.0, 0.6, 0.5]))  # still falling
    finding = analyse_bn_vs_dropout(data)
    assert finding.numbers["plain_overfits"] is False
    assert finding.verdict == UNSURE
    assert "does NOT overfit" in finding.reason and "0% above its minimum" in finding.reason


# ---------------------------------------------------------------------------- conv table


def conv_run(
    name: str, norm: str, lr: float, accs: list[float], seed: int, activation: str = "relu"
) -> RunData:
    spec = {
        "model": {"norm": norm, "activation": activation},
        "optimizer": {"lr": lr},
        "seed": seed,
        "steps": 1000,
    }
    summary = {"best_test_acc": max(accs)}
    return make_run(f"{name}-{seed}", spec, summary, test_acc=curve(accs))


def test_conv_table_rows_and_the_bn_x5_verdict() -> None:
    runs = []
    for seed in (0, 1):
        runs += [
            conv_run("base-0.01", "none", 0.01, [0.1, 0.5, 0.6, 0.7], seed),
            # the best LR: reaches its max 0.8 at step 300
            conv_run("base-0.03", "none", 0.03, [0.1, 0.6, 0.7, 0.8], seed),
            conv_run("bn-1x", "batchnorm", 0.03, [0.1, 0.7, 0.8, 0.82], seed),  # 200: 1.5×
            conv_run("bn-5x", "batchnorm", 0.15, [0.1, 0.81, 0.83, 0.85], seed),  # 100: 3×
            conv_run("bn-30x", "batchnorm", 0.9, [0.1, 0.3, 0.5, 0.6], seed),  # never
            conv_run("bn-5x-sig", "batchnorm", 0.15, [0.1, 0.4, 0.6, 0.7], seed, "sigmoid"),
        ]
    conv = next(e for e in EXPERIMENTS if e.name == "conv-table")
    plain = [{"id": r.id, "spec": r.spec, "summary": r.summary} for r in runs]
    query = conv.compare_query(None, plain)
    assert query == {"baseline": "base-0.03-0"}
    finding = analyse_conv_table(sweep_data("inception-baseline", runs, baseline_id="base-0.03-0"))
    n = finding.numbers
    assert n["baseline_lr"] == 0.03 and n["target"] == 0.8
    speedups = {name: row["speedup"]["mean"] for name, row in n["rows"].items()}
    assert speedups["BN-Baseline"] == pytest.approx(1.5)
    assert speedups["BN-x5"] == pytest.approx(3.0)
    assert n["rows"]["BN-x30"]["n_reached"] == 0
    assert n["rows"]["BN-x5-Sigmoid"]["best"]["mean"] == pytest.approx(0.7)
    assert finding.verdict == HOLDS  # 3× ≥ 2× and the CI (identical seeds) above 1×
    assert verdict_from_numbers("conv-table", n) == HOLDS
    assert [row["model"] for row in finding.table] == [
        "Baseline",
        "BN-Baseline",
        "BN-x5",
        "BN-x30",
        "BN-x5-Sigmoid",
    ]


# ----------------------------------------------------------------- MLP protocol, horizons


def test_faster_training_adds_target_and_horizon_tables() -> None:
    base = [0.1, 0.5, 0.6, 0.7, 0.7]
    bn = [0.1, 0.65, 0.75, 0.8, 0.8]
    runs = [
        make_run(
            f"{norm}-{seed}",
            {"model": {"norm": norm}, "seed": seed, "steps": 60},
            {},
            test_acc=curve(values, every=15),
        )
        for norm, values in (("none", base), ("batchnorm", bn))
        for seed in (0, 1)
    ]
    finding = analyse_faster_training_horizons(sweep_data("fashion-mlp", runs))
    n = finding.numbers
    # Target 0.7: baseline at step 45, BN at 30 (0.75) → 1.5× (also for 0.693 and 0.665);
    # 90 % (0.63): baseline still 45 (0.6 < 0.63), BN at 15 (0.65) → 3×.
    assert [t["speedup"]["mean"] for t in n["targets"]] == pytest.approx([1.5, 1.5, 1.5, 3.0])
    assert [h["horizon"] for h in n["horizons"]] == [20, 60]  # tiny: 60 steps, eval every 20
    titles = [title for title, _ in finding.more_tables]
    assert titles[0].startswith("Steps to several targets")
    assert any("Plateau check" in note for note in finding.notes)
