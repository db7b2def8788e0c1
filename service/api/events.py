"""/api/v1/runs/{id}/events: a run's progress as Server-Sent Events.

The stream polls the database (the workers write there; there is no broker round trip to
wait on). Events:

* ``event: status`` (no id) with a RunOut, whenever the status, reason or cancel flag changes;
* ``event: metrics``, ``id: <step>``, data ``{"step", "values": {key: value}}``, one per step
  in step order;
* ``event: end`` once the run has finished and every point was sent; the stream then closes.

Exactly once across reconnects: a reconnecting EventSource sends ``Last-Event-ID`` (the last
step it got) and the stream resumes after it. While a run is live the newest step is held back
until a later step exists, because its values can arrive in more than one write (training
metrics, then the evaluation at the same step); once the run has finished nothing more can
arrive and every step is sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from service import store
from service.api.metrics import MAX_STEP, page_series
from service.api.runs import NOT_FOUND, PROBLEM, RunId
from service.schemas import RunOut
from service.store import FINISHED

router = APIRouter(prefix="/runs", tags=["metrics"])

POLL_INTERVAL_S = 0.5
KEEPALIVE_S = 15.0
BATCH_STEPS = 2000  # points per key loaded per poll: a long backlog streams in slices
RETRY_MS = 2000


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return "\n".join(lines) + "\n\n"


def _poll(factory: Any, run_id: str, after: int | None) -> tuple[RunOut | None, dict, bool]:
    """(run, {step: {key: value}} after ``after``, more points pending beyond this slice).

    The run is read before its points: if it had finished by then, every point was already
    written (workers store metrics before finishing), so the points read next are complete.
    """
    with factory() as session:
        try:
            run = RunOut.model_validate(store.get_run(session, run_id))
        except store.NotFound:
            return None, {}, False
        series = store.get_metrics(session, run_id, after_step=after, limit=BATCH_STEPS + 1)
    page, boundary = page_series(series, BATCH_STEPS)
    by_step: dict[int, dict[str, float | None]] = {}
    for key, points in page.items():
        for step, value in points:
            by_step.setdefault(step, {})[key] = value
    return run, dict(sorted(by_step.items())), boundary is not None


@router.get(
    "/{run_id}/events",
    summary="Follow a run live (Server-Sent Events)",
    description="`event: status` (a RunOut) on each status change, `event: metrics` "
    "(`{step, values}`, `id` = step) per step, and `event: end` after the run has finished "
    "and all points were sent. Reconnect with `Last-Event-ID` (browsers do it for you) or "
    "`?after=STEP` to resume after that step: each point is delivered once.",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
        **NOT_FOUND,
        400: {**PROBLEM, "description": "Last-Event-ID is not a step."},
    },
)
async def run_events(
    run_id: RunId,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
    after: Annotated[
        int | None,
        Query(ge=-1, le=MAX_STEP, description="Resume after this step (as Last-Event-ID)."),
    ] = None,
    timeout: Annotated[
        float | None,
        Query(gt=0, le=86400, description="Close the stream after this many seconds."),
    ] = None,
) -> StreamingResponse:
    factory = request.app.state.session_factory
    if last_event_id is not None and last_event_id.strip():
        try:
            after = int(last_event_id.strip())
            if not -1 <= after <= MAX_STEP:
                raise ValueError
        except ValueError as exc:
            raise HTTPException(400, "Last-Event-ID: expected the step of the last event") from exc
    if await run_in_threadpool(_load_run, factory, run_id) is None:
        raise HTTPException(404, f"run {run_id} not found")
    return StreamingResponse(
        _stream(request, factory, run_id, after, timeout),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _load_run(factory: Any, run_id: str) -> RunOut | None:
    with factory() as session:
        try:
            return RunOut.model_validate(store.get_run(session, run_id))
        except store.NotFound:
            return None


async def _stream(
    request: Request, factory: Any, run_id: str, after: int | None, timeout: float | None
) -> AsyncIterator[str]:
    deadline = time.monotonic() + timeout if timeout is not None else None
    last_sent = time.monotonic()
    last_status: tuple | None = None
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        try:
            run, steps, more = await run_in_threadpool(_poll, factory, run_id, after)
        except DBAPIError:
            # The response has started: no 503 now. Keep the stream and retry; a comment
            # line is invisible to EventSource but tells a human reader what is going on.
            yield ": database unavailable; retrying\n\n"
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(POLL_INTERVAL_S * 4)
            continue
        if run is None:  # deleted while we watched
            yield _sse("end", {"run_id": run_id, "status": "deleted", "last_step": after})
            return
        status_key = (run.status, run.status_reason, run.cancel_requested, run.attempt)
        if status_key != last_status:
            last_status = status_key
            yield _sse("status", run.model_dump(mode="json"))
            last_sent = time.monotonic()
        finished = run.status in FINISHED
        ordered = list(steps)
        if not finished and not more and ordered:
            ordered = ordered[:-1]  # the newest step may still be incomplete
        for step in ordered:
            yield _sse("metrics", {"step": step, "values": steps[step]}, event_id=step)
            after = step
            last_sent = time.monotonic()
        if more:
            continue  # a backlog: next slice at once
        if finished:
            yield _sse("end", {"run_id": run_id, "status": run.status, "last_step": after})
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_INTERVAL_S)
