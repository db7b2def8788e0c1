"""`bnlab reproduce`: the paper's claims checked through the public API, with a report.

Ioffe & Szegedy (2015) make six claims bnlab can test on offline data (docs/reproduction.md is the
latest report). Each claim is an :class:`Experiment` that analyses one sweep; several
experiments may share a sweep (the Fig. 1 runs answer "faster", "stable distributions" and
"inference statistics" at once), so each sweep is trained once.

    with BnlabClient("http://host:8000") as client:            # or embedded_client(...)
        result = run_suite(client, quick=True, only=None, out_dir=Path("docs"))

The suite talks to the server only through :class:`service.client.BnlabClient`
(POST /sweeps, GET /sweeps/{id}, GET /compare, GET /compare/plot), so it runs the same against
an embedded in-process server or a remote deployment. Every verdict is computed from the
measured numbers by the ``verdict_*`` functions below, against the named thresholds, and the
report states those thresholds next to each verdict.

Verdicts: "holds", "does not hold", "inconclusive". Effects measured over seeds use the
comparison layer's bootstrap (95 % percentile CI): a claim *holds* when the effect reaches its
threshold and its CI excludes "no effect"; it *does not hold* when the CI's upper end stays below
the threshold; anything between is inconclusive. With one seed (``--quick``) the CI collapses to
the single value, which the report says.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Literal

from service.client import FINISHED_STATUSES, BnlabClient
from service.compare import bootstrap_ci, mean_ci, speedup_ci

Verdict = Literal["holds", "does not hold", "inconclusive"]
HOLDS: Verdict = "holds"
FAILS: Verdict = "does not hold"
UNSURE: Verdict = "inconclusive"
Progress = Callable[[int, int, str], None]  # (runs finished, runs in the suite, message)

# ------------------------------------------------------------------------------ thresholds
# Named here, stated in the report, never applied by hand.

CHANCE_ACC = 0.10  # ten classes (mnist1d, digits)
NEAR_CHANCE_MARGIN = 0.05  # best accuracy ≤ chance + this: the network did not train
TRAINS_MARGIN = 0.15  # best accuracy ≥ chance + this: the network trains
MIN_SPEEDUP = 2.0  # experiment 1: "far fewer steps" = at least twice as fast
MIN_STABILITY_FACTOR = 2.0  # experiment 2: the baseline's median drifts at least twice as much
MIN_INFERENCE_GAIN = 0.005  # experiment 5: fixed statistics beat batch statistics by ≥ 0.5 points
MIN_GAP_REDUCTION = 0.02  # experiment 6: BN shrinks the train-test gap by ≥ 2 points
REACH_FRACTION = 0.5  # an arm "reaches" the target when more than half its seeds do
LR_MULTIPLIERS = (1, 5, 30)  # the paper's BN-Baseline, BN-x5, BN-x30
FAILED_STATUSES = frozenset({"failed", "cancelled"})  # runs that measured nothing
POLL_INTERVAL_S = 2.0
COMPARE_POINTS = 1000  # enough to keep every evaluation of every run (no downsampling)


# ------------------------------------------------------------------------------ profiles


@dataclass(frozen=True)
class Profile:
    """How much training the suite does: steps per sweep, seeds shared unless overridden."""

    name: str
    seeds: tuple[int, ...]
    steps: dict[str, int]  # sweep key → training steps
    eval_every: int
    log_every: int
    more_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)  # sweep key → seeds

    def seeds_for(self, sweep: str) -> list[int]:
        return list(self.more_seeds.get(sweep, self.seeds))


PROFILES = {
    "full": Profile(
        "full",
        (0, 1, 2),
        {
            "mlp-sigmoid": 3000,
            "mlp-sigmoid-digits": 3000,
            "learning-rates": 1500,
            "deep-sigmoid": 1500,
            "regularization": 1500,
        },
        eval_every=100,
        log_every=10,
        # The gap difference is small next to its seed-to-seed spread: more seeds to decide it.
        more_seeds={"regularization": (0, 1, 2, 3, 4)},
    ),
    "quick": Profile(
        "quick",
        (0,),
        {
            "mlp-sigmoid": 1500,
            "mlp-sigmoid-digits": 2000,  # the baseline leaves its plateau at ~1,700 steps
            "learning-rates": 1000,
            "deep-sigmoid": 800,
            "regularization": 800,
        },
        eval_every=100,
        log_every=20,
    ),
    # Tests only: seconds per run, numbers meaningless; checks the plumbing, not the paper.
    "tiny": Profile(
        "tiny",
        (0,),
        {
            "mlp-sigmoid": 120,
            "mlp-sigmoid-digits": 60,
            "learning-rates": 60,
            "deep-sigmoid": 60,
            "regularization": 60,
        },
        eval_every=20,
        log_every=20,
    ),
}


# ------------------------------------------------------------------------------ sweeps

BASE_LR = 0.5  # plain SGD on the 3×100 sigmoid MLP: the baseline's LR in experiments 1-3


def _mlp_spec(name: str, profile: Profile, **changes: Any) -> dict[str, Any]:
    """The paper's MNIST network (3×100 sigmoid, batch 60, plain SGD) on mnist1d."""
    spec: dict[str, Any] = {
        "name": name,
        "dataset": "mnist1d",
        "model": {"arch": "mlp", "hidden": [100, 100, 100], "activation": "sigmoid"},
        "optimizer": {"name": "sgd", "lr": BASE_LR, "momentum": 0.0},
        "batch_size": 60,
        "steps": profile.steps[name],
        "eval_every": profile.eval_every,
        "log_every": profile.log_every,
        "seed": 0,
    }
    for path, value in changes.items():
        node = spec
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return spec


@dataclass(frozen=True)
class SweepPlan:
    key: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]

    @property
    def runs(self) -> int:
        count = 1
        for values in self.grid.values():
            count *= len(values)
        return count


