"""Compare training runs: steps-to-target, speed-up, seed groups ("arms"), downsampled curves.

Pure functions over metric series (numpy, scipy and the standard library only): no database, no
HTTP, no torch. The API loads runs into :class:`RunData`, calls :func:`compare` and serialises
``Comparison.to_dict()`` (JSON) or :func:`to_csv`.

The paper's headline measure (Ioffe & Szegedy 2015, Fig. 2-3) is *steps to reach the baseline's
best accuracy*; the speed-up of a run is ``baseline steps ÷ run steps``. This module computes
that for single runs and, over several seeds, for groups of runs whose specs differ only in the
seed (an *arm*), with bootstrap confidence intervals and a rank test against the baseline arm.

Censoring. A run that never reaches the target has no steps-to-target: its true value is
"more than the run's step budget" (or infinite, if it diverged). Such a value is *censored*,
not missing and not an error:

* per run, ``steps_to_target`` is ``None`` and the run's speed-up is ``None``;
* per arm, a censored run counts as its step budget (``spec.steps``, or the last logged step if
  larger). The arm's mean is then a *restricted mean* (survival analysis' RMST): a lower bound
  on the true mean steps-to-target, marked ``"bound": "lower"``. The arm's speed-up
  (baseline mean ÷ arm mean) is then an upper bound (``"bound": "upper"``) and, when the
  baseline arm is censored instead, a lower bound; with censoring on both sides the direction
  is unknown and the speed-up is ``None``;
* the significance test (two-sided Mann-Whitney U) ranks censored runs as +inf, i.e. slower
  than every run that reached the target, which is exactly what is known about them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

Point = tuple[int, float]
Series = list[Point]

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95

# Spec fields that never define an arm: the seed is what repeats within an arm, the name is a
# label, and spec.device is where it ran (the actual device is checked as a confounder).
NOT_A_FACTOR = ("name", "seed", "device")
# Differences in these are not what a comparison means to study: they are flagged as warnings.
# eval_every sets the resolution of steps-to-target, so it confounds it too.
CONFOUNDING_SPEC_KEYS = ("dataset", "data_path", "train_size", "steps", "eval_every")
# Short names for arm labels where the leaf name alone would read badly.
LABEL_NAMES = {"optimizer.name": "optimizer", "model.arch": "arch"}


# --------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """One run as the API loads it from the database.

    ``metrics`` maps a key of :mod:`bncore.events` (``test_acc``, ``train_loss``, ``act_p50``,
    ...) to ``(step, value)`` pairs; values may be ``None`` or non-finite (a diverged loss), and
    such points are ignored by every computation here.
    """

    id: str
    name: str
    spec: dict[str, Any]
    status: str = "succeeded"
    summary: dict[str, Any] = field(default_factory=dict)
    torch_version: str | None = None
    device: str | None = None
    wall_time: float | None = None
    diverged_step: int | None = None
    metrics: dict[str, Series] = field(default_factory=dict)

    def series(self, key: str) -> Series:
        """The finite points of one metric, sorted by step."""
        return clean(self.metrics.get(key, []))

    @property
    def diverged(self) -> bool:
        return self.status == "diverged" or self.diverged_step is not None

    @property
    def seed(self) -> int | None:
        return self.spec.get("seed")

    @property
    def budget(self) -> int:
        """The run's step budget: spec.steps, or the last logged step if that is larger."""
        last = max((s for pts in self.metrics.values() for s, _ in pts), default=0)
        return max(int(self.spec.get("steps") or 0), int(last))


def clean(points: Iterable[Sequence[Any]]) -> Series:
    """Sort by step and drop points whose value is missing or not finite."""
    out = [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(float(v))]
    return sorted(out, key=lambda p: p[0])


# --------------------------------------------------------------------------------------------
# Downsampling
# --------------------------------------------------------------------------------------------


