"""Live progress as Server-Sent Events: one run (/api/v1/runs/{id}/events) or a whole sweep
(/api/v1/sweeps/{id}/events).

The streams poll the database (the workers write there; there is no broker round trip to
wait on). Events:

* ``event: status`` (no id) with a RunOut, whenever a run's status, reason or cancel flag
  changes (and once per run when the stream opens);
* ``event: metrics``, data ``{"step", "values": {key: value}}`` (plus ``"run_id"`` on a sweep's
  stream), one per run and step, each run's steps in step order;
* ``event: deleted`` (a sweep's stream; data ``{"run_id"}``) when one of its runs is deleted;
* ``event: end`` once every run has finished and every point was sent; the stream then closes.

Exactly once across reconnects: a reconnecting EventSource sends ``Last-Event-ID`` (the id of
the last event it got) and the stream resumes after it. On a run's stream the id is the step;
on a sweep's it is a cursor holding the last step sent for every run of the sweep (its
format: :mod:`service.api.sweep_cursor`). While a run is live its newest step is held back
until a later step exists, because its values can arrive in more than one write (training
metrics, then the evaluation at the same step); once the run has finished nothing more can
arrive and every step is sent.

Past 400 lines on purpose: the run and the sweep stream share one polling loop and one
hold-back rule, which would otherwise be split across files that must change together. The
cursor maths, which changes on its own, lives in :mod:`service.api.sweep_cursor`.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Annotated, Any, Literal, Protocol

from anyio import to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service import store
from service.api.common import MAX_STEP, NOT_FOUND, PROBLEM, RunId, SweepId
from service.api.paging import page_series
from service.api.streams import SharedReads, StreamState, client_address, for_app
from service.api.sweep_cursor import (
    MAX_CURSOR_CHARS,
    CursorMismatch,
    decode_sweep_cursor,
    encode_sweep_cursor,
    step_cursors,
)
from service.models import Run
from service.schemas import RunOut
from service.store import FINISHED

router = APIRouter(prefix="/runs", tags=["metrics"])
sweep_router = APIRouter(prefix="/sweeps", tags=["sweeps"])

POLL_INTERVAL_S = 0.5
KEEPALIVE_S = 15.0
BATCH_STEPS = 2000  # steps loaded per poll: a long backlog streams in slices
RETRY_MS = 2000

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_CONTENT = {200: {"content": {"text/event-stream": {}}, "description": "The event stream."}}
TIMEOUT_DOC = "Close the stream after this many seconds."

State = Literal["more", "wait", "done"]  # after a poll: poll again at once, later, or stop


class Feed(Protocol):
    """What a stream polls: ``poll()`` reads the database (in a worker thread) and returns the
    SSE chunks to send and what to do next. It must not change its own state unless every
    read succeeded, so a database error (retried) loses and repeats nothing."""

    def poll(self) -> tuple[list[str], State]: ...


def _sse(event: str, data: Any, event_id: int | str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return "\n".join(lines) + "\n\n"


def _status_key(run: Any) -> tuple:
    """What makes a new ``status`` event (RunOut or a row with the same fields)."""
    return (run.status, run.status_reason, run.cancel_requested, run.attempt)


def _read_steps(
    session: Session, run_id: str, after: int | None, limit: int = BATCH_STEPS
) -> tuple[dict[int, dict[str, float | None]], bool]:
    """({step: {key: value}} after ``after`` in step order, more points beyond this slice).

    Read the run *before* its points: if it had finished by then, every point was already
    written (workers store metrics before finishing), so the points read are complete."""
    series = store.get_metrics(session, run_id, after_step=after, limit=limit + 1)
    page, boundary = page_series(series, limit)
    by_step: dict[int, dict[str, float | None]] = {}
    for key, points in page.items():
        for step, value in points:
            by_step.setdefault(step, {})[key] = value
    return dict(sorted(by_step.items())), boundary is not None


def _sendable(steps: Mapping[int, Any], finished: bool, more: bool) -> list[int]:
    """The steps that may go out now: all of them, except a live run's newest step (it may
    still get values) when it is the newest one stored."""
    ordered = list(steps)
    if not finished and not more and ordered:
        ordered.pop()
    return ordered


def _shared(reads: SharedReads | None, key: tuple, read: Any, not_before: float) -> Any:
    """``read()`` through the app's shared reads (one read per poll interval for all streams
    asking the same), stamped with when it was made: the reads that must come after it (a
    run's points after its status) carry the stamp in their own key."""
    stamped = lambda: (time.monotonic(), read())  # noqa: E731
    return stamped() if reads is None else reads.get(key, stamped, not_before)


async def _pump(
    request: Request, feed: Feed, timeout: float | None, release: Any = None
) -> AsyncIterator[str]:
    """The polling loop shared by the streams: retry hint, database outages, keep-alives,
    ``?timeout=`` and client disconnects. ``release`` gives the stream's slot back."""
    try:
        async for chunk in _poll_loop(request, feed, timeout):
            yield chunk
    finally:
        if release is not None:
            release()


async def _poll_loop(request: Request, feed: Feed, timeout: float | None) -> AsyncIterator[str]:
    # Polls run in worker threads of their own (StreamState.poll_threads), not in the pool
    # that serves every other route: many streams must not queue ahead of other requests.
    limiter = _streams(request).poll_threads
    deadline = time.monotonic() + timeout if timeout is not None else None
    last_sent = time.monotonic()
    yield f"retry: {RETRY_MS}\n\n"
    while True:
        try:
            chunks, state = await to_thread.run_sync(feed.poll, limiter=limiter)
        except DBAPIError:
            # The response has started: no 503 now. Keep the stream and retry; a comment
            # line is invisible to EventSource but tells a human reader what is going on.
            yield ": database unavailable; retrying\n\n"
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(POLL_INTERVAL_S * 4)
            continue
        for chunk in chunks:
            yield chunk
        if chunks:
            last_sent = time.monotonic()
        if state == "done":
            return
        if state == "more":
            continue  # a backlog: next slice at once
        if deadline is not None and time.monotonic() >= deadline:
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_INTERVAL_S)