def sweep_plans(profile: Profile) -> dict[str, SweepPlan]:
    """The five sweeps the experiments analyse (settings calibrated on mnist1d, 2 cores)."""
    seeds = profile.seeds_for
    norms = ["none", "batchnorm"]
    plans = [
        SweepPlan(
            "mlp-sigmoid",
            _mlp_spec("mlp-sigmoid", profile),
            {"model.norm": norms, "seed": seeds("mlp-sigmoid")},
        ),
        SweepPlan(
            "mlp-sigmoid-digits",
            _mlp_spec("mlp-sigmoid-digits", profile, dataset="digits"),
            {"model.norm": norms, "seed": seeds("mlp-sigmoid-digits")},
        ),
        SweepPlan(
            "learning-rates",
            _mlp_spec("learning-rates", profile),
            {
                "model.norm": norms,
                "optimizer.lr": [BASE_LR * m for m in LR_MULTIPLIERS],
                "seed": seeds("learning-rates"),
            },
        ),
        SweepPlan(
            "deep-sigmoid",
            _mlp_spec("deep-sigmoid", profile, **{"model.hidden": [64] * 10, "optimizer.lr": 1.0}),
            {"model.norm": norms, "seed": seeds("deep-sigmoid")},
        ),
        # ReLU with momentum on 1,000 examples: both arms fit the training set completely, so
        # the gap measures generalisation rather than how far each arm got.
        SweepPlan(
            "regularization",
            _mlp_spec(
                "regularization",
                profile,
                **{
                    "model.activation": "relu",
                    "optimizer.lr": 0.05,
                    "optimizer.momentum": 0.9,
                    "train_size": 1000,
                },
            ),
            {"model.norm": norms, "seed": seeds("regularization")},
        ),
    ]
    return {plan.key: plan for plan in plans}


# ------------------------------------------------------------------------------ results


@dataclass
class SweepData:
    """What the API returned for one finished sweep and one experiment's comparison query."""

    plan: SweepPlan
    sweep_id: str
    runs: list[dict[str, Any]]  # RunOut, as GET /sweeps/{id} lists them
    comparison: dict[str, Any]  # Comparison.to_dict(), from GET /compare


@dataclass
class Finding:
    """One experiment's outcome: its numbers, the verdict derived from them, and why."""

    verdict: Verdict
    measured: str  # one line for the headline table
    reason: str  # the numbers held against the thresholds
    rule: str  # the decision rule, thresholds included
    numbers: dict[str, Any]  # everything the verdict was computed from (JSON-ready)
    table: list[dict[str, Any]] = field(default_factory=list)  # the section's table rows
    notes: list[str] = field(default_factory=list)
    # A grouped bar chart of summary numbers (group → bar → value), drawn next to the API's
    # comparison figure where curves alone do not show the claim.
    bars: dict[str, dict[str, float | None]] = field(default_factory=dict)
    bars_title: str = ""


@dataclass
class ExperimentResult:
    name: str
    title: str
    claim: str
    paper: str
    sweep: str
    sweep_id: str
    settings: str
    finding: Finding
    figures: list[str]  # paths relative to the report


@dataclass
class SuiteResult:
    profile: str
    out_dir: Path
    report: Path
    results: list[ExperimentResult]
    wall_time: float
    runs: int
    environment: dict[str, Any]

    @property
    def verdicts(self) -> dict[str, Verdict]:
        return {r.name: r.finding.verdict for r in self.results}


# ------------------------------------------------------------------------------ verdicts


def effect_verdict(
    estimate: float | None,
    ci_low: float | None,
    ci_high: float | None,
    *,
    threshold: float,
    null: float,
) -> Verdict:
    """holds: the estimate reaches ``threshold`` and the CI excludes ``null`` (no effect);
    does not hold: even the CI's upper end is below ``threshold``; inconclusive otherwise."""
    if estimate is None or ci_low is None or ci_high is None:
        return UNSURE
    if estimate >= threshold and ci_low > null:
        return HOLDS
    if ci_high < threshold:
        return FAILS
    return UNSURE


def verdict_faster_training(
    speedup: dict[str, Any], n_reached: int, n: int, target: float | None = None
) -> Verdict:
    """Experiment 1 from the BN arm's speed-up (a Comparison arm's ``speedup`` dict).

    A target near chance (the baseline never learned) makes the race meaningless: inconclusive.

    BN that never reaches the target is not faster. A censored BN arm (``bound == "upper"``:
    some seeds never reached it) can only fail or stay open: its speed-up is an upper bound.
    """
    if n == 0 or (target is not None and target <= CHANCE_ACC + NEAR_CHANCE_MARGIN):
        return UNSURE
    if n_reached == 0:
        return FAILS
    estimate, low, high = speedup.get("mean"), speedup.get("ci_low"), speedup.get("ci_high")
    if speedup.get("bound") == "upper":
        return FAILS if estimate is not None and estimate < MIN_SPEEDUP else UNSURE
    return effect_verdict(estimate, low, high, threshold=MIN_SPEEDUP, null=1.0)


def verdict_stable_distributions(stability: dict[str, Any]) -> Verdict:
    """Experiment 2 from the stability factor: baseline drift ÷ BN drift, with its CI."""
    return effect_verdict(
        stability.get("mean"),
        stability.get("ci_low"),
        stability.get("ci_high"),
        threshold=MIN_STABILITY_FACTOR,
        null=1.0,
    )


ArmOutcome = Literal["reaches", "fails", "mixed"]


def arm_outcome(n_reached: int, n: int) -> ArmOutcome:
    """An arm reaches the target when more than REACH_FRACTION of its seeds do, fails when none
    does; in between its outcome is mixed."""
    if n and n_reached / n > REACH_FRACTION:
        return "reaches"
    return "fails" if n_reached == 0 else "mixed"


