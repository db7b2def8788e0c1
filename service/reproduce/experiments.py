"""The experiments: one entry per claim of the paper, in the order the report shows them.

An :class:`Experiment` ties a claim to the sweep it analyses (a key of ``plan.SWEEPS``), the
analysis that turns the sweep into a finding (``analyses.py``), an optional extra
``GET /compare`` query, and the check that re-derives its verdict from the finding's saved
numbers (what a reader of ``reproduction.json``, or a test, uses to see that no verdict was set
by hand).

Adding an experiment is one entry in :data:`EXPERIMENTS` (plus its sweep in ``plan.py`` if
it needs a new one, and its analysis and verdict rule); the runner and the report take it
from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.reproduce.analyses import (
    analyse_faster_training,
    analyse_higher_learning_rates,
    analyse_inference_statistics,
    analyse_regularization,
    analyse_saturating,
    analyse_stable_distributions,
)
from service.reproduce.analyses_real import (
    analyse_bn_vs_dropout,
    analyse_conv_table,
    analyse_faster_training_horizons,
)
from service.reproduce.analyses_replicas import analyse_replicas
from service.reproduce.plan import BASE_LR, DESIGNS, Profile, SweepPlan
from service.reproduce.results import Finding, SweepData, best_baseline_lr, is_bn, lr_of
from service.reproduce.verdicts import (
    UNSURE,
    Verdict,
    verdict_bn_vs_dropout,
    verdict_faster_training,
    verdict_higher_learning_rates,
    verdict_inference_statistics,
    verdict_regularization,
    verdict_replicas,
    verdict_saturating,
    verdict_stable_distributions,
)

Numbers = dict[str, Any]
CompareQuery = Callable[[SweepPlan, list[dict[str, Any]]], dict[str, Any]]


@dataclass(frozen=True)
class Experiment:
    name: str  # for --only
    title: str
    claim: str
    paper: str
    sweep: str  # the SweepDesign key it analyses
    analyse: Callable[[SweepData], Finding]
    # The verdict again, from the Finding's ``numbers`` alone (as saved in reproduction.json).
    recheck: Callable[[Numbers], Verdict]
    # Extra /compare query for this experiment (baseline, target); None = the API's defaults.
    compare_query: CompareQuery | None = None
    # Further sweeps whose runs join ``sweep``'s in one comparison (the conv-net table's rows).
    more_sweeps: tuple[str, ...] = ()

    @property
    def sweeps(self) -> tuple[str, ...]:
        return (self.sweep, *self.more_sweeps)

    def runs_in(self, profile: Profile) -> bool:
        return all(DESIGNS[key].runs_in(profile) for key in self.sweeps)


def _baseline_at_base_lr(plan: SweepPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Experiment 3 compares against the baseline at ITS learning rate (the 1× arm)."""
    candidates = [
        r for r in runs if not is_bn(r["spec"]) and abs(lr_of(r["spec"]) - BASE_LR) < 1e-12
    ]
    first = min(candidates, key=lambda r: r["spec"].get("seed", 0))
    return {"baseline": first["id"]}


