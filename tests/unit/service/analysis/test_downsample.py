"""service.analysis.downsample: the one downsampling implementation (comparison curves and
GET /runs/{id}/metrics?max_points=)."""

from __future__ import annotations

import numpy as np
import pytest

from service.analysis.downsample import downsample, downsample_indices, lttb


def test_lttb_identity_for_short_series():
    pts = [(i, float(i % 3)) for i in range(10)]
    assert lttb(pts, 10) == pts
    assert lttb(pts, 50) == pts
    assert downsample(pts, 10) == pts


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_lttb_keeps_first_last_and_at_most_n(n):
    rng = np.random.default_rng(1)
    pts = [(i, float(v)) for i, v in enumerate(rng.normal(size=500))]
    out = lttb(pts, n)
    assert len(out) == n
    assert out[0] == pts[0] and out[-1] == pts[-1]
    assert [p[0] for p in out] == sorted({p[0] for p in out})  # increasing, no duplicates


def test_lttb_picks_a_spike():
    pts = [(i, 0.0) for i in range(100)]
    pts[37] = (37, 10.0)
    assert (37, 10.0) in lttb(pts, 10)


@pytest.mark.parametrize("n", [4, 5, 20, 100])
def test_downsample_keeps_first_last_and_extremes(n):
    rng = np.random.default_rng(2)
    values = rng.normal(size=1000)
    pts = [(i, float(v)) for i, v in enumerate(values)]
    out = downsample(pts, n)
    assert len(out) <= n
    assert out[0] == pts[0] and out[-1] == pts[-1]
    assert pts[int(np.argmax(values))] in out
    assert pts[int(np.argmin(values))] in out
    assert [p[0] for p in out] == sorted({p[0] for p in out})


def test_downsample_rejects_tiny_n():
    with pytest.raises(ValueError):
        downsample([(i, 0.0) for i in range(10)], 3)


def test_downsample_keeps_null_markers() -> None:
    points = [(s, float(s % 7)) for s in range(100)] + [(100, None), (101, None)]
    kept = downsample(points, 10)
    assert len(kept) <= 10 and (100, None) in kept and kept[0] == (0, 0.0)


def test_indices_and_points_agree_with_and_without_nulls() -> None:
    rng = np.random.default_rng(3)
    values: list[float | None] = [float(v) for v in rng.normal(size=300)]
    values[150] = values[151] = values[299] = None
    steps = list(range(0, 600, 2))
    for vals in (values, [0.0 if v is None else v for v in values]):
        kept = downsample_indices(steps, vals, 20)
        assert len(kept) <= 20 and kept == sorted(kept)
        assert downsample(list(zip(steps, vals, strict=True)), 20) == [
            (steps[i], vals[i]) for i in kept
        ]
    kept = downsample_indices(steps, values, 20)
    assert 150 in kept and 299 in kept and 151 not in kept  # first and last null as markers


def test_the_api_and_the_comparison_share_this_implementation() -> None:
    """One implementation: neither the metrics API nor the comparison defines its own."""
    import service.analysis.compare as compare_module
    import service.api.metrics as metrics_api

    assert metrics_api.downsample_indices is downsample_indices
    assert compare_module.downsample is downsample
    for module in (metrics_api, compare_module):
        own = [n for n in vars(module) if "downsample" in n or "lttb" in n]
        assert all(getattr(module, n).__module__ == downsample.__module__ for n in own), own
