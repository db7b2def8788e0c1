"""/api/v1/runs: submit, list (filtered), get, tag/annotate, cancel and delete training runs."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.api.common import NOT_FOUND, PROBLEM, RunId
from service.api.deps import (
    CallerDep,
    ExecutorDep,
    SessionDep,
    SettingsDep,
    caller_name,
    ensure_may_change,
    in_session,
    json_body,
    json_response,
)
from service.artifacts import remove_run_artifacts
from service.executor import submit_run
from service.quotas import RATE_LIMIT_DOC, RETRY_AFTER, RUN_QUOTA_DOC, enforce_run_quotas
from service.schemas import RunOut, RunPage, RunPatch, RunQuery, Tag
from service.store import audit
from service.vocab import FINISHED_STATUSES, MAX_TAGS, RunStatus

log = logging.getLogger("bnlab.api")

router = APIRouter(prefix="/runs", tags=["runs"])

RATE_LIMITED = {429: {**PROBLEM, "description": RATE_LIMIT_DOC, "headers": RETRY_AFTER}}


def describe(spec: dict[str, Any]) -> str:
    """ "norm=batchnorm, lr=0.5": what a log reader wants to know about a new run."""
    model, optimizer = spec.get("model") or {}, spec.get("optimizer") or {}
    return f"norm={model.get('norm')}, lr={optimizer.get('lr')}"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RunOut,
    summary="Submit a training run",
    description="Validates the spec (bounds are enforced: a 422 names the field and the "
    "limit), stores the run as `queued` and hands it to the executor. With an "
    "`Idempotency-Key` header a retry returns the run created the first time (200) instead "
    "of creating a second one. " + RUN_QUOTA_DOC,
    responses={
        200: {"model": RunOut, "description": "Idempotent retry: the existing run."},
        409: {**PROBLEM, "description": "Idempotency-Key reused with a different spec."},
        413: {**PROBLEM, "description": "Body over the size limit."},
        422: {**PROBLEM, "description": "Invalid spec: names the field and the bound."},
        429: {
            **PROBLEM,
            "headers": RETRY_AFTER,
            "description": "Over a quota of the API key: queued + running runs "
            "(quota_active_runs) or POSTs a minute (quota_posts_per_minute). `Retry-After` "
            "says when to try again.",
        },
    },
)
def create_run(
    spec: JobSpec,
    response: Response,
    session: SessionDep,
    executor: ExecutorDep,
    caller: CallerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            description="Any unique string; a retry with the same key returns the same run.",
        ),
    ] = None,
    tags: Annotated[
        list[Tag],
        Query(
            alias="tag",
            max_length=MAX_TAGS,
            description="Repeatable: the run's tags (the body is the spec alone).",
        ),
    ] = [],  # noqa: B006 (FastAPI copies defaults per request)
) -> Any:
    enforce_run_quotas(session, settings, caller, 1, sweep=False)
    run, created = store.create_run(
        session, spec, idempotency_key=idempotency_key, tags=tags, created_by=caller_name(caller)
    )
    response.headers["Location"] = f"/api/v1/runs/{run.id}"
    if not created:
        if run.spec != spec.model_dump(mode="json"):
            raise HTTPException(
                409, f"Idempotency-Key already used for run {run.id} with a different spec"
            )
        response.status_code = status.HTTP_200_OK
        return run
    log.info("run %s created (%s)", run.id, describe(run.spec))
    submit_run(session, executor, run.id)
    return store.get_run(session, run.id)


@router.get(
    "",
    response_model=RunPage,
    summary="List runs",
    description="Newest first. Follow `next_cursor` (pass it as `cursor`) for the next page; "
    "it is null on the last page. Every filter given must hold: spec fields (`dataset`, "
    "`arch`, `activation`, `norm`, `optimizer`, `lr`, `batch_size`, `seed`) compare with the "
    "run's spec, `tag` repeats (all must be on the run), `id_prefix` matches short ids, `q` "
    "searches name and note. An unknown parameter is a 422.",
    responses={400: {**PROBLEM, "description": "Invalid cursor."}},
)
async def list_runs(request: Request, query: Annotated[RunQuery, Query()]) -> Any:
    spec = {field: getattr(query, field) for field in store.SPEC_FILTERS}

    def work(session: Session) -> bytes:
        try:
            runs, next_cursor = store.list_runs(
                session,
                status=query.status,
                sweep_id=query.sweep_id,
                name=query.name,
                spec={field: value for field, value in spec.items() if value is not None},
                tags=query.tag,
                id_prefix=query.id_prefix,
                q=query.q,
                limit=query.limit,
                cursor=query.cursor,
            )
        except ValueError as exc:
            detail = f"cursor: {exc}; pass the next_cursor of a previous page"
            raise HTTPException(400, detail) from exc
        # A dict, not RunPage(...): json_body validates the runs once, not twice.
        return json_body(RunPage, {"items": runs, "next_cursor": next_cursor})

    return json_response(await in_session(request, work))


@router.get("/{run_id}", response_model=RunOut, summary="Get a run", responses=NOT_FOUND)
async def get_run(run_id: RunId, request: Request) -> Any:
    def work(session: Session) -> bytes:
        return json_body(RunOut, store.get_run(session, run_id))

    return json_response(await in_session(request, work))


@router.patch(
    "/{run_id}",
    response_model=RunOut,
    summary="Tag or annotate a run",
    description="Replaces the tags and/or the note of a run of any status; a field left out "
    'stays as it is. `tags: []` (or null) removes every tag; `note: ""` (or null) removes '
    "the note.",
    responses={**NOT_FOUND, 422: {**PROBLEM, "description": "A tag or the note out of bounds."}},
)
def annotate_run(run_id: RunId, body: RunPatch, session: SessionDep) -> Any:
    given = body.model_fields_set
    tags = (body.tags or []) if "tags" in given else None
    note = (body.note or "") if "note" in given else None
    run = store.annotate_run(session, run_id, tags=tags, note=note)
    log.info("run %s annotated (%s)", run_id, ", ".join(sorted(given)) or "nothing")
    return run


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RunOut,
    summary="Cancel a run",
    description="A queued run is cancelled at once; a running one is flagged "
    "(`cancel_requested`) and its worker stops the trainer. Cancelling a cancelled run is a "
    "no-op; any other finished run is a 409. A `submit` key may cancel the runs it "
    "submitted; anyone else's need an `admin` key. Every cancel is in the audit trail.",
    responses={
        **NOT_FOUND,
        403: {**PROBLEM, "description": "Another key's run, and this key is not admin."},
        409: {**PROBLEM, "description": "The run already finished."},
        **RATE_LIMITED,
    },
)
def cancel_run(run_id: RunId, session: SessionDep, caller: CallerDep) -> Any:
    run = store.get_run(session, run_id)
    ensure_may_change(caller, run.created_by, "cancelling")
    if run.status == RunStatus.cancelled:
        return run
    if run.status in FINISHED_STATUSES:
        raise HTTPException(409, f"run {run_id} already finished ({run.status})")
    status_before = run.status
    run = store.request_cancel(session, run_id)
    audit.record(session, "cancel", run_id, caller_name(caller), detail=f"was {status_before}")
    if run.status == RunStatus.cancelled:
        log.info("run %s cancelled", run_id)
    else:
        log.info("run %s cancel requested (%s)", run_id, run.status)
    return run


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a finished run",
    description="Deletes the run, its metrics and its files (checkpoints, final model). "
    "Queued or running runs: cancel them first. "
    "A `submit` key may delete the runs it submitted; anyone else's need an `admin` key. "
    "Every delete is in the audit trail.",
    responses={
        **NOT_FOUND,
        403: {**PROBLEM, "description": "Another key's run, and this key is not admin."},
        409: {**PROBLEM, "description": "The run has not finished."},
    },
)
def delete_run(
    run_id: RunId, session: SessionDep, caller: CallerDep, settings: SettingsDep
) -> Response:
    run = store.get_run(session, run_id)
    ensure_may_change(caller, run.created_by, "deleting")
    status_before = run.status
    store.delete_run(session, run_id)
    remove_run_artifacts(settings, run_id)
    audit.record(session, "delete", run_id, caller_name(caller), detail=f"was {status_before}")
    log.info("run %s deleted", run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
