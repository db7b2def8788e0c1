"""How a metric series is stored: chunks of consecutive points packed as arrays.

The layout (tables in ``service.models``): a run's key is one ``metric_series`` row with an
integer id; its points are ``metric_chunks`` rows of up to CHUNK_POINTS consecutive points,
steps as little-endian int32 and values as little-endian float64 (NaN where the trainer reported
no finite value, read back as ``None``), with the chunk's step range, count, number of finite
values and their min/max/mean.

Why this layout and not one row per point (what bnlab had) or pre-computed downsampled levels:
- A 10k-point history is ~10 rows of ~12 KB instead of 10,000 rows of a 36-character run id, a
  key, a step and a value: the database reads, and the driver decodes, a few blobs, and numpy
  turns each into an array in microseconds. Reads are exact at full resolution by construction.
- Ingest writes a handful of rows per batch (one per key, usually an update of the key's last,
  unfilled chunk, which PostgreSQL appends to in place of a client's read and rewrite) instead
  of one row per point; the integer series id replaces the repeated UUID.
- Downsampled levels are not stored: decoding a whole 10k-point series costs well under a
  millisecond, so downsampling on read (LTTB plus first, last, min, max; one implementation in
  ``service.analysis.downsample``) stays exact, honest and has nothing to keep in sync. The chunk
  min/max/mean are there to answer "best so far" or to skip chunks without decoding them.

This module is pure (numpy only): grouping a batch, packing, unpacking, splitting into chunks.
``service.store.metrics`` does the database side.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

CHUNK_POINTS = 1024  # points per chunk: ~12 KB of arrays, a few chunks per typical series
STEP_DTYPE = np.dtype("<i4")
VALUE_DTYPE = np.dtype("<f8")

Arrays = tuple[np.ndarray, np.ndarray]  # steps (int64), values (float64, NaN = missing)


def group_points(points: Iterable[tuple[str, int, float | None]]) -> dict[str, Arrays]:
    """A batch of (key, step, value) as sorted arrays per key, each step once: the first
    occurrence in the batch wins, as a re-sent point never replaces a stored one."""
    columns = list(zip(*points, strict=True))
    if not columns:
        return {}
    keys, steps, values = columns
    index = {key: i for i, key in enumerate(dict.fromkeys(keys))}  # in order of appearance
    codes = np.fromiter(map(index.__getitem__, keys), np.int64, len(keys))
    step_array = np.asarray(steps, dtype=np.int64)
    value_array = np.asarray(values, dtype=np.float64)  # None becomes NaN
    order = np.lexsort((step_array, codes))  # by key, then step; stable: first occurrence first
    codes, step_array, value_array = codes[order], step_array[order], value_array[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (codes[1:] != codes[:-1]) | (step_array[1:] != step_array[:-1])
    codes, step_array, value_array = codes[first], step_array[first], value_array[first]
    bounds = np.searchsorted(codes, np.arange(len(index) + 1))
    return {
        key: (step_array[bounds[i] : bounds[i + 1]], value_array[bounds[i] : bounds[i + 1]])
        for key, i in index.items()
    }


def pack(steps: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """The columns of one chunk holding these points (sorted, non-empty)."""
    finite = values[np.isfinite(values)]
    has = len(finite) > 0
    return {
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "count": len(steps),
        "steps": steps.astype(STEP_DTYPE).tobytes(),
        "values": values.astype(VALUE_DTYPE).tobytes(),
        "min_value": float(finite.min()) if has else None,
        "max_value": float(finite.max()) if has else None,
        "mean_value": float(finite.mean()) if has else None,
        "finite_count": len(finite),
    }


def unpack(steps: bytes, values: bytes) -> Arrays:
    return (
        np.frombuffer(steps, dtype=STEP_DTYPE).astype(np.int64),
        np.frombuffer(values, dtype=VALUE_DTYPE),
    )


def split(steps: np.ndarray, values: np.ndarray, size: int = CHUNK_POINTS) -> list[Arrays]:
    """Sorted points cut into runs of at most ``size``."""
    return [(steps[i : i + size], values[i : i + size]) for i in range(0, len(steps), size)]


def concat(parts: list[Arrays]) -> Arrays:
    """Chunks (in first-step order) as one series in step order. Chunks only overlap in step
    range when a missing point was filled in later, then the result is sorted."""
    if not parts:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    if len(parts) == 1:
        return parts[0]
    steps = np.concatenate([s for s, _ in parts])
    values = np.concatenate([v for _, v in parts])
    if not bool(np.all(steps[1:] > steps[:-1])):
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
    return steps, values


def as_lists(steps: np.ndarray, values: np.ndarray) -> tuple[list[int], list[float | None]]:
    """Arrays as the JSON-ready lists the API sends (NaN back to None)."""
    out = values.tolist()
    if bool(np.isnan(values).any()):
        out = [None if v != v else v for v in out]
    return steps.tolist(), out
