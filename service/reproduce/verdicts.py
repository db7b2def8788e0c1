"""How a claim's verdict is decided: the thresholds, the decision rules and their wording.

Every verdict of the suite comes out of a ``verdict_*`` function here, applied to measured
numbers and the named thresholds below; nothing else decides one. Each rule also has its text
(``*_RULE``), which the report prints next to the verdict, and :data:`THRESHOLDS` lists every
constant for the report's method section, so a reader sees exactly what was applied.

Verdicts are "holds", "does not hold" or "inconclusive". Effects measured over seeds use the
comparison layer's bootstrap (95 % percentile CI): a claim *holds* when the effect reaches its
threshold and its CI excludes "no effect"; it *does not hold* when the CI's upper end stays below
the threshold; anything between is inconclusive. With one seed (``--quick``) the CI collapses to
the single value, which the report says.

Pure functions on numbers: no I/O, no imports from the rest of the package (the plateau
constants come from ``service.analysis.runs``, whose rule the horizon table applies).
"""

from __future__ import annotations

from typing import Any, Literal

from service.analysis.runs import PLATEAU_TAIL, PLATEAU_TOLERANCE

Verdict = Literal["holds", "does not hold", "inconclusive"]
HOLDS: Verdict = "holds"
FAILS: Verdict = "does not hold"
UNSURE: Verdict = "inconclusive"

# --------------------------------------------------------------------------------------- thresholds
# Named here, stated in the report, never applied by hand.

CHANCE_ACC = 0.10  # ten classes (mnist1d, digits)
NEAR_CHANCE_MARGIN = 0.05  # best accuracy ≤ chance + this: the network did not train
TRAINS_MARGIN = 0.15  # best accuracy ≥ chance + this: the network trains
MIN_SPEEDUP = 2.0  # experiment 1: "far fewer steps" = at least twice as fast
MIN_STABILITY_FACTOR = 2.0  # experiment 2: the baseline's median drifts at least twice as much
MIN_INFERENCE_GAIN = 0.005  # experiment 5: fixed statistics beat batch statistics by ≥ 0.5 points
MIN_GAP_REDUCTION = 0.02  # experiment 6: BN shrinks the train-test gap by ≥ 2 points
REACH_FRACTION = 0.5  # an arm "reaches" the target when more than half its seeds do
# Regularization on real data (BN vs dropout, issue 18). The design check first:
OVERFIT_TRAIN_ACC = 0.98  # the plain arm fits its training set: mean train accuracy ≥ this
OVERFIT_LOSS_RISE = 0.10  # ... while its test loss rises: final ≥ (1 + this) × its minimum
DROPOUT_MARGIN = 0.01  # δ: BN without dropout may trail no-BN with dropout by at most this
MIN_ACC_GAIN = 0.005  # BN without dropout beats the plain arm by ≥ half a point of accuracy
# Data-parallel statistics (issue 15): an accuracy difference within ± this counts as "the same".
REPLICA_TOLERANCE = 0.01

# The report's table of constants: (name, value as shown, what uses it). A new threshold is
# added here once and appears in every report.
THRESHOLDS: list[tuple[str, str, str]] = [
    ("MIN_SPEEDUP", f"{MIN_SPEEDUP:g}×", "1. faster training"),
    ("MIN_STABILITY_FACTOR", f"{MIN_STABILITY_FACTOR:g}×", "2. stable inputs"),
    ("REACH_FRACTION", f"> {REACH_FRACTION:.0%} of seeds", "3. learning rates"),
    ("CHANCE_ACC", f"{CHANCE_ACC:g}", "3, 4 (10 classes)"),
    ("NEAR_CHANCE_MARGIN", f"+{NEAR_CHANCE_MARGIN:g}", "3, 4: did not train"),
    ("TRAINS_MARGIN", f"+{TRAINS_MARGIN:g}", "4: trains"),
    ("MIN_INFERENCE_GAIN", f"{MIN_INFERENCE_GAIN:g}", "5. inference statistics"),
    ("MIN_GAP_REDUCTION", f"{MIN_GAP_REDUCTION:g}", "6. regularization (toy)"),
    ("OVERFIT_TRAIN_ACC", f"{OVERFIT_TRAIN_ACC:g}", "regularization: the design can detect it"),
    ("OVERFIT_LOSS_RISE", f"+{OVERFIT_LOSS_RISE:.0%}", "regularization: test loss rises"),
    ("DROPOUT_MARGIN", f"{DROPOUT_MARGIN:g}", "regularization: δ vs dropout"),
    ("MIN_ACC_GAIN", f"{MIN_ACC_GAIN:g}", "regularization: gain over no regularizer"),
    ("REPLICA_TOLERANCE", f"± {REPLICA_TOLERANCE:g}", "replicas: same accuracy as 1 process"),
    ("PLATEAU_TAIL", f"last {PLATEAU_TAIL:.0%} of the horizon", "baseline plateau check"),
    ("PLATEAU_TOLERANCE", f"≤ {PLATEAU_TOLERANCE:.0%} better", "baseline plateau check"),
]


