"""Metric reads: series per key, exact, in step order; per-key summaries and versions.

A read is one query for the chunks of the runs and keys asked for, overlapping the step bounds,
decoded with numpy (``service.store.series``) and cut to the bounds. ``read_series`` gives numpy
arrays for the callers that compute (the API's downsampling, comparisons); ``get_metrics`` and
``get_metric_arrays`` give lists, as JSON wants them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

import numpy as np
from sqlalchemy.orm import Session

from service.store import series as packing
from service.store.raw import Raw


def metric_summary(session: Session, run_id: str) -> dict[str, dict[str, int]]:
    """For each key (in order): number of points and first/last step."""
    return {key: info for key, (info, _) in _summary(session, [run_id]).get(run_id, {}).items()}


def metric_versions(session: Session, run_ids: Sequence[str]) -> dict[str, tuple]:
    """Per run, a value that changes whenever any of its points change (for ETags and cache
    keys): each key's count, step range and write revision. Runs without points map to ()."""
    versions: dict[str, tuple] = {run_id: () for run_id in run_ids}
    for run_id, keys in _summary(session, run_ids).items():
        versions[run_id] = tuple(
            (key, info["count"], info["first_step"], info["last_step"], revision)
            for key, (info, revision) in keys.items()
        )
    return versions


def _summary(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, tuple]]:
    if not run_ids:
        return {}
    rows = Raw(session).fetchall(
        "SELECT s.run_id, s.key, s.revision, sum(c.count), min(c.first_step), max(c.last_step) "
        "FROM metric_series s JOIN metric_chunks c ON c.series_id = s.id "
        f"WHERE s.run_id IN ({_marks(run_ids)}) "
        "GROUP BY s.run_id, s.key, s.revision ORDER BY s.run_id, s.key",
        list(run_ids),
    )
    out: dict[str, dict[str, tuple]] = {}
    for run_id, key, revision, n, lo, hi in rows:
        info = {"count": int(n), "first_step": lo, "last_step": hi}
        out.setdefault(run_id, {})[key] = (info, revision)
    return out


class MetricBounds(TypedDict, total=False):
    """Which points of a run ``get_metrics`` and ``get_metric_arrays`` read: ``keys`` (None:
    all), steps from ``step_min`` to ``step_max`` and past ``after_step``, at most ``limit``
    per key (``after_step``/``limit`` page through long series)."""

    keys: Sequence[str] | None
    step_min: int | None
    step_max: int | None
    after_step: int | None
    limit: int | None


def get_metrics(
    session: Session, run_id: str, **bounds: Unpack[MetricBounds]
) -> dict[str, list[tuple[int, float | None]]]:
    """Series per key as (step, value) pairs, ordered by step (keys in order)."""
    arrays = get_metric_arrays(session, run_id, **bounds)
    return {key: list(zip(steps, values, strict=True)) for key, (steps, values) in arrays.items()}


def get_metric_arrays(
    session: Session, run_id: str, **bounds: Unpack[MetricBounds]
) -> dict[str, tuple[list[int], list[float | None]]]:
    """get_metrics as two lists per key, steps and values (no pair per point: cheaper when
    the caller wants columns anyway, as the JSON series do)."""
    limit = bounds.pop("limit", None)
    series = read_series(session, [run_id], **bounds).get(run_id, {})
    out = {}
    for key, (steps, values) in series.items():
        if limit is not None:
            steps, values = steps[:limit], values[:limit]
        out[key] = packing.as_lists(steps, values)
    return out


def read_series(
    session: Session,
    run_ids: Sequence[str],
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    after_step: int | None = None,
) -> dict[str, dict[str, packing.Arrays]]:
    """Per run, per key (keys in order): the points within the bounds as numpy arrays (steps
    int64, values float64 with NaN for a missing value), in one query for all the runs. Runs
    and keys without points in the bounds are left out."""
    if not run_ids:
        return {}
    lo = step_min
    if after_step is not None:
        lo = after_step + 1 if lo is None else max(lo, after_step + 1)
    where = [f"s.run_id IN ({_marks(run_ids)})"]
    params: list[Any] = list(run_ids)
    if keys:
        where.append(f"s.key IN ({_marks(keys)})")
        params += list(keys)
    if lo is not None:
        where.append("c.last_step >= %s")
        params.append(lo)
    if step_max is not None:
        where.append("c.first_step <= %s")
        params.append(step_max)
    rows = Raw(session).fetchall(
        'SELECT s.run_id, s.key, c.steps, c."values" FROM metric_series s '
        f"JOIN metric_chunks c ON c.series_id = s.id WHERE {' AND '.join(where)} "
        "ORDER BY s.run_id, s.key, c.first_step",
        params,
    )
    parts: dict[str, dict[str, list[packing.Arrays]]] = {}
    for run_id, key, steps, values in rows:
        parts.setdefault(run_id, {}).setdefault(key, []).append(packing.unpack(steps, values))
    out: dict[str, dict[str, packing.Arrays]] = {}
    for run_id, by_key in parts.items():
        for key, chunks in by_key.items():
            steps, values = _within(*packing.concat(chunks), lo, step_max)
            if len(steps):
                out.setdefault(run_id, {})[key] = (steps, values)
    return out


def _within(
    steps: np.ndarray, values: np.ndarray, lo: int | None, hi: int | None
) -> packing.Arrays:
    start = 0 if lo is None else int(np.searchsorted(steps, lo, "left"))
    end = len(steps) if hi is None else int(np.searchsorted(steps, hi, "right"))
    return steps[start:end], values[start:end]


def count_metrics(
    session: Session,
    run_id: str,
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
) -> dict[str, int]:
    """Points per key within a step range (for ``total_points`` of a paged series)."""
    if step_min is None and step_max is None:
        summary = metric_summary(session, run_id)
        return {k: v["count"] for k, v in summary.items() if not keys or k in keys}
    series = read_series(session, [run_id], keys=keys, step_min=step_min, step_max=step_max)
    return {key: len(steps) for key, (steps, _) in series.get(run_id, {}).items()}


def _marks(items: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(items))
