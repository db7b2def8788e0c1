"""One run as the comparison sees it (:class:`RunData`), and the measures taken on one series.

Pure functions over ``(step, value)`` pairs: no database, no HTTP, no torch. Missing or
non-finite values (a diverged loss) are dropped by :func:`clean` before anything is measured.
``clean`` returns a :class:`Curve` (still a list of pairs) that the measures take as it is and
read through numpy: a comparison measures each series several times, and over 10 runs × 10k
steps re-cleaning and looping in Python was most of its time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Point = tuple[int, float]
Series = list[Point]

# The plateau check (see plateau()): the tail is the last 20 % of the logged steps, and a
# curve has plateaued when its tail improved its best by at most 1 % (relative).
PLATEAU_TAIL = 0.2
PLATEAU_TOLERANCE = 0.01


@dataclass
class RunData:
    """One run as the API loads it from the database.

    ``metrics`` maps a key of :mod:`bncore.events` (``test_acc``, ``train_loss``, ``act_p50``,
    ...) to ``(step, value)`` pairs; values may be ``None`` or non-finite (a diverged loss), and
    such points are ignored by every computation here. ``summary`` is the trainer's end-event
    summary (``bncore.events.SUMMARY_FIELDS``), empty until the run ends.
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

    def series(self, key: str) -> Curve:
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


class Curve(Sequence[Point]):
    """A clean series: finite ``(step, value)`` points sorted by step, as :func:`clean` makes
    them, held as two numpy arrays (``steps``, ``values``) that the measures read directly;
    indexing and iterating give ``(int, float)`` pairs, and it equals a list of the same
    pairs."""

    def __init__(self, steps: np.ndarray, values: np.ndarray) -> None:
        self.steps, self.values = steps, values

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(zip(self.steps[index].tolist(), self.values[index].tolist(), strict=True))
        return int(self.steps[index]), float(self.values[index])

    def __iter__(self) -> Iterator[Point]:
        return zip(self.steps.tolist(), self.values.tolist(), strict=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"Curve({list(self)!r})"


def curve_of(steps: np.ndarray, values: np.ndarray) -> Curve:
    """The Curve of arrays already in step order (the store's): non-finite values dropped."""
    finite = np.isfinite(values)
    return Curve(np.asarray(steps[finite], dtype=np.int64), np.asarray(values[finite], float))


def clean(points: Iterable[Sequence[Any]]) -> Curve:
    """Sort by step and drop points whose value is missing or not finite (a Curve is
    returned as it is: it is clean already)."""
    if isinstance(points, Curve):
        return points
    out = [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(float(v))]
    out.sort(key=lambda p: p[0])
    steps = np.array([s for s, _ in out], dtype=np.int64)
    return Curve(steps, np.array([v for _, v in out], dtype=float))


def higher_is_better(metric: str) -> bool:
    """Losses go down; every other metric compared here (accuracies) goes up."""
    return "loss" not in metric


def steps_to_target(
    points: Sequence[Point], target: float, higher_is_better: bool = True
) -> int | None:
    """The first step whose value is ≥ target (≤ for a lower-is-better metric such as a loss).

    ``None`` means the target was never reached: a censored value, not an error.
    """
    curve = clean(points)
    hit = curve.values >= target if higher_is_better else curve.values <= target
    first = int(np.argmax(hit)) if len(hit) else 0
    return int(curve.steps[first]) if len(hit) and hit[first] else None


def best(points: Sequence[Point], higher_is_better: bool = True) -> float | None:
    """The best value of a series (max, or min for a loss); None for an empty series."""
    values = clean(points).values
    if not len(values):
        return None
    return float(values.max() if higher_is_better else values.min())


def final(points: Sequence[Point]) -> float | None:
    """The value at the last finite point; None for an empty series."""
    values = clean(points).values
    return float(values[-1]) if len(values) else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator ÷ denominator, None when either is missing (censored) or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def tail_gain(
    points: Sequence[Point], higher_is_better: bool = True, tail: float = PLATEAU_TAIL
) -> float | None:
    """How much the last ``tail`` of the horizon improved the best value, relative to the best
    before it: ``(tail best - head best) / |head best|`` (mirrored for a loss, so a gain is
    positive either way; 0 when the tail did not improve).

    The horizon is the run's logged steps, first to last; the tail starts at
    ``last - tail × (last - first)``. None (unknown) when the head is empty, the tail has fewer
    than two points, or the head's best is 0.
    """
    curve = clean(points)
    steps, values = curve.steps, curve.values
    if len(steps) < 3:
        return None
    start = int(steps[-1]) - tail * (int(steps[-1]) - int(steps[0]))
    in_tail = steps >= start
    head, rest = values[~in_tail], values[in_tail]
    if not len(head) or len(rest) < 2:
        return None
    sign = 1.0 if higher_is_better else -1.0
    head_best = float((sign * head).max())
    gain = float((sign * rest).max()) - head_best
    if head_best == 0:
        return None
    return max(0.0, gain) / abs(head_best)


def plateau(
    points: Sequence[Point],
    higher_is_better: bool = True,
    tail: float = PLATEAU_TAIL,
    tolerance: float = PLATEAU_TOLERANCE,
) -> bool | None:
    """Had the curve plateaued by its last step?

    Rule: yes when the last ``tail`` (20 %) of its logged steps improved its best value by at
    most ``tolerance`` (1 %) relative to the best before them (:func:`tail_gain`); e.g. an
    accuracy whose best was 0.900 at 80 % of the horizon has plateaued if it ends with a best
    ≤ 0.909. A curve still rising has not: a target near its best, and the speed-ups measured
    there, would move with a longer horizon. None when :func:`tail_gain` is unknown.
    """
    gain = tail_gain(points, higher_is_better, tail)
    return None if gain is None else gain <= tolerance