def _streams(request: Request) -> StreamState:
    return for_app(request, POLL_INTERVAL_S)


def _event_response(request: Request, feed: Feed, timeout: float | None) -> StreamingResponse:
    """The stream, in one of the app's stream slots (503 + Retry-After when none is free)."""
    slots, client = _streams(request).slots, client_address(request)
    slots.take(client)
    released = False

    def release() -> None:  # once, whichever comes first
        nonlocal released
        if not released:
            released = True
            slots.give_back(client)

    body = _pump(request, feed, timeout, release)
    weakref.finalize(body, release)  # a stream never started still gives its slot back
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


def _resume_from(last_event_id: str | None, after: Any) -> Any:
    """Last-Event-ID (a reconnecting EventSource) wins over ``?after=``; blank means unset."""
    if last_event_id is not None and last_event_id.strip():
        return last_event_id.strip()
    return after


# ----------------------------------------------------------------------------- one run


class RunFeed:
    def __init__(
        self, factory: Any, run_id: str, after: int | None, reads: SharedReads | None = None
    ) -> None:
        self.factory, self.run_id, self.after = factory, run_id, after
        self.reads = reads
        self.opened = time.monotonic()  # shared reads older than the stream are not used
        self.last_status: tuple | None = None

    def poll(self) -> tuple[list[str], State]:
        with self.factory() as session:

            def read_run() -> RunOut | None:
                try:
                    return RunOut.model_validate(store.get_run(session, self.run_id))
                except store.NotFound:
                    return None

            stamp, run = _shared(self.reads, ("run", self.run_id), read_run, self.opened)
            if run is not None:
                key = ("steps", self.run_id, self.after, BATCH_STEPS, stamp)
                _, (steps, more) = _shared(
                    self.reads, key, lambda: _read_steps(session, self.run_id, self.after), stamp
                )
        if run is None:  # deleted while we watched
            end = {"run_id": self.run_id, "status": "deleted", "last_step": self.after}
            return [_sse("end", end)], "done"
        chunks = []
        if _status_key(run) != self.last_status:
            self.last_status = _status_key(run)
            chunks.append(_sse("status", run.model_dump(mode="json")))
        finished = run.status in FINISHED
        for step in _sendable(steps, finished, more):
            chunks.append(_sse("metrics", {"step": step, "values": steps[step]}, event_id=step))
            self.after = step
        if more:
            return chunks, "more"
        if finished:
            end = {"run_id": self.run_id, "status": run.status, "last_step": self.after}
            chunks.append(_sse("end", end))
            return chunks, "done"
        return chunks, "wait"