def verdict_higher_learning_rates(
    baseline: dict[Any, ArmOutcome], bn: dict[Any, ArmOutcome]
) -> Verdict:
    """Experiment 3 from which learning rates reach the target, per arm (LR → outcome; the LR keys
    may be numbers or, read back from JSON, their text).

    holds: BN reaches it at some LR where the baseline fails, and at every LR where the
    baseline reaches it; does not hold: there is no LR where BN reaches it and the baseline
    fails; inconclusive otherwise (an arm in between decides it)."""
    lrs = sorted(set(baseline) & set(bn))
    if not lrs:
        return UNSURE
    gained = [lr for lr in lrs if bn[lr] == "reaches" and baseline[lr] == "fails"]
    lost = [lr for lr in lrs if baseline[lr] == "reaches" and bn[lr] != "reaches"]
    undecided = [lr for lr in lrs if "mixed" in (bn[lr], baseline[lr])]
    if gained and not lost:
        return HOLDS
    if not gained and not undecided:
        return FAILS
    return UNSURE


def verdict_saturating(baseline_best: float | None, bn_best: float | None) -> Verdict:
    """Experiment 4 from the mean best test accuracy of each arm (deep sigmoid network).

    holds: the baseline stays near chance and BN trains; does not hold: the baseline trains
    too, or BN stays near chance; inconclusive in between."""
    if baseline_best is None or bn_best is None:
        return UNSURE
    near_chance, trains = CHANCE_ACC + NEAR_CHANCE_MARGIN, CHANCE_ACC + TRAINS_MARGIN
    if baseline_best <= near_chance and bn_best >= trains:
        return HOLDS
    if baseline_best >= trains or bn_best <= near_chance:
        return FAILS
    return UNSURE


def verdict_inference_statistics(gain: dict[str, Any]) -> Verdict:
    """Experiment 5 from population-statistics accuracy minus batch-statistics accuracy (CI)."""
    return effect_verdict(
        gain.get("mean"),
        gain.get("ci_low"),
        gain.get("ci_high"),
        threshold=MIN_INFERENCE_GAIN,
        null=0.0,
    )


def verdict_regularization(reduction: dict[str, Any]) -> Verdict:
    """Experiment 6 from baseline gap minus BN gap (train-test accuracy, equal steps; CI)."""
    return effect_verdict(
        reduction.get("mean"),
        reduction.get("ci_low"),
        reduction.get("ci_high"),
        threshold=MIN_GAP_REDUCTION,
        null=0.0,
    )


def verdict_from_numbers(experiment: str, numbers: dict[str, Any]) -> Verdict:
    """Re-derive an experiment's verdict from the numbers its Finding (or the JSON report)
    carries: what a reader, or a test, uses to check that no verdict was set by hand."""
    if numbers.get("failed_runs"):
        return UNSURE
    if experiment in ("faster-training", "faster-training-digits"):
        return verdict_faster_training(
            numbers["speedup"], numbers["bn_n_reached"], numbers["bn_n"], numbers["target"]
        )
    if experiment == "stable-distributions":
        return verdict_stable_distributions(numbers["stability"])
    if experiment == "higher-learning-rates":
        return verdict_higher_learning_rates(numbers["baseline"], numbers["bn"])
    if experiment == "saturating-nonlinearities":
        return verdict_saturating(numbers["baseline_best"]["mean"], numbers["bn_best"]["mean"])
    if experiment == "inference-statistics":
        return verdict_inference_statistics(numbers["gain"])
    if experiment == "regularization":
        return verdict_regularization(numbers["reduction"])
    raise ValueError(f"unknown experiment {experiment!r}")


# ------------------------------------------------------------------------------ helpers


def _norm(spec: dict[str, Any]) -> str:
    return (spec.get("model") or {}).get("norm", "batchnorm")


def _lr(spec: dict[str, Any]) -> float:
    return float((spec.get("optimizer") or {}).get("lr", 0.0))


def _is_bn(spec: dict[str, Any]) -> bool:
    return _norm(spec) != "none"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(stat: dict[str, Any], digits: int = 3, unit: str = "") -> str:
    """ "2.41× [1.90, 3.10]" with ≤/≥ for a bound; "n/a" when missing."""
    if stat.get("mean") is None:
        return "n/a"
    bound = {"upper": "≤ ", "lower": "≥ "}.get(stat.get("bound") or "", "")
    text = f"{bound}{stat['mean']:.{digits}f}{unit}"
    low, high = stat.get("ci_low"), stat.get("ci_high")
    if low is not None and high is not None and low != high:  # one seed: no interval to show
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def explain_effect(
    stat: dict[str, Any], verdict: Verdict, *, threshold: float, null: float, digits: int
) -> str:
    """The comparison that decided an effect verdict, with enough digits to see it (a CI end
    of 0.0199 against a threshold of 0.02 must not read "0.020 < 0.02")."""
    est, low, high = stat.get("mean"), stat.get("ci_low"), stat.get("ci_high")
    if est is None or low is None or high is None:
        return "no estimate"

    def f(x: float) -> str:
        return f"{x:.{digits}f}"

    if verdict == HOLDS:
        return f"estimate {f(est)} ≥ {threshold:g} and CI lower end {f(low)} > {null:g}"
    if verdict == FAILS:
        return f"CI upper end {f(high)} < {threshold:g}"
    if est < threshold:
        return f"estimate {f(est)} < {threshold:g}, but CI upper end {f(high)} ≥ {threshold:g}"
    return f"estimate {f(est)} ≥ {threshold:g}, but CI lower end {f(low)} ≤ {null:g}"


def difference_ci(baseline: Sequence[float], arm: Sequence[float]) -> dict[str, Any]:
    """mean(baseline) − mean(arm) with the comparison layer's bootstrap CI (groups resampled
    independently)."""
    if not baseline or not arm:
        return {"mean": None, "ci_low": None, "ci_high": None, "bound": None}
    low, high = bootstrap_ci([baseline, arm], lambda b, a: b.mean(axis=1) - a.mean(axis=1))
    return {"mean": mean(baseline) - mean(arm), "ci_low": low, "ci_high": high, "bound": None}


def _failed_runs(data: SweepData) -> list[dict[str, Any]]:
    return [r for r in data.runs if r.get("status") in FAILED_STATUSES]


