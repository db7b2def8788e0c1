"""/api/v1/runs/{id}/metrics: a run's series, paged by step or downsampled for plotting."""

from __future__ import annotations

import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from service import store
from service.analysis.downsample import downsample_indices
from service.api.cache import etag, finished_cache, heavy_slot, live_cache, not_modified
from service.api.common import MAX_STEP, NOT_FOUND, PROBLEM, RunId
from service.api.deps import SettingsDep, in_session, json_body
from service.api.paging import decode_step_cursor, encode_step_cursor, page_arrays
from service.schemas import KeyInfo, MetricsOut, SeriesOut
from service.settings import Settings
from service.store import FINISHED
from service.store.series import Arrays, as_lists

router = APIRouter(prefix="/runs", tags=["metrics"])

EMPTY: Arrays = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
Summary = dict[str, dict[str, int]]
KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Steps are 32-bit integer columns: a larger bound overflows the database driver (SQLite:
# OverflowError, PostgreSQL: "integer out of range"), a 500 before these limits existed.
MAX_KEYS = 64


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
    def work(session: Session) -> tuple[str, bytes | None]:
        run = store.get_run(session, run_id)  # 404 before anything else
        # What the body depends on: the query and the version of the run's points (their
        # counts, step ranges and write revisions), read in one small query. A poller whose
        # copy is current gets a 304 without the points being read; otherwise the body comes
        # from memory while the points are unchanged (a finished run's stay so).
        version = store.metric_versions(session, [run_id])[run_id]
        query = (keys, step_min, step_max, max_points, cursor, limit, settings.max_metric_points)
        tag = etag("metrics", run_id, version, *query)
        if not_modified(request, tag):
            return tag, None
        summary = {
            k: {"count": n, "first_step": lo, "last_step": hi} for k, n, lo, hi, _ in version
        }
        cache = finished_cache if run.status in FINISHED else live_cache
        body = cache(request).get_or_compute(("metrics", tag), lambda: compute(session, summary))
        return tag, body

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

    tag, body = await in_session(request, work)
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if body is None:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


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
            series[key] = SeriesOut.model_construct(
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
    # One read of the step range gives both the totals and the page (the points after the
    # cursor, cut by page_series).
    full = store.read_series(
        session, [run_id], keys=wanted, step_min=step_min, step_max=step_max
    ).get(run_id, {})
    rest = {}
    for key, (steps, values) in full.items():
        start = 0 if after is None else int(np.searchsorted(steps, after, "right"))
        rest[key] = (steps[start:], values[start:])
    page, boundary = page_arrays(rest, page_size)
    series = {
        key: _series_out(*page.get(key, EMPTY), len(full.get(key, EMPTY)[0]), False)
        for key in _ordered_keys(wanted, full)
    }
    next_cursor = encode_step_cursor(boundary) if boundary is not None else None
    return MetricsOut(run_id=run_id, keys=key_info, series=series, next_cursor=next_cursor)


def _ordered_keys(wanted: list[str] | None, present: dict[str, Any]) -> list[str]:
    # Keys asked for come back even when empty (e.g. test_acc before the first evaluation).
    return wanted if wanted is not None else sorted(present)


def _series_out(steps: np.ndarray, values: np.ndarray, total: int, downsampled: bool) -> SeriesOut:
    out_steps, out_values = as_lists(steps, values)
    return SeriesOut.model_construct(
        steps=out_steps, values=out_values, total_points=total, downsampled=downsampled
    )