@router.get(
    "/{run_id}/events",
    summary="Follow a run live (Server-Sent Events)",
    description="`event: status` (a RunOut) on each status change, `event: metrics` "
    "(`{step, values}`, `id` = step) per step, and `event: end` after the run has finished "
    "and all points were sent. Reconnect with `Last-Event-ID` (browsers do it for you) or "
    "`?after=STEP` to resume after that step: each point is delivered once.",
    response_class=StreamingResponse,
    responses={
        **SSE_CONTENT,
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
    timeout: Annotated[float | None, Query(gt=0, le=86400, description=TIMEOUT_DOC)] = None,
) -> StreamingResponse:
    factory = request.app.state.session_factory
    resume = _resume_from(last_event_id, after)
    if isinstance(resume, str):
        try:
            resume = int(resume)
            if not -1 <= resume <= MAX_STEP:
                raise ValueError
        except ValueError as exc:
            raise HTTPException(400, "Last-Event-ID: expected the step of the last event") from exc
    if not await run_in_threadpool(_run_exists, factory, run_id):
        raise HTTPException(404, f"run {run_id} not found")
    feed = RunFeed(factory, run_id, resume, _streams(request).reads)
    return _event_response(request, feed, timeout)


def _run_exists(factory: Any, run_id: str) -> bool:
    with factory() as session:
        return session.get(Run, run_id) is not None


# ----------------------------------------------------------------------------- a sweep

_ROW = (Run.id, Run.status, Run.status_reason, Run.cancel_requested, Run.attempt, Run.last_step)


def _sweep_rows(session: Session, sweep_id: str) -> list[Any]:
    """The sweep's runs in their stable order, only the columns a poll needs."""
    query = select(*_ROW).where(Run.sweep_id == sweep_id).order_by(Run.created_at, Run.id)
    return list(session.execute(query).all())


class SweepFeed:
    def __init__(
        self,
        factory: Any,
        sweep_id: str,
        run_ids: list[str],
        sent: dict,
        reads: SharedReads | None = None,
        opened: float | None = None,
    ) -> None:
        self.factory, self.sweep_id = factory, sweep_id
        self.reads = reads
        # Shared reads older than the stream are not used; the stream opened when its request
        # came (``opened``), so its first poll may use the rows its run ids were read from.
        self.opened = time.monotonic() if opened is None else opened
        self.run_ids = run_ids  # the order the cursor follows
        self.sent = sent  # run id → last step sent (-1: none)
        self.last_status: dict[str, tuple] = {}

    def poll(self) -> tuple[list[str], State]:
        # Read everything first (runs before their points), change state only afterwards.
        budget, more = BATCH_STEPS, False
        pending: dict[str, tuple[dict, bool]] = {}
        with self.factory() as session:
            stamp, rows = _shared(
                self.reads,
                ("rows", self.sweep_id),
                lambda: _sweep_rows(session, self.sweep_id),
                self.opened,
            )
            changed = [r.id for r in rows if _status_key(r) != self.last_status.get(r.id)]
            full = {}
            if changed:

                def read_full() -> dict[str, tuple[tuple, str]]:
                    """Each changed run's status key and its ``status`` event, serialized
                    once for every stream that shares this read."""
                    query = select(Run).where(Run.id.in_(changed))
                    outs = (RunOut.model_validate(r) for r in session.scalars(query))
                    return {
                        out.id: (_status_key(out), _sse("status", out.model_dump(mode="json")))
                        for out in outs
                    }

                _, full = _shared(self.reads, ("full", tuple(changed), stamp), read_full, stamp)
            for row in rows:
                after = self.sent.get(row.id, -1)
                if row.last_step is None or row.last_step <= after:
                    continue
                if budget <= 0:
                    more = True  # the rest next slice
                    break
                limit = min(budget, BATCH_STEPS)
                _, (steps, run_more) = _shared(
                    self.reads,
                    ("steps", row.id, after, limit, stamp),
                    lambda: _read_steps(session, row.id, after, limit),  # noqa: B023 (called now)
                    stamp,
                )
                pending[row.id] = steps, run_more
                budget -= len(steps)
                more = more or run_more
        chunks = []
        current = [row.id for row in rows]
        if current != self.run_ids:  # a run was deleted (finished runs may be)
            kept = set(current)
            gone = [run_id for run_id in self.run_ids if run_id not in kept]
            self.run_ids = current
            self.sent = {run_id: self.sent.get(run_id, -1) for run_id in current}
            for run_id in gone:
                self.last_status.pop(run_id, None)
                cursor = encode_sweep_cursor(self.run_ids, self.sent)
                chunks.append(_sse("deleted", {"run_id": run_id}, event_id=cursor))
        for run_id in changed:
            if run_id in full:
                self.last_status[run_id], status_event = full[run_id]
                chunks.append(status_event)
        statuses = {row.id: row.status for row in rows}
        for index, run_id in enumerate(self.run_ids):
            if run_id not in pending:
                continue
            steps, run_more = pending[run_id]
            # Only this run's entry changes while its steps go out: encode the rest once.
            cursor_at = step_cursors(self.run_ids, self.sent, index)
            for step in _sendable(steps, statuses[run_id] in FINISHED, run_more):
                data = {"run_id": run_id, "step": step, "values": steps[step]}
                chunks.append(_sse("metrics", data, event_id=cursor_at(step)))
                self.sent[run_id] = step
        if more:
            return chunks, "more"
        # Every run finished before its points were read, and no slice is left: all sent.
        if all(row.status in FINISHED for row in rows):
            end = {
                "sweep_id": self.sweep_id,
                "counts": dict(Counter(row.status for row in rows)),
                "last_steps": {run_id: self.sent[run_id] for run_id in self.run_ids},
            }
            chunks.append(_sse("end", end))
            return chunks, "done"
        return chunks, "wait"


@sweep_router.get(
    "/{sweep_id}/events",
    summary="Follow a sweep live (Server-Sent Events)",
    description="Every run of the sweep in one stream: `event: status` (a RunOut) once per "
    "run on connect and on each status change, `event: metrics` (`{run_id, step, values}`) "
    "per run and step, `event: deleted` (`{run_id}`) if a run is deleted meanwhile, and "
    "`event: end` (`{sweep_id, counts, last_steps}`) once every run has finished and all "
    "points were sent. The `id` of a metrics (or deleted) event is a cursor of the last "
    "step sent for each run (in the sweep's stable run order): reconnect with "
    "`Last-Event-ID` (browsers do it for you) or `?after=ID` to resume after it, and each "
    "point is delivered exactly once.",
    response_class=StreamingResponse,
    responses={
        **SSE_CONTENT,
        404: {**PROBLEM, "description": "No sweep with this id."},
        400: {**PROBLEM, "description": "Last-Event-ID is not an event id of a sweep."},
        409: {
            **PROBLEM,
            "description": "Last-Event-ID belongs to another sweep, or a run of this one was "
            "deleted since: reconnect without it.",
        },
    },
)
async def sweep_events(
    sweep_id: SweepId,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_CHARS,
            description="Resume after this event id (as Last-Event-ID).",
        ),
    ] = None,
    timeout: Annotated[float | None, Query(gt=0, le=86400, description=TIMEOUT_DOC)] = None,
) -> StreamingResponse:
    factory, reads = request.app.state.session_factory, _streams(request).reads
    opened = time.monotonic()  # no read this stream uses is older
    run_ids = await run_in_threadpool(_sweep_run_ids, factory, sweep_id, reads, opened)
    if run_ids is None:
        raise HTTPException(404, f"sweep {sweep_id} not found")
    resume = _resume_from(last_event_id, after)
    sent = {run_id: -1 for run_id in run_ids}
    if resume is not None:
        try:
            sent = decode_sweep_cursor(resume, run_ids)
        except CursorMismatch as exc:
            raise HTTPException(
                409,
                "Last-Event-ID: an event id of another sweep, or a run of this sweep was "
                "deleted since; reconnect without it",
            ) from exc
        except ValueError as exc:
            raise HTTPException(
                400, "Last-Event-ID: expected the id of an event of this sweep's stream"
            ) from exc
    feed = SweepFeed(factory, sweep_id, run_ids, sent, reads, opened)
    return _event_response(request, feed, timeout)


def _sweep_run_ids(
    factory: Any, sweep_id: str, reads: SharedReads | None = None, opened: float | None = None
) -> list[str] | None:
    """The sweep's run ids in their stable order (None: no such sweep), from the rows its
    polls read, through the same shared read (``("rows", sweep_id)``, made no earlier than
    ``opened``, by default now): streams opening together read them once, and each one's
    first poll may use that read too. A stream opened after a run was added or deleted never
    gets the list from before: only a read that started after it opened is shared with it,
    as with its polls.

    A run row names an existing sweep (a foreign key, set to null if the sweep goes), so the
    sweep itself is read only when it has no runs: unknown, or all its runs deleted."""
    opened = time.monotonic() if opened is None else opened
    with factory() as session:
        _, rows = _shared(reads, ("rows", sweep_id), lambda: _sweep_rows(session, sweep_id), opened)
        if not rows:
            try:
                store.get_sweep(session, sweep_id)
            except store.NotFound:
                return None
        return [row.id for row in rows]