def lttb(points: Sequence[Point], n: int) -> Series:
    """Largest-Triangle-Three-Buckets (Steinarsson 2013): ``n`` points that keep the shape.

    The first and last points are kept. The points between are split into ``n - 2`` buckets of
    equal count; from each bucket the point kept is the one forming the largest triangle with
    the point kept from the previous bucket and the *mean* point of the next bucket,
    area = |(x_a - x_c)(y_b - y_a) - (x_a - x_b)(y_c - y_a)| / 2. Series of at most ``n``
    points come back unchanged.
    """
    if n < 2:
        raise ValueError(f"lttb needs n >= 2, got {n}")
    pts = list(points)
    return [pts[i] for i in _lttb_indices(pts, n)]


def _lttb_indices(pts: Sequence[Point], n: int) -> list[int]:
    """Indices (ascending) of the points LTTB keeps; all of them when len(pts) <= n."""
    if len(pts) <= n:
        return list(range(len(pts)))
    return _lttb(*_xy(pts), n)


def _xy(pts: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values as two float arrays (several times faster than converting the list of
    pairs as one 2-D array)."""
    return np.array([s for s, _ in pts], dtype=float), np.array([v for _, v in pts], dtype=float)


def _lttb(x: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    """_lttb_indices on the points' steps and values."""
    size = len(x)
    if size <= n:
        return list(range(size))
    if n == 2:
        return [0, size - 1]
    # n - 2 buckets of (nearly) equal count over the interior points 1 .. len-2.
    edges = np.floor(np.linspace(1, size - 1, n - 1)).astype(int)
    # Every bucket's next-bucket mean point at once, from running sums (after the last bucket,
    # the last point itself): these do not depend on the points kept, only the areas do.
    sum_x = np.concatenate(([0.0], np.cumsum(x)))
    sum_y = np.concatenate(([0.0], np.cumsum(y)))
    hi, nxt = edges[1:], np.append(edges[2:], size)
    count = nxt - hi
    cx, cy = (sum_x[nxt] - sum_x[hi]) / count, (sum_y[nxt] - sum_y[hi]) / count
    xs, ys = x.tolist(), y.tolist()
    kept = [0]
    ax, ay = xs[0], ys[0]
    for lo, hi_b, cx_b, cy_b in zip(
        edges[:-1].tolist(), hi.tolist(), cx.tolist(), cy.tolist(), strict=True
    ):
        area = np.abs((ax - cx_b) * (y[lo:hi_b] - ay) - (ax - x[lo:hi_b]) * (cy_b - ay))
        best = lo + int(area.argmax())
        kept.append(best)
        ax, ay = xs[best], ys[best]
    kept.append(size - 1)
    return kept


def downsample(points: Sequence[Point], n: int) -> Series:
    """LTTB that also keeps the global minimum and maximum; never more than ``n`` points.

    The curve's shape comes from LTTB; its first, last and extreme points are always there, so
    a plotted best accuracy or loss spike is the real one. LTTB gets ``n`` minus the number of
    extremes that are not already the first or last point, then the extremes are merged in.
    """
    if n < 4:
        raise ValueError(f"downsample needs n >= 4 (first, last, min, max), got {n}")
    pts = list(points)
    if len(pts) <= n:
        return pts
    return [pts[i] for i in _downsample(*_xy(pts), n)]


def downsample_indices(steps: Sequence[float], values: Sequence[float], n: int) -> list[int]:
    """``downsample`` on a series given as its steps and values: the indices kept, ascending."""
    if n < 4:
        raise ValueError(f"downsample needs n >= 4 (first, last, min, max), got {n}")
    if len(steps) <= n:
        return list(range(len(steps)))
    return _downsample(np.array(steps, dtype=float), np.array(values, dtype=float), n)


def _downsample(x: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    extremes = {int(np.argmin(y)), int(np.argmax(y))} - {0, len(x) - 1}
    return sorted(set(_lttb(x, y, n - len(extremes))) | extremes)


# --------------------------------------------------------------------------------------------
# Per-run measures
# --------------------------------------------------------------------------------------------


def steps_to_target(
    points: Sequence[Point], target: float, higher_is_better: bool = True
) -> int | None:
    """The first step whose value is ≥ target (≤ for a lower-is-better metric such as a loss).

    ``None`` means the target was never reached: a censored value, not an error.
    """
    for step, value in clean(points):
        if (value >= target) if higher_is_better else (value <= target):
            return step
    return None


def best(points: Sequence[Point], higher_is_better: bool = True) -> float | None:
    """The best value of a series (max, or min for a loss); None for an empty series."""
    values = [v for _, v in clean(points)]
    if not values:
        return None
    return max(values) if higher_is_better else min(values)


def final(points: Sequence[Point]) -> float | None:
    """The value at the last finite point; None for an empty series."""
    pts = clean(points)
    return pts[-1][1] if pts else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, None when either is missing (censored) or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def higher_is_better(metric: str) -> bool:
    """Losses go down; every other metric compared here (accuracies) goes up."""
    return "loss" not in metric


# --------------------------------------------------------------------------------------------
# Arms: grouping by spec-minus-seed, labels, confounders
# --------------------------------------------------------------------------------------------


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict → dotted keys ({"model": {"norm": x}} → {"model.norm": x}); lists → tuples."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = tuple(value) if isinstance(value, list) else value
    return flat


def arm_key(spec: dict[str, Any]) -> str:
    """What identifies an arm: the flattened spec without seed, name and device, as JSON."""
    flat = {k: v for k, v in flatten(spec).items() if k not in NOT_A_FACTOR}
    return json.dumps(flat, sort_keys=True, default=str)


def group_runs(runs: Sequence[RunData]) -> list[list[RunData]]:
    """Runs whose specs differ only in seed (and name, device) form one arm; in input order."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(arm_key(run.spec), []).append(run)
    return list(groups.values())


def varying_factors(arms: Sequence[list[RunData]]) -> list[str]:
    """The dotted spec keys whose value differs between arms: the factors being compared."""
    flats = [flatten(arm[0].spec) for arm in arms]
    keys = sorted({k for f in flats for k in f} - set(NOT_A_FACTOR))
    return [k for k in keys if len({_text(f.get(k)) for f in flats}) > 1]


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return "none" if value is None else str(value)


def _short(key: str, factors: Sequence[str]) -> str:
    """A factor's name in a label: the leaf name unless two factors share it."""
    if key in LABEL_NAMES:
        return LABEL_NAMES[key]
    leaf = key.rsplit(".", 1)[-1]
    return leaf if sum(f.rsplit(".", 1)[-1] == leaf for f in factors) == 1 else key


def arm_label(spec: dict[str, Any], factors: Sequence[str]) -> str:
    """E.g. "norm=batchnorm, lr=0.5"; "all runs" when nothing varies."""
    flat = flatten(spec)
    parts = [f"{_short(k, factors)}={_text(flat.get(k))}" for k in factors]
    return ", ".join(parts) or "all runs"


def confounder_warnings(arms: Sequence[list[RunData]], labels: Sequence[str]) -> list[str]:
    """Warnings for arms (or runs) that differ in what is not meant to be compared.

    Spec keys in CONFOUNDING_SPEC_KEYS that vary between arms, and the torch version or device
    the runs actually used (checked over all runs: within an arm it adds noise, across arms
    bias).
    """
    warnings = []
    for key in CONFOUNDING_SPEC_KEYS:
        by_arm = {
            label: _text(arm[0].spec.get(key)) for arm, label in zip(arms, labels, strict=True)
        }
        if len(set(by_arm.values())) > 1:
            detail = "; ".join(f"{v} ({label})" for label, v in by_arm.items())
            warnings.append(f"arms differ in {key}: {detail}")
    for attr, name in (("torch_version", "torch version"), ("device", "device")):
        values = {_text(getattr(r, attr)) for arm in arms for r in arm}
        if len(values) > 1:
            warnings.append(f"runs differ in {name}: {', '.join(sorted(values))}")
    return warnings


# --------------------------------------------------------------------------------------------
# Statistics over an arm's seeds
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*groups)``, each group resampled independently.

    ``statistic`` takes one (resamples × n_i) array per group and returns one value per row.
    The rng is seeded, so the same input always gives the same interval.
    """
    rng = np.random.default_rng(seed)
    draws = [rng.choice(np.asarray(s, float), size=(resamples, len(s))) for s in samples]
    values = statistic(*draws)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mean_ci(values: Sequence[float], bound: str | None = None) -> dict[str, Any]:
    """{"mean", "ci_low", "ci_high", "bound"} for the mean of ``values`` (None when empty)."""
    if not values:
        return {"mean": None, "ci_low": None, "ci_high": None, "bound": None}
    lo, hi = bootstrap_ci([values], lambda a: a.mean(axis=1))
    return {"mean": float(np.mean(values)), "ci_low": lo, "ci_high": hi, "bound": bound}


def speedup_ci(baseline: Sequence[float], arm: Sequence[float], bound: str | None):
    """Speed-up of an arm = mean(baseline steps) ÷ mean(arm steps), bootstrap CI of that ratio."""
    if not baseline or not arm:
        return {"mean": None, "ci_low": None, "ci_high": None, "bound": None}
    # An arm that is at the target at step 0 (a target at chance) has a mean, or resamples,
    # of 0 steps: the ratio is inf (or nan for 0/0), which the JSON output reports as null.
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = bootstrap_ci([baseline, arm], lambda b, a: b.mean(axis=1) / a.mean(axis=1))
        mean = np.mean(baseline) / np.mean(arm)
    return {
        "mean": float(mean),
        "ci_low": lo,
        "ci_high": hi,
        "bound": bound,
    }


def mann_whitney(baseline: Sequence[float], arm: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value on steps-to-target (censored values given as +inf).

    None when it says nothing: an empty group, or every value tied (e.g. all censored).
    """
    values = list(baseline) + list(arm)
    if not baseline or not arm or len(set(values)) == 1:
        return None
    # Rank-based: +inf ranks above every finite value, ties share a rank.
    p = stats.mannwhitneyu(arm, baseline, alternative="two-sided").pvalue
    return float(p) if math.isfinite(p) else None


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run's row of a comparison. ``curves``: metric key → [[step, value], ...]."""

    id: str
    name: str
    arm: str
    seed: int | None
    status: str
    diverged: bool
    diverged_step: int | None
    wall_time: float | None
    torch_version: str | None
    device: str | None
    budget: int
    best_test_acc: float | None
    final_test_acc: float | None
    final_train_loss: float | None
    final_test_loss: float | None
    best: float | None
    steps_to_target: int | None
    reached: bool
    speedup: float | None
    curves: dict[str, list[list[float]]]


@dataclass
class ArmResult:
    """One arm (runs differing only in seed). Stats are {"mean", "ci_low", "ci_high", "bound"}."""

    label: str
    factors: dict[str, Any]
    run_ids: list[str]
    is_baseline: bool
    n: int
    n_reached: int
    steps_to_target: dict[str, Any]
    speedup: dict[str, Any]
    best: dict[str, Any]
    p_value: float | None


@dataclass
class Comparison:
    metric: str
    higher_is_better: bool
    target: float | None
    target_source: str  # "given" | "baseline" | "none"
    baseline_id: str
    baseline_arm: str
    points: int
    factors: list[str]
    runs: list[RunResult]
    arms: list[ArmResult]
    warnings: list[str]
    method: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: non-finite floats become None (JSON has no NaN)."""
        return _json_safe(asdict(self))

    def arm_of(self, run_id: str) -> str:
        return next(r.arm for r in self.runs if r.id == run_id)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


METHOD = {
    "target": "Default target: the lowest of the baseline arm's best values, so that every "
    "baseline seed reaches it (with one baseline run: its best value, as in the paper).",
    "steps_to_target": "First logged step whose value is >= target (<= for a loss); None = "
    "never reached (censored).",
    "speedup": "Per run: baseline run's steps-to-target / the run's; None when either is "
    "censored. Per arm: mean baseline-arm steps / mean arm steps.",
    "censoring": "In arm statistics a censored run counts as its step budget: the mean is a "
    "restricted mean, a lower bound ('bound': 'lower'); the arm's speed-up is then an upper "
    "bound, or a lower bound when only the baseline is censored; None when both are.",
    "ci": f"{CONFIDENCE:.0%} percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples, "
    f"rng seed {BOOTSTRAP_SEED}; groups resampled independently.",
    "test": "Two-sided Mann-Whitney U on steps-to-target, arm vs baseline arm, censored ranked "
    "as +inf.",
    "curves": "Each series downsampled to at most `points` points (LTTB plus first, last, min "
    "and max); x is the training step for every run.",
}


# --------------------------------------------------------------------------------------------
# compare()
# --------------------------------------------------------------------------------------------


def compare(
    runs: Sequence[RunData],
    baseline_id: str | None = None,
    target: float | None = None,
    metric: str = "test_acc",
    points: int = 200,
) -> Comparison:
    """Compare runs on ``metric``: steps to reach ``target`` and speed-up over the baseline.

    Baseline: ``baseline_id``, else the first run with ``spec.model.norm == "none"``, else the
    first run. Target: given, else the lowest best value over the baseline's arm (see METHOD).
    """
    if not runs:
        raise ValueError("compare needs at least one run")
    up = higher_is_better(metric)
    baseline = _pick_baseline(runs, baseline_id)
    arms = group_runs(runs)
    factors = varying_factors(arms)
    labels = [arm_label(arm[0].spec, factors) for arm in arms]
    base_arm = next(i for i, arm in enumerate(arms) if any(r is baseline for r in arm))

    target_source = "given"
    if target is None:
        bests = [best(r.series(metric), up) for r in arms[base_arm]]
        bests = [b for b in bests if b is not None]
        target_source = "baseline" if bests else "none"
        target = (min(bests) if up else max(bests)) if bests else None

    def stt(run: RunData) -> int | None:
        return None if target is None else steps_to_target(run.series(metric), target, up)

    base_steps = stt(baseline)
    label_of = {r.id: label for arm, label in zip(arms, labels, strict=True) for r in arm}
    run_results = [
        _run_result(r, label_of[r.id], metric, up, stt(r), base_steps, points) for r in runs
    ]
    by_id = {r.id: r for r in run_results}
    arm_results = [
        _arm_result(
            arm, label, factors, [by_id[r.id] for r in arms[base_arm]], by_id, i == base_arm
        )
        for i, (arm, label) in enumerate(zip(arms, labels, strict=True))
    ]
    warnings = confounder_warnings(arms, labels)
    if target is None:
        warnings.append(f"baseline arm has no {metric} values: no target, no steps-to-target")
    return Comparison(
        metric=metric,
        higher_is_better=up,
        target=target,
        target_source=target_source,
        baseline_id=baseline.id,
        baseline_arm=labels[base_arm],
        points=points,
        factors=factors,
        runs=run_results,
        arms=arm_results,
        warnings=warnings,
        method=dict(METHOD),
    )


def _pick_baseline(runs: Sequence[RunData], baseline_id: str | None) -> RunData:
    if baseline_id is not None:
        for run in runs:
            if run.id == baseline_id:
                return run
        raise ValueError(f"baseline run {baseline_id!r} is not among the compared runs")
    no_norm = [r for r in runs if (r.spec.get("model") or {}).get("norm") == "none"]
    return no_norm[0] if no_norm else runs[0]


def _run_result(
    run: RunData,
    label: str,
    metric: str,
    up: bool,
    steps: int | None,
    base_steps: int | None,
    points: int,
) -> RunResult:
    return RunResult(
        id=run.id,
        name=run.name,
        arm=label,
        seed=run.seed,
        status=run.status,
        diverged=run.diverged,
        diverged_step=run.diverged_step,
        wall_time=run.wall_time,
        torch_version=run.torch_version,
        device=run.device,
        budget=run.budget,
        best_test_acc=best(run.series("test_acc")),
        final_test_acc=final(run.series("test_acc")),
        final_train_loss=final(run.series("train_loss")),
        final_test_loss=final(run.series("test_loss")),
        best=best(run.series(metric), up),
        steps_to_target=steps,
        reached=steps is not None,
        speedup=ratio(base_steps, steps),
        curves={
            key: [[s, v] for s, v in downsample(run.series(key), points)]
            for key in sorted(run.metrics)
        },
    )


def _arm_result(
    arm: list[RunData],
    label: str,
    factors: Sequence[str],
    base: list[RunResult],
    by_id: dict[str, RunResult],
    is_baseline: bool,
) -> ArmResult:
    mine = [by_id[r.id] for r in arm]
    # Censored runs count as their step budget (restricted mean); see the module docstring.
    steps = [float(r.steps_to_target if r.reached else r.budget) for r in mine]
    base_steps = [float(r.steps_to_target if r.reached else r.budget) for r in base]
    censored, base_censored = not all(r.reached for r in mine), not all(r.reached for r in base)
    if is_baseline:  # 1 by definition; the CI shows the seed-to-seed noise
        speedup = speedup_ci(base_steps, steps, None)
    elif censored and base_censored:  # both means are lower bounds: the ratio has no bound
        speedup = speedup_ci([], [], None)
    else:
        speedup = speedup_ci(
            base_steps, steps, "upper" if censored else ("lower" if base_censored else None)
        )
    flat = flatten(arm[0].spec)
    inf = math.inf
    return ArmResult(
        label=label,
        factors={k: _text(flat.get(k)) for k in factors},
        run_ids=[r.id for r in mine],
        is_baseline=is_baseline,
        n=len(mine),
        n_reached=sum(r.reached for r in mine),
        steps_to_target=mean_ci(steps, "lower" if censored else None),
        speedup=speedup,
        best=mean_ci([r.best for r in mine if r.best is not None]),
        p_value=None
        if is_baseline
        else mann_whitney(
            [r.steps_to_target if r.reached else inf for r in base],
            [r.steps_to_target if r.reached else inf for r in mine],
        ),
    )


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "row_type",  # "run" or "arm"
    "arm",
    "run_id",
    "name",
    "seed",
    "status",
    "n",
    "n_reached",
    "steps_to_target",  # run: its value (empty = never reached); arm: the (restricted) mean
    "steps_ci_low",
    "steps_ci_high",
    "steps_bound",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_bound",
    "p_value",
    "best",
    "best_test_acc",
    "final_test_acc",
    "final_train_loss",
    "final_test_loss",
    "diverged",
    "diverged_step",
    "wall_time",
]


def to_csv(comparison: Comparison) -> str:
    """One table, one header: a row per run (row_type=run), then a row per arm (row_type=arm).

    Columns that do not apply to a row type are empty. Curves are not included (use the JSON).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in comparison.runs:
        writer.writerow(
            {
                "row_type": "run",
                "arm": r.arm,
                "run_id": r.id,
                "name": r.name,
                "seed": r.seed,
                "status": r.status,
                "n": 1,
                "n_reached": int(r.reached),
                "steps_to_target": r.steps_to_target,
                "speedup": r.speedup,
                "best": r.best,
                "best_test_acc": r.best_test_acc,
                "final_test_acc": r.final_test_acc,
                "final_train_loss": r.final_train_loss,
                "final_test_loss": r.final_test_loss,
                "diverged": r.diverged,
                "diverged_step": r.diverged_step,
                "wall_time": r.wall_time,
            }
        )
    for a in comparison.arms:
        s, u = a.steps_to_target, a.speedup
        writer.writerow(
            {
                "row_type": "arm",
                "arm": a.label,
                "run_id": " ".join(a.run_ids),
                "n": a.n,
                "n_reached": a.n_reached,
                "steps_to_target": s["mean"],
                "steps_ci_low": s["ci_low"],
                "steps_ci_high": s["ci_high"],
                "steps_bound": s["bound"],
                "speedup": u["mean"],
                "speedup_ci_low": u["ci_low"],
                "speedup_ci_high": u["ci_high"],
                "speedup_bound": u["bound"],
                "p_value": a.p_value,
                "best": a.best["mean"],
            }
        )
    return buf.getvalue()
