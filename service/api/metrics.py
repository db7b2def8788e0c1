"""/api/v1/runs/{id}/metrics: a run's series, paged by step or downsampled for plotting."""

from __future__ import annotations

import base64
import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy.orm import Session

from service import store
from service.analysis.downsample import downsample_indices
from service.api.cache import finished_cache, heavy_slot, live_cache
from service.api.common import MAX_STEP, NOT_FOUND, PROBLEM, RunId
from service.api.deps import SettingsDep, in_session, json_body, json_response
from service.schemas import KeyInfo, MetricsOut, SeriesOut
from service.settings import Settings
from service.store import FINISHED

router = APIRouter(prefix="/runs", tags=["metrics"])

Points = list[tuple[int, float | None]]
Summary = dict[str, dict[str, int]]
KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Steps are 32-bit integer columns: a larger bound overflows the database driver (SQLite:
# OverflowError, PostgreSQL: "integer out of range"), a 500 before these limits existed.
MAX_KEYS = 64


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
    """Cut series fetched with ``limit + 1`` points per key into one page.

    Keys are paged together by step: the page ends at the smallest last step among the keys
    that have more than ``limit`` points, and every key is cut there. So a dense key (every
    step) and a sparse one (every 100th) both continue from the same step on the next page:
    no point is skipped and none is sent twice. Returns (page, step to continue after or None).
    """
    truncated = [points[limit - 1][0] for points in series.values() if len(points) > limit]
    if not truncated:
        return series, None
    boundary = min(truncated)
    return {k: [p for p in pts if p[0] <= boundary] for k, pts in series.items()}, boundary


def parse_keys(keys: str | None) -> list[str] | None:
    if keys is None or not keys.strip():
        return None
    parsed = [k.strip() for k in keys.split(",") if k.strip()]
    bad = [k for k in parsed if not KEY_RE.match(k)]
    if bad:
        raise HTTPException(400, f"keys: invalid metric key {bad[0][:80]!r}")
    if len(parsed) > MAX_KEYS:
        raise HTTPException(400, f"keys: at most {MAX_KEYS} keys per request")
    return list(dict.fromkeys(parsed))


@router.get(
    "/{run_id}/metrics",
    response_model=MetricsOut,
    summary="A run's metric series",
    description="Without `max_points`: pages of at most `limit` points per key (capped by the "
    "server), continued with `next_cursor`; the whole series is reachable. With `max_points`: "
    "each series downsampled (LTTB keeping first, last, min and max) to at most that many "
    "points; `total_points` is the count before downsampling.",
    responses={**NOT_FOUND, 400: {**PROBLEM, "description": "Invalid cursor or key list."}},
)
async def get_metrics(
    run_id: RunId,
    request: Request,
    settings: SettingsDep,
    keys: Annotated[
        str | None, Query(max_length=4000, description="Comma-separated keys; default all.")
    ] = None,
    step_min: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    step_max: Annotated[int | None, Query(ge=0, le=MAX_STEP)] = None,
    max_points: Annotated[
        int | None, Query(ge=4, description="Downsample each series to at most this many.")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int | None, Query(ge=1, description="Points per key per page.")] = None,
) -> Any:
    def work(session: Session) -> bytes:
        run = store.get_run(session, run_id)  # 404 before anything else
        query = (keys, step_min, step_max, max_points, cursor, limit, settings.max_metric_points)
        if run.status in FINISHED:
            # Its points no longer change: a repeat is served from memory, already encoded.
            key = ("metrics", run_id, run.last_step, *query)
            return finished_cache(request).get_or_compute(
                key, lambda: compute(session, store.metric_summary(session, run_id))
            )
        # A live run: points are only ever added (never changed, never removed while it
        # runs), so the per-key counts identify its points exactly; until the next write
        # lands, repeats are served from memory too.
        summary = store.metric_summary(session, run_id)
        fingerprint = tuple((k, v["count"]) for k, v in summary.items())
        key = ("live-metrics", run_id, fingerprint, *query)
        return live_cache(request).get_or_compute(key, lambda: compute(session, summary))

    def compute(session: Session, summary: Summary) -> bytes:
        with heavy_slot(request):
            response = _get_metrics(
                run_id,
                session,
                settings,
                summary,
                keys,
                step_min,
                step_max,
                max_points,
                cursor,
                limit,
            )
        return json_body(MetricsOut, response)

    return json_response(await in_session(request, work))


def _get_metrics(
    run_id: str,
    session: Session,
    settings: Settings,
    summary: Summary,
    keys: str | None,
    step_min: int | None,
    step_max: int | None,
    max_points: int | None,
    cursor: str | None,
    limit: int | None,
) -> MetricsOut:
    wanted = parse_keys(keys)
    if step_min is not None and step_max is not None and step_min > step_max:
        raise HTTPException(400, f"step_min ({step_min}) is greater than step_max ({step_max})")
    cap = settings.max_metric_points
    key_info = {k: KeyInfo(**v) for k, v in summary.items()}

    if max_points is not None:
        if cursor is not None:
            raise HTTPException(400, "cursor: not used with max_points (nothing is paged)")
        n = min(max_points, cap)
        full = store.get_metric_arrays(
            session, run_id, keys=wanted, step_min=step_min, step_max=step_max
        )
        series = {}
        for key in _ordered_keys(wanted, full):
            steps, values = full.get(key, ([], []))
            kept = downsample_indices(steps, values, n)
            series[key] = SeriesOut(
                steps=[steps[i] for i in kept],
                values=[values[i] for i in kept],
                total_points=len(steps),
                downsampled=len(kept) < len(steps),
            )
        return MetricsOut(run_id=run_id, keys=key_info, series=series, next_cursor=None)

    after = None
    if cursor is not None:
        try:
            after = decode_step_cursor(cursor)
        except ValueError as exc:
            raise HTTPException(
                400, "cursor: invalid cursor; pass the next_cursor of a previous page"
            ) from exc
    page_size = min(limit or cap, cap)
    fetched = store.get_metrics(
        session,
        run_id,
        keys=wanted,
        step_min=step_min,
        step_max=step_max,
        after_step=after,
        limit=page_size + 1,
    )
    page, boundary = page_series(fetched, page_size)
    totals = store.count_metrics(session, run_id, keys=wanted, step_min=step_min, step_max=step_max)
    series = {
        key: _series_out(page.get(key, []), totals.get(key, 0), downsampled=False)
        for key in _ordered_keys(wanted, totals)
    }
    next_cursor = encode_step_cursor(boundary) if boundary is not None else None
    return MetricsOut(run_id=run_id, keys=key_info, series=series, next_cursor=next_cursor)


def _ordered_keys(wanted: list[str] | None, present: dict[str, Any]) -> list[str]:
    # Keys asked for come back even when empty (e.g. test_acc before the first evaluation).
    return wanted if wanted is not None else sorted(present)


def _series_out(points: Points, total: int, *, downsampled: bool) -> SeriesOut:
    return SeriesOut(
        steps=[s for s, _ in points],
        values=[v for _, v in points],
        total_points=total,
        downsampled=downsampled,
    )
