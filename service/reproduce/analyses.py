"""The analyses: from one sweep's API answers to a :class:`Finding` with its verdict.

One ``analyse_*`` function per claim, each ``SweepData -> Finding``: it reads the numbers it
needs from the comparison and the runs' summaries, gets the verdict from the matching rule in
``verdicts.py`` (never decides one itself), and writes the lines, table rows and bar values the
report shows. A sweep with a failed or cancelled run gives an inconclusive finding, whatever
the claim: no verdict rests on runs that measured nothing.

The ``numbers`` of each finding hold everything its verdict was computed from, under the keys
that ``experiments.py`` reads back to re-derive it. (A little past 400 lines: six analyses of
one shape, each with its table rows, and the long import list of their rules.)
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import mean
from typing import Any

from service.analysis.stats import bootstrap_ci, mean_ci, speedup_ci
from service.reproduce.results import (
    Finding,
    SweepData,
    is_bn,
    lr_of,
    norm_of,
    summary_values,
)
from service.reproduce.verdicts import (
    CHANCE_ACC,
    FASTER_RULE,
    INFERENCE_RULE,
    LR_RULE,
    MIN_GAP_REDUCTION,
    MIN_INFERENCE_GAIN,
    MIN_SPEEDUP,
    MIN_STABILITY_FACTOR,
    NEAR_CHANCE_MARGIN,
    REGULARIZATION_RULE,
    SATURATING_RULE,
    STABLE_RULE,
    TRAINS_MARGIN,
    UNSURE,
    ArmOutcome,
    arm_outcome,
    explain_effect,
    near_chance,
    verdict_faster_training,
    verdict_higher_learning_rates,
    verdict_inference_statistics,
    verdict_regularization,
    verdict_saturating,
    verdict_stable_distributions,
)

# ------------------------------------------------------------------------------------------ helpers


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


def difference_ci(baseline: Sequence[float], arm: Sequence[float]) -> dict[str, Any]:
    """mean(baseline) − mean(arm) with the comparison layer's bootstrap CI (groups resampled
    independently)."""
    if not baseline or not arm:
        return {"mean": None, "ci_low": None, "ci_high": None, "bound": None}
    low, high = bootstrap_ci([baseline, arm], lambda b, a: b.mean(axis=1) - a.mean(axis=1))
    return {"mean": mean(baseline) - mean(arm), "ci_low": low, "ci_high": high, "bound": None}


def _mean_or_none(values: Sequence[float]) -> float | None:
    return mean(values) if values else None


def _seeds_note(n: int) -> list[str]:
    if n > 1:
        return []
    return ["One seed per arm: the interval is the single value, not a confidence interval."]


def _stalled(runs: Sequence[dict[str, Any]]) -> int:
    """How many runs (comparison rows) never got past near-chance accuracy."""
    return sum(r["best"] is not None and near_chance(r["best"]) for r in runs)


def _unusable(data: SweepData, rule: str) -> Finding | None:
    """Runs that failed (crashed, cancelled) measured nothing: no verdict can rest on them."""
    failed = data.unusable_runs()
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


# ------------------------------------------------------------------------------- 1. faster training


def analyse_faster_training(data: SweepData) -> Finding:
    if (bad := _unusable(data, FASTER_RULE)) is not None:
        return bad
    c = data.comparison
    base, bn = data.arm(bn=False), data.arm(bn=True)
    verdict = verdict_faster_training(bn["speedup"], bn["n_reached"], bn["n"], c["target"])
    speedup = _fmt_ci(bn["speedup"], 2, "×")
    measured = (
        f"target {c['target']:.3f}: baseline {base['steps_to_target']['mean']:.0f} steps, "
        f"BN {_fmt_ci(bn['steps_to_target'], 0)} steps; speed-up {speedup}"
    )
    reason = f"BN reached the target in {bn['n_reached']}/{bn['n']} seeds; speed-up {speedup}"
    if c["target"] is not None and near_chance(c["target"]):
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


# -------------------------------------------------------------------------- 2. stable distributions


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
    bn_labels = data.bn_arm_labels()
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
    base_drift, bn_drift = _mean_or_none(drifts[False]), _mean_or_none(drifts[True])
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


# ------------------------------------------------------------------------- 3. higher learning rates


def analyse_higher_learning_rates(data: SweepData) -> Finding:
    if (bad := _unusable(data, LR_RULE)) is not None:
        return bad
    c = data.comparison
    runs_by_id = {r["id"]: r for r in c["runs"]}
    lrs = sorted({lr_of(r["spec"]) for r in data.runs})
    outcomes: dict[bool, dict[float, ArmOutcome]] = {False: {}, True: {}}
    rows = []
    for bn in (False, True):
        for lr in lrs:
            arm = data.arm(bn=bn, lr=lr)
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
    stalled = _stalled(runs)
    return {
        "arm": arm["label"],
        "reached target": f"{arm['n_reached']}/{arm['n']} ({outcome})",
        "steps to target": _fmt_ci(arm["steps_to_target"], 0),
        "best test acc": _fmt_ci(arm["best"], 3),
        "diverged": sum(bool(r["diverged"]) for r in runs),
        "stalled near chance": stalled,
    }


# --------------------------------------------------------------------- 4. saturating nonlinearities


def _accuracy_row(arm: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    """Accuracies only: with a near-chance baseline, steps-to-its-best mean nothing."""
    runs = [r for r in comparison["runs"] if r["id"] in set(arm["run_ids"])]
    finals = [r["final_test_acc"] for r in runs if r.get("final_test_acc") is not None]
    stalled = _stalled(runs)
    return {
        "arm": arm["label"],
        "seeds": arm["n"],
        "best test acc": _fmt_ci(arm["best"], 3),
        "final test acc": _fmt(mean(finals) if finals else None),
        "stalled near chance": f"{stalled}/{arm['n']}",
    }


def analyse_saturating(data: SweepData) -> Finding:
    if (bad := _unusable(data, SATURATING_RULE)) is not None:
        return bad
    c = data.comparison
    base, bn = data.arm(bn=False), data.arm(bn=True)
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


# -------------------------------------------------------------------------- 5. inference statistics


def analyse_inference_statistics(data: SweepData) -> Finding:
    if (bad := _unusable(data, INFERENCE_RULE)) is not None:
        return bad
    bn_runs = [r for r in data.runs if is_bn(r["spec"]) and r.get("summary")]
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
        key: _mean_or_none(summary_values(bn_runs, key))
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


# -------------------------------------------------------------------------------- 6. regularization


def analyse_regularization(data: SweepData) -> Finding:
    if (bad := _unusable(data, REGULARIZATION_RULE)) is not None:
        return bad
    gaps: dict[bool, list[float]] = {False: [], True: []}
    rows = []
    for run in sorted(data.runs, key=lambda r: (is_bn(r["spec"]), r["spec"].get("seed", 0))):
        s = run.get("summary") or {}
        train, test = s.get("train_acc_full"), s.get("final_test_acc")
        gap = None if train is None or test is None else train - test
        if gap is not None:
            gaps[is_bn(run["spec"])].append(gap)
        rows.append(
            {
                "run": run["name"],
                "norm": norm_of(run["spec"]),
                "seed": run["spec"].get("seed"),
                "train acc": _fmt(train),
                "test acc": _fmt(test),
                "gap": _fmt(gap),
            }
        )
    reduction = difference_ci(gaps[False], gaps[True])
    verdict = verdict_regularization(reduction)
    base_gap, bn_gap = _mean_or_none(gaps[False]), _mean_or_none(gaps[True])
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
                "train acc": _mean_or_none(summary_values(arm_runs, "train_acc_full")),
                "test acc": _mean_or_none(summary_values(arm_runs, "final_test_acc")),
            }
            for arm, arm_runs in (
                ("no BN", [r for r in data.runs if not is_bn(r["spec"])]),
                ("BN", [r for r in data.runs if is_bn(r["spec"])]),
            )
        },
        bars_title="Training vs test accuracy at equal steps (mean over seeds)",
    )
