"""The replicas experiment (issue 15): its equivalence rule on hand-made numbers, and its
analysis on hand-built runs passed through the comparison layer's own ``compare()``.

Δ is an arm's final test accuracy minus the 1-replica arm's, paired by seed; the tolerance
(0.01) is written out literally so a changed threshold fails here."""

from __future__ import annotations

import pytest

from service.analysis.compare import RunData, compare
from service.reproduce import SweepData, verdict_from_numbers
from service.reproduce import verdicts as v
from service.reproduce.analyses_replicas import analyse_replicas
from service.reproduce.experiments import EXPERIMENTS, _baseline_one_replica
from service.reproduce.plan import DESIGNS, PROFILES
from service.reproduce.verdicts import FAILS, HOLDS, UNSURE, equivalence_outcome, verdict_replicas


def stat(mean, low=None, high=None) -> dict:
    low = mean if low is None else low
    high = mean if high is None else high
    return {"mean": mean, "ci_low": low, "ci_high": high, "bound": None}


def test_the_tolerance_is_the_documented_one() -> None:
    assert v.REPLICA_TOLERANCE == 0.01
    assert dict((n, val) for n, val, _ in v.THRESHOLDS)["REPLICA_TOLERANCE"] == "± 0.01"


@pytest.mark.parametrize(
    ("delta", "outcome", "verdict"),
    [
        (stat(0.0, -0.002, 0.003), "same", HOLDS),  # the whole CI inside ± 0.01
        (stat(0.0, -0.01, 0.01), "same", HOLDS),  # the ends of the band count as inside
        (stat(0.0), "same", HOLDS),  # one seed, identical numbers
        (stat(0.003, -0.008, 0.012), "unclear", UNSURE),  # small, but the CI leaves the band
        (stat(-0.02, -0.03, -0.005), "unclear", UNSURE),  # mostly below, the CI reaches in
        (stat(-0.03, -0.04, -0.02), "differs", FAILS),  # wholly below −0.01
        (stat(0.02, 0.011, 0.03), "differs", FAILS),  # wholly above +0.01
        (stat(0.02, 0.01, 0.03), "unclear", UNSURE),  # touching the band is not outside it
        ({"mean": None, "ci_low": None, "ci_high": None}, "unclear", UNSURE),
        (stat(0.0, None, 0.001) | {"ci_low": None}, "unclear", UNSURE),
    ],
)
def test_equivalence_rule(delta, outcome, verdict) -> None:
    assert equivalence_outcome(delta, 0.01) == outcome
    assert verdict_replicas(delta) == verdict


# ----------------------------------------------------------------------- the analysis

# arm (replicas, norm) → final test accuracy per seed 0, 1, 2
FINAL_ACC = {
    (1, "batchnorm"): [0.850, 0.860, 0.840],
    (2, "batchnorm"): [0.820, 0.835, 0.810],  # ghost BN over 8: 2.5–3 points worse
    (2, "sync_batchnorm"): [0.851, 0.859, 0.841],  # the same up to float order
    (1, "sync_batchnorm"): [0.850, 0.860, 0.840],
}
# steps at which each arm first reaches 0.84 (the curves below): ghost BN is slower
REACH_STEP = {1: 200, 2: 300}


def replica_runs() -> list[RunData]:
    runs = []
    for (replicas, norm), accs in FINAL_ACC.items():
        ghost = (replicas, norm) == (2, "batchnorm")
        for seed, acc in enumerate(accs):
            spec = {"model": {"norm": norm}, "replicas": replicas, "seed": seed, "steps": 400}
            summary = {"final_test_acc": acc, "best_test_acc": acc}
            values = [0.1, 0.6, 0.7, 0.845, acc] if ghost else [0.1, 0.7, 0.845, 0.845, acc]
            test_acc = [(i * 100, x) for i, x in enumerate(values)]
            run_id = f"r{replicas}-{norm}-{seed}"
            runs.append(
                RunData(
                    id=run_id,
                    name=run_id,
                    spec=spec,
                    summary=summary,
                    metrics={"test_acc": test_acc},
                )
            )
    return runs