def _summary_values(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    values = [(r.get("summary") or {}).get(key) for r in runs]
    return [float(v) for v in values if v is not None]


def _mean_or_none(values: Sequence[float]) -> float | None:
    return mean(values) if values else None


def _seeds_note(n: int) -> list[str]:
    if n > 1:
        return []
    return ["One seed per arm: the interval is the single value, not a confidence interval."]


def _unusable(data: SweepData, rule: str) -> Finding | None:
    """Runs that failed (crashed, cancelled) measured nothing: no verdict can rest on them."""
    failed = _failed_runs(data)
    if not failed:
        return None
    names = ", ".join(f"{r.get('name')} ({r.get('status')})" for r in failed)
    return Finding(
        verdict=UNSURE,
        measured=f"{len(failed)} run(s) failed",
        reason=f"{len(failed)} of {len(data.runs)} runs did not complete: {names}.",
        rule=rule,
        numbers={"failed_runs": len(failed)},
    )


def _arm(comparison: dict[str, Any], *, bn: bool, lr: float | None = None) -> dict[str, Any]:
    """The comparison arm with (or without) BN, at learning rate ``lr`` where given. Every
    sweep here varies ``model.norm``, so each arm names its norm among its factors."""
    for arm in comparison["arms"]:
        factors = arm["factors"]
        if (factors.get("model.norm") != "none") != bn:
            continue
        if lr is not None and abs(float(factors.get("optimizer.lr", "nan")) - lr) > 1e-9:
            continue
        return arm
    raise LookupError(f"no {'BN' if bn else 'baseline'} arm at lr={lr} in the comparison")


def _bn_arm_labels(comparison: dict[str, Any]) -> set[str]:
    return {a["label"] for a in comparison["arms"] if a["factors"].get("model.norm") != "none"}


# ------------------------------------------------------------------------------ analyses


FASTER_RULE = (
    f"holds if BN's speed-up is ≥ {MIN_SPEEDUP:g}× and its 95 % CI lies above 1×; does not "
    f"hold if BN never reaches the target, or the CI's upper end is below {MIN_SPEEDUP:g}×; "
    "otherwise inconclusive; also inconclusive when the target is within "
    f"{NEAR_CHANCE_MARGIN:g} of chance ({CHANCE_ACC:g}): a baseline that never learned sets no "
    "accuracy to race to. Target: the baseline's best test accuracy (the lowest over its "
    "seeds), steps-to-target: the first evaluation at or above it."
)


def analyse_faster_training(data: SweepData) -> Finding:
    if (bad := _unusable(data, FASTER_RULE)) is not None:
        return bad
    c = data.comparison
    base, bn = _arm(c, bn=False), _arm(c, bn=True)
    verdict = verdict_faster_training(bn["speedup"], bn["n_reached"], bn["n"], c["target"])
    speedup = _fmt_ci(bn["speedup"], 2, "×")
    measured = (
        f"target {c['target']:.3f}: baseline {base['steps_to_target']['mean']:.0f} steps, "
        f"BN {_fmt_ci(bn['steps_to_target'], 0)} steps; speed-up {speedup}"
    )
    reason = f"BN reached the target in {bn['n_reached']}/{bn['n']} seeds; speed-up {speedup}"
    if c["target"] is not None and c["target"] <= CHANCE_ACC + NEAR_CHANCE_MARGIN:
        reason += f"; but the target {c['target']:.3f} is near chance: the baseline never learned."
    elif bn["n_reached"] and bn["speedup"].get("bound") != "upper":
        why = explain_effect(bn["speedup"], verdict, threshold=MIN_SPEEDUP, null=1.0, digits=3)
        reason += f": {why}."
    else:
        reason += " (censored: at most this)." if bn["n_reached"] else "."
    return Finding(
        verdict=verdict,
        measured=measured,
        reason=reason,
        rule=FASTER_RULE,
        numbers={
            "target": c["target"],
            "baseline_steps": base["steps_to_target"],
            "bn_steps": bn["steps_to_target"],
            "speedup": bn["speedup"],
            "bn_n_reached": bn["n_reached"],
            "bn_n": bn["n"],
            "p_value": bn["p_value"],
            "baseline_best": base["best"],
            "bn_best": bn["best"],
        },
        table=[_arm_row(arm) for arm in (base, bn)],
        notes=_seeds_note(bn["n"]),
    )


def _arm_row(arm: dict[str, Any]) -> dict[str, Any]:
    return {
        "arm": arm["label"],
        "seeds": arm["n"],
        "reached target": f"{arm['n_reached']}/{arm['n']}",
        "steps to target": _fmt_ci(arm["steps_to_target"], 0),
        "speed-up": _fmt_ci(arm["speedup"], 2, "×"),
        "best test acc": _fmt_ci(arm["best"], 3),
        "p (Mann-Whitney)": _fmt(arm["p_value"], 3),
    }


STABLE_RULE = (
    "Drift of a run = (max − min of the probed unit's median pre-activation over all "
    "evaluations, step 0 included) ÷ (its mean 15th–85th percentile spread). Stability factor "
    f"= mean baseline drift ÷ mean BN drift. Holds if the factor is ≥ {MIN_STABILITY_FACTOR:g} "
    f"and its 95 % CI lies above 1; does not hold if the CI's upper end is below "
    f"{MIN_STABILITY_FACTOR:g}; otherwise inconclusive."
)


def run_drift(curves: dict[str, list[list[float]]]) -> float | None:
    """The range of the median over training relative to the typical 15–85 spread."""
    p15, p50, p85 = ([v for _, v in curves.get(k) or []] for k in ("act_p15", "act_p50", "act_p85"))
    if not p50 or len(p15) != len(p85) or not p15:
        return None
    spread = mean(hi - lo for lo, hi in zip(p15, p85, strict=True))
    return (max(p50) - min(p50)) / spread if spread > 0 else None


def analyse_stable_distributions(data: SweepData) -> Finding:
    if (bad := _unusable(data, STABLE_RULE)) is not None:
        return bad
    drifts: dict[bool, list[float]] = {False: [], True: []}
    rows = []
    bn_labels = _bn_arm_labels(data.comparison)
    for run in data.comparison["runs"]:
        drift = run_drift(run["curves"])
        bn = run["arm"] in bn_labels
        if drift is not None:
            drifts[bn].append(drift)
        p50 = [v for _, v in run["curves"].get("act_p50") or []]
        rows.append(
            {
                "run": run["name"],
                "arm": run["arm"],
                "median at start": _fmt(p50[0] if p50 else None, 2),
                "median at end": _fmt(p50[-1] if p50 else None, 2),
                "median range": _fmt(max(p50) - min(p50) if p50 else None, 2),
                "drift": _fmt(drift, 2),
            }
        )
    stability = speedup_ci(drifts[False], drifts[True], None)
    verdict = verdict_stable_distributions(stability)
    base_drift = mean(drifts[False]) if drifts[False] else None
    bn_drift = mean(drifts[True]) if drifts[True] else None
    factor = _fmt_ci(stability, 1, "×")
    return Finding(
        verdict=verdict,
        measured=f"drift: baseline {_fmt(base_drift, 2)}, BN {_fmt(bn_drift, 2)} "
        f"(baseline drifts {factor} as much)",
        reason=f"stability factor {factor}: "
        + explain_effect(stability, verdict, threshold=MIN_STABILITY_FACTOR, null=1.0, digits=3)
        + ".",
        rule=STABLE_RULE,
        numbers={
            "baseline_drifts": drifts[False],
            "bn_drifts": drifts[True],
            "stability": stability,
        },
        table=rows,
        notes=_seeds_note(len(drifts[True])),
    )


def _accuracy_row(arm: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    """Accuracies only: with a near-chance baseline, steps-to-its-best mean nothing."""
    runs = [r for r in comparison["runs"] if r["id"] in set(arm["run_ids"])]
    finals = [r["final_test_acc"] for r in runs if r.get("final_test_acc") is not None]
    stalled = sum(
        r["best"] is not None and r["best"] <= CHANCE_ACC + NEAR_CHANCE_MARGIN for r in runs
    )
    return {
        "arm": arm["label"],
        "seeds": arm["n"],
        "best test acc": _fmt_ci(arm["best"], 3),
        "final test acc": _fmt(mean(finals) if finals else None),
        "stalled near chance": f"{stalled}/{arm['n']}",
    }


LR_RULE = (
    "Target: the best test accuracy of the baseline at its own learning rate (the lowest over "
    f"its seeds). An arm reaches it when more than {REACH_FRACTION:.0%} of its seeds do and "
    "fails when none does. Holds if BN reaches the target at some learning rate where the "
    "baseline fails and at every rate where the baseline reaches it; does not hold if there is "
    "no rate where BN reaches it and the baseline fails; otherwise inconclusive."
)


def analyse_higher_learning_rates(data: SweepData) -> Finding:
    if (bad := _unusable(data, LR_RULE)) is not None:
        return bad
    c = data.comparison
    runs_by_id = {r["id"]: r for r in c["runs"]}
    lrs = sorted({_lr(r["spec"]) for r in data.runs})
    outcomes: dict[bool, dict[float, ArmOutcome]] = {False: {}, True: {}}
    rows = []
    for bn in (False, True):
        for lr in lrs:
            arm = _arm(c, bn=bn, lr=lr)
            arm_runs = [runs_by_id[i] for i in arm["run_ids"]]
            outcomes[bn][lr] = arm_outcome(arm["n_reached"], arm["n"])
            rows.append(_lr_row(arm, arm_runs, lr, outcomes[bn][lr]))
    verdict = verdict_higher_learning_rates(outcomes[False], outcomes[True])

    def listed(bn: bool) -> str:
        ok = [f"{lr / lrs[0]:g}×" for lr in lrs if outcomes[bn][lr] == "reaches"]
        return ", ".join(ok) or "none"

    measured = f"reach target {c['target']:.3f} at LR: baseline {listed(False)}; BN {listed(True)}"
    return Finding(
        verdict=verdict,
        measured=measured,
        reason=f"learning rates (multiples of {lrs[0]:g}) at which each arm reaches the target: "
        f"baseline {listed(False)}, BN {listed(True)}.",
        rule=LR_RULE,
        numbers={
            "target": c["target"],
            "learning_rates": lrs,
            "baseline": {str(lr): o for lr, o in outcomes[False].items()},
            "bn": {str(lr): o for lr, o in outcomes[True].items()},
        },
        table=rows,
        notes=_seeds_note(min(len(arm["run_ids"]) for arm in c["arms"])),
    )


def _lr_row(
    arm: dict[str, Any], runs: list[dict[str, Any]], lr: float, outcome: ArmOutcome
) -> dict[str, Any]:
    stalled = sum(
        r["best"] is not None and r["best"] <= CHANCE_ACC + NEAR_CHANCE_MARGIN for r in runs
    )
    return {
        "arm": arm["label"],
        "reached target": f"{arm['n_reached']}/{arm['n']} ({outcome})",
        "steps to target": _fmt_ci(arm["steps_to_target"], 0),
        "best test acc": _fmt_ci(arm["best"], 3),
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "stalled near chance": stalled,
    }


SATURATING_RULE = (
    f"Chance = {CHANCE_ACC:.2f}. Holds if the baseline's mean best test accuracy is ≤ "
    f"{CHANCE_ACC + NEAR_CHANCE_MARGIN:.2f} (near chance) and BN's is ≥ "
    f"{CHANCE_ACC + TRAINS_MARGIN:.2f} (it trains); does not hold if the baseline reaches "
    f"{CHANCE_ACC + TRAINS_MARGIN:.2f} too or BN stays ≤ {CHANCE_ACC + NEAR_CHANCE_MARGIN:.2f}; "
    "otherwise inconclusive."
)


def analyse_saturating(data: SweepData) -> Finding:
    if (bad := _unusable(data, SATURATING_RULE)) is not None:
        return bad
    c = data.comparison
    base, bn = _arm(c, bn=False), _arm(c, bn=True)
    base_best, bn_best = base["best"]["mean"], bn["best"]["mean"]
    verdict = verdict_saturating(base_best, bn_best)
    depth = len(data.plan.base["model"]["hidden"])
    return Finding(
        verdict=verdict,
        measured=f"{depth}-layer sigmoid, best test acc: baseline {_fmt_ci(base['best'])}, "
        f"BN {_fmt_ci(bn['best'])}",
        reason=f"baseline {_fmt(base_best)} vs near-chance limit "
        f"{CHANCE_ACC + NEAR_CHANCE_MARGIN:.2f}; BN {_fmt(bn_best)} vs trains-limit "
        f"{CHANCE_ACC + TRAINS_MARGIN:.2f}.",
        rule=SATURATING_RULE,
        numbers={"baseline_best": base["best"], "bn_best": bn["best"], "depth": depth},
        table=[_accuracy_row(arm, c) for arm in (base, bn)],
        notes=_seeds_note(bn["n"]),
    )


INFERENCE_RULE = (
    "Per BN run, from the trainer's summary: test accuracy with each test batch normalized by "
    "its own statistics (batch size as in training), with the running averages, and with the "
    "paper's population statistics (Algorithm 2). Gain = population − batch statistics. Holds "
    f"if the mean gain is ≥ {MIN_INFERENCE_GAIN:g} and its 95 % CI lies above 0; does not hold "
    f"if the CI's upper end is below {MIN_INFERENCE_GAIN:g}; otherwise inconclusive."
)


def analyse_inference_statistics(data: SweepData) -> Finding:
    if (bad := _unusable(data, INFERENCE_RULE)) is not None:
        return bad
    bn_runs = [r for r in data.runs if _is_bn(r["spec"]) and r.get("summary")]
    rows = []
    bars: dict[str, dict[str, float | None]] = {}
    gains, running_gains = [], []
    for run in sorted(bn_runs, key=lambda r: r["spec"].get("seed", 0)):
        s = run["summary"]
        batch, running, pop = (
            s.get("test_acc_batch_stats"),
            s.get("test_acc_running"),
            s.get("test_acc_population"),
        )
        if None not in (batch, pop):
            gains.append(pop - batch)
        if None not in (batch, running):
            running_gains.append(running - batch)
        bars[f"seed {run['spec'].get('seed')}"] = {
            "batch statistics": batch,
            "running averages": running,
            "population (Alg. 2)": pop,
        }
        rows.append(
            {
                "run": run["name"],
                "seed": run["spec"].get("seed"),
                "batch statistics": _fmt(batch),
                "running averages": _fmt(running),
                "population (Alg. 2)": _fmt(pop),
            }
        )
    gain, running_gain = mean_ci(gains), mean_ci(running_gains)
    verdict = verdict_inference_statistics(gain)
    means = {
        key: mean(vals) if (vals := _summary_values(bn_runs, key)) else None
        for key in ("test_acc_batch_stats", "test_acc_running", "test_acc_population")
    }
    return Finding(
        verdict=verdict,
        measured=f"test acc: batch stats {_fmt(means['test_acc_batch_stats'])}, running "
        f"{_fmt(means['test_acc_running'])}, population {_fmt(means['test_acc_population'])}",
        reason=f"population − batch statistics {_fmt_ci(gain)}: "
        + explain_effect(gain, verdict, threshold=MIN_INFERENCE_GAIN, null=0.0, digits=4)
        + f" (running averages − batch: {_fmt_ci(running_gain)}).",
        rule=INFERENCE_RULE,
        numbers={"gain": gain, "running_gain": running_gain, "means": means, "runs": len(gains)},
        table=rows,
        notes=_seeds_note(len(gains)),
        bars=bars,
        bars_title="Test accuracy of each BN run under three inference statistics",
    )


REGULARIZATION_RULE = (
    "Gap of a run = training accuracy − test accuracy of the final model (eval mode, equal "
    "steps for both arms). Reduction = mean baseline gap − mean BN gap. Holds if the reduction "
    f"is ≥ {MIN_GAP_REDUCTION:g} and its 95 % CI lies above 0; does not hold if the CI's upper "
    f"end is below {MIN_GAP_REDUCTION:g}; otherwise inconclusive."
)


def analyse_regularization(data: SweepData) -> Finding:
    if (bad := _unusable(data, REGULARIZATION_RULE)) is not None:
        return bad
    gaps: dict[bool, list[float]] = {False: [], True: []}
    rows = []
    for run in sorted(data.runs, key=lambda r: (_is_bn(r["spec"]), r["spec"].get("seed", 0))):
        s = run.get("summary") or {}
        train, test = s.get("train_acc_full"), s.get("final_test_acc")
        gap = None if train is None or test is None else train - test
        if gap is not None:
            gaps[_is_bn(run["spec"])].append(gap)
        rows.append(
            {
                "run": run["name"],
                "norm": _norm(run["spec"]),
                "seed": run["spec"].get("seed"),
                "train acc": _fmt(train),
                "test acc": _fmt(test),
                "gap": _fmt(gap),
            }
        )
    reduction = difference_ci(gaps[False], gaps[True])
    verdict = verdict_regularization(reduction)
    base_gap = mean(gaps[False]) if gaps[False] else None
    bn_gap = mean(gaps[True]) if gaps[True] else None
    return Finding(
        verdict=verdict,
        measured=f"train−test gap: baseline {_fmt(base_gap)}, BN {_fmt(bn_gap)} "
        f"(reduction {_fmt_ci(reduction)})",
        reason=f"gap reduction {_fmt_ci(reduction)}: "
        + explain_effect(reduction, verdict, threshold=MIN_GAP_REDUCTION, null=0.0, digits=4)
        + ".",
        rule=REGULARIZATION_RULE,
        numbers={"baseline_gaps": gaps[False], "bn_gaps": gaps[True], "reduction": reduction},
        table=rows,
        notes=_seeds_note(len(gaps[True])),
        bars={
            arm: {
                "train acc": _mean_or_none(_summary_values(arm_runs, "train_acc_full")),
                "test acc": _mean_or_none(_summary_values(arm_runs, "final_test_acc")),
            }
            for arm, arm_runs in (
                ("no BN", [r for r in data.runs if not _is_bn(r["spec"])]),
                ("BN", [r for r in data.runs if _is_bn(r["spec"])]),
            )
        },
        bars_title="Training vs test accuracy at equal steps (mean over seeds)",
    )


# ------------------------------------------------------------------------------ experiments


@dataclass(frozen=True)
class Experiment:
    name: str  # for --only
    title: str
    claim: str
    paper: str
    sweep: str  # the SweepPlan key it analyses
    analyse: Callable[[SweepData], Finding]
    # Extra /compare query for this experiment (baseline, target); None = the API's defaults.
    compare_query: Callable[[SweepPlan, list[dict[str, Any]]], dict[str, Any]] | None = None


def _baseline_at_base_lr(plan: SweepPlan, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Experiment 3 compares against the baseline at ITS learning rate (the 1× arm)."""
    candidates = [
        r for r in runs if not _is_bn(r["spec"]) and abs(_lr(r["spec"]) - BASE_LR) < 1e-12
    ]
    first = min(candidates, key=lambda r: r["spec"].get("seed", 0))
    return {"baseline": first["id"]}


EXPERIMENTS: list[Experiment] = [
    Experiment(
        "faster-training",
        "1. Faster training",
        "BN reaches the baseline's accuracy in far fewer steps.",
        "Fig. 1a; the ImageNet table's steps-to-72.2 %",
        "mlp-sigmoid",
        analyse_faster_training,
    ),
    Experiment(
        "faster-training-digits",
        "1b. Faster training (digits)",
        "BN reaches the baseline's accuracy in far fewer steps (a second dataset).",
        "Fig. 1a",
        "mlp-sigmoid-digits",
        analyse_faster_training,
    ),
    Experiment(
        "stable-distributions",
        "2. Stable input distributions",
        "With BN the distribution of a layer's inputs stays put during training; without it, "
        "its mean and spread drift.",
        "Fig. 1b/c",
        "mlp-sigmoid",
        analyse_stable_distributions,
    ),
    Experiment(
        "higher-learning-rates",
        "3. Higher learning rates",
        "BN tolerates much higher learning rates; without BN they diverge or stall.",
        "BN-x5 / BN-x30 in the ImageNet table",
        "learning-rates",
        analyse_higher_learning_rates,
        _baseline_at_base_lr,
    ),
    Experiment(
        "saturating-nonlinearities",
        "4. Saturating nonlinearities",
        "BN makes a deep sigmoid network trainable; without BN it stays near chance.",
        "BN-x5-Sigmoid vs Inception with sigmoid",
        "deep-sigmoid",
        analyse_saturating,
    ),
    Experiment(
        "inference-statistics",
        "5. Inference statistics",
        "Inference should use fixed population statistics, not the current batch's.",
        "Algorithm 2",
        "mlp-sigmoid",
        analyse_inference_statistics,
    ),
    Experiment(
        "regularization",
        "6. Regularization",
        "BN regularizes: a smaller train–test gap (less need for dropout).",
        "Section 3.4",
        "regularization",
        analyse_regularization,
    ),
]
EXPERIMENT_NAMES = [e.name for e in EXPERIMENTS]


def select_experiments(only: Sequence[str] | None) -> list[Experiment]:
    """The experiments named in ``only`` (all when None/empty), in suite order."""
    if not only:
        return list(EXPERIMENTS)
    unknown = sorted(set(only) - set(EXPERIMENT_NAMES))
    if unknown:
        raise ValueError(
            f"unknown experiment(s) {', '.join(unknown)}; choose from {', '.join(EXPERIMENT_NAMES)}"
        )
    return [e for e in EXPERIMENTS if e.name in only]


# ------------------------------------------------------------------------------ running


def submit_sweeps(
    client: BnlabClient, plans: Sequence[SweepPlan], label: str
) -> dict[str, dict[str, Any]]:
    """POST every sweep up front, so the server can work on all of them at once."""
    return {p.key: client.sweep(f"reproduce-{label}-{p.key}", p.base, p.grid) for p in plans}


def wait_for_sweeps(
    client: BnlabClient,
    sweep_ids: Sequence[str],
    progress: Progress | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    timeout: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Poll GET /sweeps/{id} until every run has finished; report progress over all of them."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sweeps = {sid: client.get_sweep(sid) for sid in sweep_ids}
        runs = [r for s in sweeps.values() for r in s["runs"]]
        done = sum(r["status"] in FINISHED_STATUSES for r in runs)
        if progress is not None:
            running = sum(r["status"] == "running" for r in runs)
            progress(done, len(runs), f"{running} running")
        if done == len(runs):
            return sweeps
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{len(runs) - done} of {len(runs)} runs still unfinished")
        time.sleep(poll_interval)


def run_experiment(
    client: BnlabClient,
    experiment: Experiment,
    plan: SweepPlan,
    sweep: dict[str, Any],
    figures_dir: Path,
    plotted: set[Path],
) -> ExperimentResult:
    """Fetch the experiment's comparison and figure from the API, then analyse the numbers.
    ``plotted``: figures this suite already wrote (shared by experiments on one sweep)."""
    query = experiment.compare_query(plan, sweep["runs"]) if experiment.compare_query else {}
    comparison = client.compare(sweep=sweep["id"], points=COMPARE_POINTS, **query)
    data = SweepData(plan, sweep["id"], sweep["runs"], comparison)
    finding = experiment.analyse(data)
    # One comparison figure per sweep (and query): experiments sharing a sweep share it.
    figure = figures_dir / ("-".join([plan.key, *map(str, query)]) + ".png")
    if figure not in plotted:
        figure.write_bytes(client.compare_plot(sweep=sweep["id"], fmt="png", **query))
        plotted.add(figure)
    figures = [figure]
    if finding.bars:
        figures.insert(0, figures_dir / f"{experiment.name}-summary.png")
        figures[0].write_bytes(bar_figure(finding.bars_title, finding.bars))
    return ExperimentResult(
        name=experiment.name,
        title=experiment.title,
        claim=experiment.claim,
        paper=experiment.paper,
        sweep=plan.key,
        sweep_id=sweep["id"],
        settings=describe_plan(plan),
        finding=finding,
        figures=[f"{figures_dir.name}/{path.name}" for path in figures],
    )


def bar_figure(title: str, groups: dict[str, dict[str, float | None]]) -> bytes:
    """Grouped bars (one group per key, one bar per series), values written on the bars. The
    y axis is zoomed to the values: the differences here are a few points of accuracy."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe in any thread

    series = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    values = [v for bars in groups.values() for v in bars.values() if v is not None]
    fig = Figure(figsize=(2.2 + 1.3 * len(groups) * max(1, len(series)) / 2, 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [bars.get(name) or 0.0 for bars in groups.values()]
        bars = ax.bar(xs, ys, width, label=name, color=f"C{i}")
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), list(groups))
    if values:
        low, high = min(values), max(values)
        pad = max(0.02, (high - low) * 0.25)
        ax.set_ylim(max(0.0, low - pad), min(1.05, high + pad))
    ax.set_ylabel("accuracy (y axis zoomed)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside, not over
    ax.grid(axis="y", alpha=0.3)
    fig.set_layout_engine("constrained")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def describe_plan(plan: SweepPlan) -> str:
    """One line of settings, e.g. "mnist1d, MLP 3×100 sigmoid, SGD lr 0.5, batch 60, …"."""
    b = plan.base
    model, opt = b["model"], b["optimizer"]
    hidden = model["hidden"]
    widths = f"{len(hidden)}×{hidden[0]}" if len(set(hidden)) == 1 else "-".join(map(str, hidden))
    momentum = f", momentum {opt['momentum']:g}" if opt.get("momentum") else ""
    train = f", {b['train_size']} training examples" if b.get("train_size") else ""
    grid = "; ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in plan.grid.items())
    return (
        f"{b['dataset']}{train}, MLP {widths} {model['activation']}, "
        f"{opt['name'].upper()} lr {opt['lr']:g}{momentum}, batch {b['batch_size']}, "
        f"{b['steps']} steps, evaluation every {b['eval_every']} steps; grid: {grid}"
    )


def _environment(sweeps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    runs = [r for s in sweeps.values() for r in s["runs"]]
    return {
        "torch": sorted({r.get("torch_version") for r in runs if r.get("torch_version")}),
        "device": sorted({r.get("device") for r in runs if r.get("device")}),
        "train_seconds": sum(r.get("wall_time") or 0.0 for r in runs),
    }


def run_suite(
    client: BnlabClient,
    *,
    quick: bool,
    only: Sequence[str] | None,
    out_dir: Path,
    progress: Progress | None = None,
    profile: str | None = None,
    poll_interval: float = POLL_INTERVAL_S,
    timeout: float | None = None,
    server_label: str | None = None,
) -> SuiteResult:
    """Run the selected experiments through the API and write ``out_dir/reproduction.md``.

    ``profile`` overrides ``quick`` ("full", "quick", or "tiny" for tests). Figures go to
    ``out_dir/figures``; the numbers also go to ``out_dir/reproduction.json``.
    ``server_label`` names the server in the report (default: the client's base URL).
    """
    from service.report import write_report  # the Markdown writer

    chosen = PROFILES[profile or ("quick" if quick else "full")]
    experiments = select_experiments(only)
    all_plans = sweep_plans(chosen)
    plans = [all_plans[key] for key in dict.fromkeys(e.sweep for e in experiments)]
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    created = submit_sweeps(client, plans, chosen.name)
    if progress is not None:
        progress(0, sum(p.runs for p in plans), f"{len(plans)} sweeps submitted")
    finished = wait_for_sweeps(
        client, [s["id"] for s in created.values()], progress, poll_interval, timeout
    )
    by_key = {key: finished[sweep["id"]] for key, sweep in created.items()}
    results, plotted = [], set()
    for experiment in experiments:
        if progress is not None:
            total = sum(p.runs for p in plans)
            progress(total, total, f"analysing {experiment.name}")
        plan = all_plans[experiment.sweep]
        results.append(
            run_experiment(client, experiment, plan, by_key[plan.key], figures_dir, plotted)
        )
    suite = SuiteResult(
        profile=chosen.name,
        out_dir=out_dir,
        report=out_dir / "reproduction.md",
        results=results,
        wall_time=time.monotonic() - started,
        runs=sum(p.runs for p in plans),
        environment=_environment(finished),
    )
    write_report(suite, server=server_label or client.base_url)
    return suite


# ------------------------------------------------------------------------------ embedded


@contextlib.contextmanager
def embedded_client(
    database: Path | None = None, concurrency: int | None = None
) -> Iterator[BnlabClient]:
    """A BnlabClient on an in-process server (the real app, SQLite, the embedded executor).

    Training still happens in subprocesses. With several parallel runs each trainer is held to
    one thread: tiny MLPs gain nothing from intra-op threads, and N runs × N threads on N cores
    would oversubscribe them (measured: ~4× slower on 2 cores).
    """
    with warnings.catch_warnings():  # starlette's notice about httpx, meant for test suites
        warnings.simplefilter("ignore")  # (its own class, not a DeprecationWarning)
        from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    workers = concurrency or max(1, os.cpu_count() or 1)
    if workers > 1:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")  # inherited by the trainer subprocesses
    with contextlib.ExitStack() as stack:
        if database is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bnlab-repro-")))
            database = tmp / "bnlab.db"
        settings = Settings(  # explicit: no broker or API keys from this machine's BNLAB_*
            _env_file=None,
            database_url=f"sqlite:///{database}",
            broker_url=None,
            api_key_hashes=[],
            embedded_concurrency=workers,
            log_level="WARNING",  # the suite's progress bar, not every claim, on the terminal
        )
        http = stack.enter_context(TestClient(create_app(settings)))
        yield BnlabClient(http=http, timeout=120.0)
