"""`bnlab reproduce`: the paper's claims checked through the public API, with a report.

Ioffe & Szegedy (2015) make claims bnlab can test on offline data (docs/reproduction.md is the
latest report). Each claim is an experiment that analyses one sweep (or several compared
together, as the conv-net table's rows); several experiments may
share a sweep (the Fig. 1 runs answer "faster", "stable distributions" and "inference
statistics" at once), so each sweep is trained once.

    with embedded_client() as client:                    # or BnlabClient("http://host:8000")
        result = run_suite(client, quick=True, only=None, out_dir=Path("docs"))
        result = run_suite(client, quick=False, profile="report", only=None, out_dir=...)

Profiles (``plan.PROFILES``): ``quick`` (toy data, minutes, CI), ``report`` (Fashion-MNIST
and the toy data, the committed report), ``paper`` (the paper's step counts, hours; reuses
finished runs when rerun), ``full`` (toy data, 3 seeds), ``tiny`` (tests).

The modules, each importing only those above it (no cycles):

- ``verdicts``: thresholds as named constants, the decision rules and their wording;
- ``plan``: profiles (how much training) and the sweeps (``SWEEPS``, one entry per sweep);
- ``results``: the data that flows through (API answers in, findings out) and its JSON;
- ``analyses``: one ``analyse_*`` per claim, from a sweep's numbers to a finding (toy data);
- ``horizons``: steps-to-target at several targets and horizons, and the plateau check;
- ``analyses_real``: the real-data analyses (MNIST protocol with horizons, the conv-net table,
  BN vs dropout);
- ``analyses_replicas``: per-replica vs synchronized BN statistics in data-parallel runs;
- ``experiments``: the claims (``EXPERIMENTS``, one entry per claim) and their re-checks;
- ``report``: the Markdown report and its figures;
- ``reuse``: which runs already on the server stand in for planned ones (resuming a suite);
- ``runner``: submitting, waiting and analysing through :class:`service.client.BnlabClient`;
- ``embedded``: an in-process server, the package's only door to ``service.app``.

Extending the suite: a new sweep is one entry in ``plan.SWEEPS`` and a new experiment one
entry in ``experiments.EXPERIMENTS``; the runner trains whatever sweeps the selected
experiments name and the report shows whatever findings come back. For example, the MNIST
protocol on MNIST itself (IDX files a user brings to the server's data directory), in the
paper profile, reusing the horizon analysis and the faster-training rule::

    SweepDesign("mnist-mlp", steps={"paper": 50_000, "tiny": 60},
                changes={"dataset": "mnist_idx", "data_path": "mnist"},
                eval_every={"paper": 500})                                  # plan.SWEEPS
    Experiment("mnist-faster-training", "A2. Faster training (MNIST)", claim,
               "Fig. 1a", "mnist-mlp", analyse_faster_training_horizons,
               _recheck_faster)                                             # EXPERIMENTS

A sweep runs in the profiles its ``steps`` name, and an experiment in the profiles all its
sweeps run in. A claim that needs new numbers adds an ``analyse_*`` (``analyses`` for toy
data, ``analyses_real`` for real data; reading arms with
``SweepData.arm(bn=..., where={"model.dropout": 0.5})``), its rule, wording and thresholds in
``verdicts`` (``THRESHOLDS`` puts them in the report), and its ``recheck`` in the entry. An
experiment may compare several sweeps (``more_sweeps``), and a sweep may take its learning
rate from another's result (``SweepDesign.tuned_lr_from``), as the conv-net table does.

This module re-exports the names other code uses. ``embedded_client`` is looked up on first
use, so importing the suite (for ``--server`` runs, or its plan) does not load the server app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.reproduce.analyses import (
    analyse_faster_training,
    analyse_higher_learning_rates,
    analyse_inference_statistics,
    analyse_regularization,
    analyse_saturating,
    analyse_stable_distributions,
    difference_ci,
    run_drift,
)
from service.reproduce.experiments import (
    EXPERIMENT_NAMES,
    EXPERIMENTS,
    Experiment,
    select_experiments,
    verdict_from_numbers,
)
from service.reproduce.plan import (
    BASE_LR,
    LR_MULTIPLIERS,
    PROFILES,
    SWEEPS,
    Profile,
    SweepDesign,
    SweepPlan,
    describe_plan,
    sweep_plans,
)
from service.reproduce.report import REPORT_NAME, VERDICT_MARK, bar_figure, write_report
from service.reproduce.results import (
    NUMBERS_NAME,
    ExperimentResult,
    Finding,
    SuiteResult,
    SweepData,
    load_numbers,
    save_numbers,
)
from service.reproduce.runner import (
    COMPARE_POINTS,
    POLL_INTERVAL_S,
    Progress,
    obtain_runs,
    run_experiment,
    run_suite,
    suite_stages,
    wait_for_runs,
)
from service.reproduce.verdicts import (
    CHANCE_ACC,
    FAILS,
    HOLDS,
    MIN_GAP_REDUCTION,
    MIN_INFERENCE_GAIN,
    MIN_SPEEDUP,
    MIN_STABILITY_FACTOR,
    NEAR_CHANCE_MARGIN,
    REACH_FRACTION,
    TRAINS_MARGIN,
    UNSURE,
    ArmOutcome,
    Verdict,
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

if TYPE_CHECKING:
    from service.reproduce.embedded import embedded_client


def __getattr__(name: str) -> Any:
    """``embedded_client``, imported on first use (it brings in the server app)."""
    if name == "embedded_client":
        from service.reproduce import embedded

        return embedded.embedded_client
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BASE_LR",
    "CHANCE_ACC",
    "COMPARE_POINTS",
    "EXPERIMENTS",
    "EXPERIMENT_NAMES",
    "FAILS",
    "HOLDS",
    "LR_MULTIPLIERS",
    "MIN_GAP_REDUCTION",
    "MIN_INFERENCE_GAIN",
    "MIN_SPEEDUP",
    "MIN_STABILITY_FACTOR",
    "NEAR_CHANCE_MARGIN",
    "NUMBERS_NAME",
    "POLL_INTERVAL_S",
    "PROFILES",
    "REACH_FRACTION",
    "REPORT_NAME",
    "SWEEPS",
    "TRAINS_MARGIN",
    "UNSURE",
    "VERDICT_MARK",
    "ArmOutcome",
    "Experiment",
    "ExperimentResult",
    "Finding",
    "Profile",
    "Progress",
    "SuiteResult",
    "SweepData",
    "SweepDesign",
    "SweepPlan",
    "Verdict",
    "analyse_faster_training",
    "analyse_higher_learning_rates",
    "analyse_inference_statistics",
    "analyse_regularization",
    "analyse_saturating",
    "analyse_stable_distributions",
    "arm_outcome",
    "bar_figure",
    "describe_plan",
    "difference_ci",
    "effect_verdict",
    "embedded_client",
    "explain_effect",
    "load_numbers",
    "run_drift",
    "obtain_runs",
    "run_experiment",
    "run_suite",
    "save_numbers",
    "select_experiments",
    "suite_stages",
    "sweep_plans",
    "verdict_faster_training",
    "verdict_from_numbers",
    "verdict_higher_learning_rates",
    "verdict_inference_statistics",
    "verdict_regularization",
    "verdict_saturating",
    "verdict_stable_distributions",
    "wait_for_runs",
    "write_report",
]