def near_chance(accuracy: float) -> bool:
    """At or below chance + NEAR_CHANCE_MARGIN: the network did not train."""
    return accuracy <= CHANCE_ACC + NEAR_CHANCE_MARGIN


# --------------------------------------------------------------------------------- the generic rule


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


def _effect(stat: dict[str, Any], *, threshold: float, null: float) -> Verdict:
    """effect_verdict on a {"mean", "ci_low", "ci_high"} dict (the comparison layer's shape)."""
    return effect_verdict(
        stat.get("mean"), stat.get("ci_low"), stat.get("ci_high"), threshold=threshold, null=null
    )


# ---------------------------------------------------------------------------------------- 1. faster

FASTER_RULE = (
    f"holds if BN's speed-up is ≥ {MIN_SPEEDUP:g}× and its 95 % CI lies above 1×; does not "
    f"hold if BN never reaches the target, or the CI's upper end is below {MIN_SPEEDUP:g}×; "
    "otherwise inconclusive; also inconclusive when the target is within "
    f"{NEAR_CHANCE_MARGIN:g} of chance ({CHANCE_ACC:g}): a baseline that never learned sets no "
    "accuracy to race to. Target: the baseline's best test accuracy (the lowest over its "
    "seeds), steps-to-target: the first evaluation at or above it."
)


def verdict_faster_training(
    speedup: dict[str, Any], n_reached: int, n: int, target: float | None = None
) -> Verdict:
    """Experiment 1 from the BN arm's speed-up (a Comparison arm's ``speedup`` dict).

    A target near chance (the baseline never learned) makes the race meaningless: inconclusive.

    BN that never reaches the target is not faster. A censored BN arm (``bound == "upper"``:
    some seeds never reached it) can only fail or stay open: its speed-up is an upper bound.
    """
    if n == 0 or (target is not None and near_chance(target)):
        return UNSURE
    if n_reached == 0:
        return FAILS
    if speedup.get("bound") == "upper":
        estimate = speedup.get("mean")
        return FAILS if estimate is not None and estimate < MIN_SPEEDUP else UNSURE
    return _effect(speedup, threshold=MIN_SPEEDUP, null=1.0)


# ---------------------------------------------------------------------------------------- 2. stable

STABLE_RULE = (
    "Drift of a run = (max − min of the probed unit's median pre-activation over all "
    "evaluations, step 0 included) ÷ (its mean 15th–85th percentile spread). Stability factor "
    f"= mean baseline drift ÷ mean BN drift. Holds if the factor is ≥ {MIN_STABILITY_FACTOR:g} "
    f"and its 95 % CI lies above 1; does not hold if the CI's upper end is below "
    f"{MIN_STABILITY_FACTOR:g}; otherwise inconclusive."
)


def verdict_stable_distributions(stability: dict[str, Any]) -> Verdict:
    """Experiment 2 from the stability factor: baseline drift ÷ BN drift, with its CI."""
    return _effect(stability, threshold=MIN_STABILITY_FACTOR, null=1.0)


# -------------------------------------------------------------------------------- 3. learning rates