def sweep_data(runs: list[RunData]) -> SweepData:
    out = [
        {"id": r.id, "name": r.name, "spec": r.spec, "summary": r.summary, "status": r.status}
        for r in runs
    ]
    plan = DESIGNS["replicas-digits"].plan(PROFILES["tiny"])
    query = _baseline_one_replica(plan, out)
    assert query == {"baseline": "r1-batchnorm-0"}
    comparison = compare(runs, baseline_id=query["baseline"], target=0.84, points=1000)
    return SweepData(plan, "s", out, comparison.to_dict())


def test_sync_matches_one_process_and_ghost_bn_differs() -> None:
    finding = analyse_replicas(sweep_data(replica_runs()))
    n = finding.numbers
    assert n["replicas"] == 2 and n["batch_size"] == 16
    # paired Δ per seed: sync +0.001, −0.001, +0.001; ghost −0.030, −0.025, −0.030
    assert n["sync_delta"]["mean"] == pytest.approx(0.001 / 3)
    assert -0.001 - 1e-12 <= n["sync_delta"]["ci_low"] <= n["sync_delta"]["ci_high"] <= 0.0011
    assert n["ghost_delta"]["mean"] == pytest.approx(-0.085 / 3)
    assert n["ghost_delta"]["ci_high"] <= -0.025 + 1e-12
    assert finding.verdict == HOLDS and n["ghost_outcome"] == "differs"
    assert verdict_from_numbers("replica-statistics", n) == HOLDS
    rows = {row["arm"]: row for row in finding.table}
    assert rows["2 replicas, batchnorm (ghost)"]["per-replica batch"] == 8
    assert rows["1 replica, batchnorm"]["per-replica batch"] == 16
    # steps to 0.84: 200 in the reference, 300 with ghost BN (speed-up 2/3)
    assert rows["1 replica, batchnorm"]["steps to target"] == "200"
    assert rows["2 replicas, batchnorm (ghost)"]["steps to target"] == "300"
    assert rows["2 replicas, batchnorm (ghost)"]["speed-up"] == "0.67×"
    assert rows["2 replicas, sync_batchnorm"]["speed-up"] == "1.00×"
    assert "ghost BN differs" in finding.reason


def test_a_synchronized_arm_off_by_points_does_not_hold() -> None:
    runs = replica_runs()
    for run in runs:  # the synchronized arm 3 points lower on every seed
        if run.spec["replicas"] == 2 and run.spec["model"]["norm"] == "sync_batchnorm":
            run.summary["final_test_acc"] -= 0.03
    finding = analyse_replicas(sweep_data(runs))
    assert finding.verdict == FAILS
    assert verdict_from_numbers("replica-statistics", finding.numbers) == FAILS


def test_a_failed_run_makes_it_inconclusive() -> None:
    data = sweep_data(replica_runs())
    data.runs[0]["status"] = "failed"
    finding = analyse_replicas(data)
    assert finding.verdict == UNSURE and finding.numbers == {"failed_runs": 1}


def test_both_replica_experiments_use_the_same_analysis() -> None:
    by_name = {e.name: e for e in EXPERIMENTS}
    assert by_name["replica-statistics"].sweep == "replicas-digits"
    assert by_name["fashion-replica-statistics"].sweep == "fashion-replicas"
    quick = DESIGNS["replicas-digits"].plan(PROFILES["quick"])
    assert quick.grid == {
        "replicas": [1, 2],
        "model.norm": ["batchnorm", "sync_batchnorm"],
        "seed": [0, 1],
    }
    report = DESIGNS["fashion-replicas"].plan(PROFILES["report"])
    # 2 replicas, not 4: a worker holds one replica per CPU by default (2-core machines)
    assert report.base["dataset"] == "fashion_mnist" and report.base["batch_size"] == 16
    assert report.grid["replicas"] == [1, 2] and report.grid["seed"] == [0, 1, 2]
    assert not DESIGNS["replicas-digits"].runs_in(PROFILES["report"])
