"""Paging a run's series by step: the step cursor, and cutting every key at one step.

Shared by GET /runs/{id}/metrics (arrays from the store) and the event streams (points), so
both page the same way: no point skipped, none sent twice.
"""

from __future__ import annotations

import base64

import numpy as np

from service.api.common import MAX_STEP
from service.store.series import Arrays

Points = list[tuple[int, float | None]]


def encode_step_cursor(step: int) -> str:
    return base64.urlsafe_b64encode(f"step:{step}".encode()).decode().rstrip("=")


def decode_step_cursor(cursor: str) -> int:
    """The step a metrics cursor continues after; ValueError for anything we did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, step = raw.partition(":")
        if prefix != "step" or not 0 <= int(step) <= MAX_STEP:
            raise ValueError
        return int(step)
    except Exception as exc:
        raise ValueError("invalid cursor") from exc


def page_series(series: dict[str, Points], limit: int) -> tuple[dict[str, Points], int | None]:
    """page_arrays for (step, value) pairs (the event stream pages these)."""
    truncated = [points[limit - 1][0] for points in series.values() if len(points) > limit]
    if not truncated:
        return series, None
    boundary = min(truncated)
    return {k: [p for p in pts if p[0] <= boundary] for k, pts in series.items()}, boundary


def page_arrays(series: dict[str, Arrays], limit: int) -> tuple[dict[str, Arrays], int | None]:
    """Cut series (steps and values arrays per key, after the cursor) into one page.

    Keys are paged together by step: the page ends at the smallest ``limit``-th step among the
    keys that have more than ``limit`` points, and every key is cut there. So a dense key (every
    step) and a sparse one (every 100th) both continue from the same step on the next page:
    no point is skipped and none is sent twice. Returns (page, step to continue after or None).
    """
    truncated = [int(steps[limit - 1]) for steps, _ in series.values() if len(steps) > limit]
    if not truncated:
        return series, None
    boundary = min(truncated)
    page = {}
    for key, (steps, values) in series.items():
        end = int(np.searchsorted(steps, boundary, "right"))
        page[key] = (steps[:end], values[:end])
    return page, boundary