LR_RULE = (
    "Target: the best test accuracy of the baseline at its own learning rate (the lowest over "
    f"its seeds). An arm reaches it when more than {REACH_FRACTION:.0%} of its seeds do and "
    "fails when none does. Holds if BN reaches the target at some learning rate where the "
    "baseline fails and at every rate where the baseline reaches it; does not hold if there is "
    "no rate where BN reaches it and the baseline fails; otherwise inconclusive."
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


# ------------------------------------------------------------------------------------ 4. saturating

SATURATING_RULE = (
    f"Chance = {CHANCE_ACC:.2f}. Holds if the baseline's mean best test accuracy is ≤ "
    f"{CHANCE_ACC + NEAR_CHANCE_MARGIN:.2f} (near chance) and BN's is ≥ "
    f"{CHANCE_ACC + TRAINS_MARGIN:.2f} (it trains); does not hold if the baseline reaches "
    f"{CHANCE_ACC + TRAINS_MARGIN:.2f} too or BN stays ≤ {CHANCE_ACC + NEAR_CHANCE_MARGIN:.2f}; "
    "otherwise inconclusive."
)


def verdict_saturating(baseline_best: float | None, bn_best: float | None) -> Verdict:
    """Experiment 4 from the mean best test accuracy of each arm (deep sigmoid network).

    holds: the baseline stays near chance and BN trains; does not hold: the baseline trains
    too, or BN stays near chance; inconclusive in between."""
    if baseline_best is None or bn_best is None:
        return UNSURE
    trains = CHANCE_ACC + TRAINS_MARGIN
    if near_chance(baseline_best) and bn_best >= trains:
        return HOLDS
    if baseline_best >= trains or near_chance(bn_best):
        return FAILS
    return UNSURE


# ------------------------------------------------------------------------------------- 5. inference

INFERENCE_RULE = (
    "Per BN run, from the trainer's summary: test accuracy with each test batch normalized by "
    "its own statistics (batch size as in training), with the running averages, and with the "
    "paper's population statistics (Algorithm 2). Gain = population − batch statistics. Holds "
    f"if the mean gain is ≥ {MIN_INFERENCE_GAIN:g} and its 95 % CI lies above 0; does not hold "
    f"if the CI's upper end is below {MIN_INFERENCE_GAIN:g}; otherwise inconclusive."
)


def verdict_inference_statistics(gain: dict[str, Any]) -> Verdict:
    """Experiment 5 from population-statistics accuracy minus batch-statistics accuracy (CI)."""
    return _effect(gain, threshold=MIN_INFERENCE_GAIN, null=0.0)


# -------------------------------------------------------------------------------- 6. regularization

REGULARIZATION_RULE = (
    "Gap of a run = training accuracy − test accuracy of the final model (eval mode, equal "
    "steps for both arms). Reduction = mean baseline gap − mean BN gap. Holds if the reduction "
    f"is ≥ {MIN_GAP_REDUCTION:g} and its 95 % CI lies above 0; does not hold if the CI's upper "
    f"end is below {MIN_GAP_REDUCTION:g}; otherwise inconclusive."
)


def verdict_regularization(reduction: dict[str, Any]) -> Verdict:
    """Experiment 6 from baseline gap minus BN gap (train-test accuracy, equal steps; CI)."""
    return _effect(reduction, threshold=MIN_GAP_REDUCTION, null=0.0)


# ----------------------------------------------------------------- 6b. regularization (real data)

BN_DROPOUT_RULE = (
    "Stated before the numbers. Accuracy = the final model's test accuracy after equal steps. "
    "Design check: the no-BN/no-dropout arm must overfit (mean training accuracy ≥ "
    f"{OVERFIT_TRAIN_ACC:g} and mean final test loss ≥ {1 + OVERFIT_LOSS_RISE:g} × its own "
    "minimum over training); otherwise the design cannot see a regularizer and the verdict is "
    "inconclusive, never a pass or fail. Then, with Δd = BN/no-dropout − no-BN/dropout and "
    "Δp = BN/no-dropout − no-BN/no-dropout (95 % bootstrap CIs): holds if Δd's CI lies above "
    f"−{DROPOUT_MARGIN:g} (BN without dropout at least as good as dropout) and Δp ≥ "
    f"{MIN_ACC_GAIN:g} with its CI above 0 (better than no regularizer); does not hold if Δd's "
    f"CI upper end is below −{DROPOUT_MARGIN:g} or Δp's is below {MIN_ACC_GAIN:g}; otherwise "
    "inconclusive."
)


def overfits(train_acc: float | None, test_loss_rise: float | None) -> bool:
    """The plain arm overfits: it fits its training set (mean train accuracy ≥
    OVERFIT_TRAIN_ACC) while its test loss rises (mean final/min − 1 ≥ OVERFIT_LOSS_RISE)."""
    if train_acc is None or test_loss_rise is None:
        return False
    return train_acc >= OVERFIT_TRAIN_ACC and test_loss_rise >= OVERFIT_LOSS_RISE


def verdict_bn_vs_dropout(
    plain_overfits: bool, vs_dropout: dict[str, Any], vs_plain: dict[str, Any]
) -> Verdict:
    """Issue 18's rule (``BN_DROPOUT_RULE``) from the design check and two accuracy
    differences (``{"mean", "ci_low", "ci_high"}``): BN/no-dropout − no-BN/dropout and
    BN/no-dropout − no-BN/no-dropout."""
    if not plain_overfits:
        return UNSURE
    d_low, d_high = vs_dropout.get("ci_low"), vs_dropout.get("ci_high")
    p_mean, p_low, p_high = vs_plain.get("mean"), vs_plain.get("ci_low"), vs_plain.get("ci_high")
    if None in (d_low, d_high, p_mean, p_low, p_high):
        return UNSURE
    if d_low > -DROPOUT_MARGIN and p_mean >= MIN_ACC_GAIN and p_low > 0:
        return HOLDS
    if d_high < -DROPOUT_MARGIN or p_high < MIN_ACC_GAIN:
        return FAILS
    return UNSURE


# ------------------------------------------------------------------------- 7. the conv-net table

CONV_TABLE_RULE = (
    "The paper's ImageNet table: target = the Baseline's max test accuracy (the Baseline: no "
    "BN, at the LR of its grid with the highest mean max accuracy; the lowest max over its "
    "seeds). The verdict is the faster-training rule applied to BN-x5, the paper's headline row "
    f"(named before the runs, not the fastest row after them): holds if its speed-up is ≥ "
    f"{MIN_SPEEDUP:g}× with the 95 % CI above 1×; does not hold if it never reaches the target "
    f"or the CI's upper end is below {MIN_SPEEDUP:g}×; otherwise inconclusive."
)


# ------------------------------------------------------------- 8. statistics across replicas

REPLICAS_RULE = (
    "Stated before the numbers. Same global batch, learning rate, steps and seeds in every arm; "
    "accuracy = the final model's test accuracy. Δ = arm − the 1-replica arm, per seed (the "
    "seeds pair the runs: same initialization and global batches), its mean with a 95 % "
    "bootstrap CI over seeds. The claim (synchronized statistics make N replicas train like "
    f"one process) holds if Δ of sync_batchnorm lies within ± {REPLICA_TOLERANCE:g} (the whole "
    f"CI); does not hold if its CI lies wholly outside ± {REPLICA_TOLERANCE:g}; otherwise "
    "inconclusive. Per-replica (ghost) BN is classified by the same test: *same* (CI within the "
    "tolerance), *differs* (CI wholly outside it) or *unclear*; that is reported, not part of "
    "the verdict."
)
ReplicaOutcome = Literal["same", "differs", "unclear"]


def equivalence_outcome(delta: dict[str, Any], tolerance: float) -> ReplicaOutcome:
    """An equivalence test on a difference with its CI (``{"mean", "ci_low", "ci_high"}``):
    *same* when the CI lies within [−tolerance, +tolerance], *differs* when it lies wholly
    outside (ci_low > tolerance or ci_high < −tolerance), *unclear* otherwise or when missing."""
    low, high = delta.get("ci_low"), delta.get("ci_high")
    if low is None or high is None:
        return "unclear"
    if -tolerance <= low and high <= tolerance:
        return "same"
    if low > tolerance or high < -tolerance:
        return "differs"
    return "unclear"


def verdict_replicas(sync_delta: dict[str, Any]) -> Verdict:
    """The replicas claim from Δ = sync_batchnorm (N replicas) − 1 replica, final test accuracy
    (paired over seeds, with its CI): ``REPLICAS_RULE``."""
    outcome = equivalence_outcome(sync_delta, REPLICA_TOLERANCE)
    return {"same": HOLDS, "differs": FAILS, "unclear": UNSURE}[outcome]
