"""Downsampling a metric series for plotting: the one implementation bnlab uses.

Both the comparison curves (``service.analysis.compare``) and ``GET /runs/{id}/metrics?
max_points=`` go through :func:`downsample_indices`, so a curve looks the same in a comparison, a
figure and the dashboard.

The method: Largest-Triangle-Three-Buckets (Steinarsson 2013) keeps the shape, and the global
minimum and maximum are kept too, so a plotted best accuracy or loss spike is the real one.
Missing values (``None``: a non-finite loss the store keeps as null) cannot be ranked; the first
and last of them are kept as markers of where the series broke, the rest dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tsdownsample import LTTBDownsampler

Point = tuple[int, float]
# A stored point may have no value (a non-finite loss stored as null).
MaybePoint = tuple[int, float | None]

MIN_POINTS = 4  # first, last, min and max
MAX_NULL_MARKERS = 2  # the first and the last missing value


def lttb(points: Sequence[Point], n: int) -> list[Point]:
    """Largest-Triangle-Three-Buckets: ``n`` points that keep the shape.

    The first and last points are kept. The points between are split into ``n - 2`` buckets of
    equal count; from each bucket the point kept is the one forming the largest triangle with
    the point kept from the previous bucket and the *mean* point of the next bucket,
    area = |(x_a - x_c)(y_b - y_a) - (x_a - x_b)(y_c - y_a)| / 2. Series of at most ``n``
    points come back unchanged.
    """
    if n < 2:
        raise ValueError(f"lttb needs n >= 2, got {n}")
    pts = list(points)
    if len(pts) <= n:
        return pts
    return [pts[i] for i in _lttb(*_xy(pts), n)]


def downsample(points: Sequence[MaybePoint], n: int) -> list[MaybePoint]:
    """At most ``n`` of ``points`` (in step order): LTTB plus the first, last, minimum and
    maximum finite points, and the first and last missing values as markers."""
    steps, values = getattr(points, "steps", None), getattr(points, "values", None)
    if isinstance(steps, np.ndarray) and isinstance(values, np.ndarray):
        # A clean Curve (service.analysis.runs): its arrays as they are, no None in them.
        kept = downsample_indices(steps, values, n)
        return list(zip(steps[kept].tolist(), values[kept].tolist(), strict=True))
    pts = list(points)
    kept = downsample_indices([s for s, _ in pts], [v for _, v in pts], n)
    return [pts[i] for i in kept]


def downsample_indices(steps: Sequence[float], values: Sequence[float | None], n: int) -> list[int]:
    """The indices :func:`downsample` keeps, ascending by step (the input is in step order).

    Series of at most ``n`` points are kept whole. Of the missing values, at most
    MAX_NULL_MARKERS are kept, and only while at least MIN_POINTS places are left for the
    finite points.
    """
    if n < MIN_POINTS:
        raise ValueError(f"downsample needs n >= {MIN_POINTS} (first, last, min, max), got {n}")
    if len(steps) <= n:
        return list(range(len(steps)))
    if isinstance(values, np.ndarray) or None not in values:  # usual: nothing to set aside
        x, y = np.ascontiguousarray(steps, dtype=float), np.ascontiguousarray(values, dtype=float)
        return _downsample(x, y, n)
    finite = [i for i, v in enumerate(values) if v is not None]
    nulls = [i for i, v in enumerate(values) if v is None]
    room = max(0, min(MAX_NULL_MARKERS, n - MIN_POINTS))
    markers = list(dict.fromkeys(nulls[:1] + nulls[-1:]))[:room]
    kept: list[int] = []
    if finite:
        chosen = downsample_indices(
            [steps[i] for i in finite], [values[i] for i in finite], n - len(markers)
        )
        kept = [finite[j] for j in chosen]
    return sorted(kept + markers, key=lambda i: steps[i])


def _xy(pts: Sequence[Point]) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values as two float arrays (several times faster than converting the list of
    pairs as one 2-D array)."""
    return np.array([s for s, _ in pts], dtype=float), np.array([v for _, v in pts], dtype=float)


def _downsample(x: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    """LTTB gets ``n`` minus the extremes that are not already the first or last point, then
    the extremes are merged in: never more than ``n`` indices."""
    extremes = {int(np.argmin(y)), int(np.argmax(y))} - {0, len(x) - 1}
    return sorted(set(_lttb(x, y, n - len(extremes))) | extremes)


def _lttb(x: np.ndarray, y: np.ndarray, n: int) -> list[int]:
    """The indices (ascending) LTTB keeps of the points (x, y).

    tsdownsample's LTTB (Rust; the same buckets and areas as :func:`lttb` describes, equal
    indices): the bucket loop cannot be vectorized, since each bucket's choice depends on the
    previous one, and in Python it was most of a comparison's time (~1.6 ms a 10k series)."""
    size = len(x)
    if size <= n:
        return list(range(size))
    if n == 2:  # tsdownsample needs n >= 3; first and last is all LTTB keeps anyway
        return [0, size - 1]
    return LTTBDownsampler().downsample(x, y, n_out=n).tolist()
