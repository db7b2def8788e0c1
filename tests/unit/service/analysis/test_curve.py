"""A Curve (the clean series the measures read through numpy) measures exactly as the same
points given as plain (step, value) pairs, missing and non-finite values included."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.analysis.downsample import downsample
from service.analysis.runs import (
    Curve,
    best,
    clean,
    curve_of,
    final,
    plateau,
    steps_to_target,
    tail_gain,
)

values = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.floats(-10, 10, allow_nan=False),
)
series = st.dictionaries(st.integers(0, 500), values, max_size=60).map(
    lambda d: list(d.items())[::-1]  # unsorted, as a caller may pass them
)


def reference_clean(points: list) -> list:
    """clean() as it was written before Curve, in plain Python."""
    kept = [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(v)]
    return sorted(kept, key=lambda p: p[0])


@settings(max_examples=100, deadline=None)
@given(series, st.floats(-10, 10, allow_nan=False), st.booleans())
def test_measures_on_a_curve_equal_the_pure_python_ones(points, target, up) -> None:  # noqa: ANN001
    pairs = reference_clean(points)
    curve = clean(points)
    assert isinstance(curve, Curve) and curve == pairs and list(curve) == pairs
    assert clean(curve) is curve  # already clean: not copied, not re-sorted

    hits = [s for s, v in pairs if (v >= target if up else v <= target)]
    assert steps_to_target(curve, target, up) == (hits[0] if hits else None)
    vals = [v for _, v in pairs]
    assert best(curve, up) == ((max(vals) if up else min(vals)) if vals else None)
    assert final(curve) == (vals[-1] if vals else None)
    if len(pairs) >= 3:
        start = pairs[-1][0] - 0.2 * (pairs[-1][0] - pairs[0][0])
        head = [v for s, v in pairs if s < start]
        rest = [v for s, v in pairs if s >= start]
        if head and len(rest) >= 2:
            sign = 1.0 if up else -1.0
            head_best = max(sign * v for v in head)
            gain = max(sign * v for v in rest) - head_best
            expected = None if head_best == 0 else max(0.0, gain) / abs(head_best)
            assert tail_gain(curve, up) == expected
            assert plateau(curve, up) == (None if expected is None else expected <= 0.01)


def test_a_curve_from_store_arrays_drops_non_finite_values_and_downsamples_alike() -> None:
    steps = np.arange(0, 5000, dtype=np.int64)
    vals = np.sin(steps / 300.0) + steps / 5000.0
    vals[[7, 900]] = [np.nan, np.inf]
    curve = curve_of(steps, vals)
    pairs = [(int(s), float(v)) for s, v in zip(steps, vals, strict=True) if np.isfinite(v)]
    assert curve == pairs and len(curve) == 4998 and curve[-1] == pairs[-1]
    assert curve[10:12] == pairs[10:12]
    assert downsample(curve, 100) == downsample(pairs, 100)