def _baseline_at_best_lr(plan: SweepPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The conv-net table compares against the no-BN arm at its best LR (``best_baseline_lr``)."""
    lr = best_baseline_lr(runs)
    candidates = [r for r in runs if not is_bn(r["spec"]) and abs(lr_of(r["spec"]) - lr) < 1e-12]
    first = min(candidates, key=lambda r: r["spec"].get("seed", 0))
    return {"baseline": first["id"]}


def _baseline_one_replica(plan: SweepPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The replicas experiment races every arm against one process with plain BN."""
    candidates = [
        r
        for r in runs
        if int(r["spec"].get("replicas", 1)) == 1 and r["spec"]["model"]["norm"] == "batchnorm"
    ]
    first = min(candidates, key=lambda r: r["spec"].get("seed", 0))
    return {"baseline": first["id"]}


def _recheck_bn_vs_dropout(n: Numbers) -> Verdict:
    return verdict_bn_vs_dropout(n["plain_overfits"], n["vs_dropout"], n["vs_plain"])


def _recheck_faster(n: Numbers) -> Verdict:
    return verdict_faster_training(n["speedup"], n["bn_n_reached"], n["bn_n"], n["target"])


EXPERIMENTS: list[Experiment] = [
    # ---- Real data (Fashion-MNIST): the report and paper profiles ----
    Experiment(
        "fashion-faster-training",
        "A. Faster training: the MNIST protocol on Fashion-MNIST",
        "BN reaches the baseline's accuracy in far fewer steps; the estimate at several "
        "targets and horizons.",
        "Fig. 1a (784-100-100-100-10 sigmoid, batch 60)",
        "fashion-mlp",
        analyse_faster_training_horizons,
        _recheck_faster,
    ),
    Experiment(
        "fashion-stable-distributions",
        "B. Stable input distributions (Fashion-MNIST)",
        "With BN the distribution of a layer's inputs stays put during training; without it, "
        "its mean and spread drift.",
        "Fig. 1b/c",
        "fashion-mlp",
        analyse_stable_distributions,
        lambda n: verdict_stable_distributions(n["stability"]),
    ),
    Experiment(
        "conv-table",
        "C. The conv-net table (the ImageNet table on Fashion-MNIST)",
        "BN networks reach the baseline's max accuracy in far fewer steps, at higher learning "
        "rates, and with sigmoid.",
        "Inception vs BN-Baseline, BN-x5, BN-x30, BN-x5-Sigmoid (Sec. 4.2)",
        "inception-baseline",
        analyse_conv_table,
        _recheck_faster,
        _baseline_at_best_lr,
        more_sweeps=("inception-bn", "inception-bn-sigmoid"),
    ),
    Experiment(
        "fashion-regularization",
        "D. Regularization: BN instead of dropout (Fashion-MNIST)",
        "BN regularizes about as much as dropout: without dropout, a BN network generalizes as "
        "well as a dropout network and better than an unregularized one.",
        'Sec. 3.4; "remove dropout" (Sec. 4.2.1)',
        "fashion-regularization",
        analyse_bn_vs_dropout,
        _recheck_bn_vs_dropout,
    ),
    Experiment(
        "fashion-inference-statistics",
        "E. Inference statistics (Fashion-MNIST)",
        "Inference should use fixed population statistics, not the current batch's.",
        "Algorithm 2",
        "fashion-mlp",
        analyse_inference_statistics,
        lambda n: verdict_inference_statistics(n["gain"]),
    ),
    Experiment(
        "fashion-replica-statistics",
        "F. Statistics across replicas (Fashion-MNIST, 2 × 8 vs 1 × 16)",
        "Synchronized BN statistics make a data-parallel run train like one process at the "
        "same global batch; per-replica (ghost) statistics over a small slice may not.",
        "Sec. 3 (statistics over the mini-batch); data-parallel practice, not a paper claim",
        "fashion-replicas",
        analyse_replicas,
        lambda n: verdict_replicas(n["sync_delta"]),
        _baseline_one_replica,
    ),
    # ---- Toy data (mnist1d, digits): every profile ----
    Experiment(
        "faster-training",
        "1. Faster training",
        "BN reaches the baseline's accuracy in far fewer steps.",
        "Fig. 1a; the ImageNet table's steps-to-72.2 %",
        "mlp-sigmoid",
        analyse_faster_training,
        _recheck_faster,
    ),
    Experiment(
        "faster-training-digits",
        "1b. Faster training (digits)",
        "BN reaches the baseline's accuracy in far fewer steps (a second dataset).",
        "Fig. 1a",
        "mlp-sigmoid-digits",
        analyse_faster_training,
        _recheck_faster,
    ),
    Experiment(
        "stable-distributions",
        "2. Stable input distributions",
        "With BN the distribution of a layer's inputs stays put during training; without it, "
        "its mean and spread drift.",
        "Fig. 1b/c",
        "mlp-sigmoid",
        analyse_stable_distributions,
        lambda n: verdict_stable_distributions(n["stability"]),
    ),
    Experiment(
        "higher-learning-rates",
        "3. Higher learning rates",
        "BN tolerates much higher learning rates; without BN they diverge or stall.",
        "BN-x5 / BN-x30 in the ImageNet table",
        "learning-rates",
        analyse_higher_learning_rates,
        lambda n: verdict_higher_learning_rates(n["baseline"], n["bn"]),
        _baseline_at_base_lr,
    ),
    Experiment(
        "saturating-nonlinearities",
        "4. Saturating nonlinearities",
        "BN makes a deep sigmoid network trainable; without BN it stays near chance.",
        "BN-x5-Sigmoid vs Inception with sigmoid",
        "deep-sigmoid",
        analyse_saturating,
        lambda n: verdict_saturating(n["baseline_best"]["mean"], n["bn_best"]["mean"]),
    ),
    Experiment(
        "inference-statistics",
        "5. Inference statistics",
        "Inference should use fixed population statistics, not the current batch's.",
        "Algorithm 2",
        "mlp-sigmoid",
        analyse_inference_statistics,
        lambda n: verdict_inference_statistics(n["gain"]),
    ),
    Experiment(
        "regularization",
        "6. Regularization (toy design: saturates, superseded by D)",
        "BN regularizes: a smaller train–test gap (less need for dropout).",
        "Section 3.4",
        "regularization",
        analyse_regularization,
        lambda n: verdict_regularization(n["reduction"]),
    ),
    Experiment(  # quick and full; report and paper run F instead
        "replica-statistics",
        "7. Statistics across replicas (digits, 2 × 8 vs 1 × 16)",
        "Synchronized BN statistics make a data-parallel run train like one process at the "
        "same global batch; per-replica (ghost) statistics over a small slice may not.",
        "Sec. 3 (statistics over the mini-batch); data-parallel practice, not a paper claim",
        "replicas-digits",
        analyse_replicas,
        lambda n: verdict_replicas(n["sync_delta"]),
        _baseline_one_replica,
    ),
]
EXPERIMENT_NAMES = [e.name for e in EXPERIMENTS]  # for help texts; the code reads EXPERIMENTS


def select_experiments(
    only: Sequence[str] | None, profile: Profile | None = None
) -> list[Experiment]:
    """The experiments named in ``only`` (all when None/empty), in suite order; with a
    ``profile``, only those whose sweeps run in it (naming one that does not is an error)."""
    names = [e.name for e in EXPERIMENTS]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(
            f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(names)}"
        )
    chosen = [e for e in EXPERIMENTS if not only or e.name in only]
    if profile is None:
        return chosen
    absent = [e.name for e in chosen if only and not e.runs_in(profile)]
    if absent:
        raise ValueError(
            f"experiment(s) {', '.join(absent)} do not run in the {profile.name!r} profile"
        )
    return [e for e in chosen if e.runs_in(profile)]


def verdict_from_numbers(experiment: str, numbers: Numbers) -> Verdict:
    """Re-derive an experiment's verdict from the numbers its Finding (or the JSON report)
    carries: what a reader, or a test, uses to check that no verdict was set by hand."""
    if numbers.get("failed_runs"):
        return UNSURE
    for candidate in EXPERIMENTS:
        if candidate.name == experiment:
            return candidate.recheck(numbers)
    raise ValueError(f"unknown experiment {experiment!r}")
