"""/api/v1/sweeps: fan a base spec out over a grid, one run per combination; list sweeps."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import ValidationError

from bncore.spec import JobSpec
from service import store
from service.api.common import PROBLEM, SweepId
from service.api.deps import ExecutorDep, SessionDep
from service.executor import submit_run
from service.models import Run, Sweep
from service.problems import ApiError, clean_errors, one_line
from service.schemas import (
    MAX_SWEEP_RUNS,
    SWEEP_EXAMPLE,
    RunOut,
    SweepIn,
    SweepOut,
    SweepPage,
    SweepSummary,
)
from service.vocab import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

log = logging.getLogger("bnlab.api")

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


def sweep_out(sweep: Sweep, runs: list[Run]) -> SweepOut:
    return SweepOut(
        id=sweep.id,
        name=sweep.name,
        base_spec=sweep.base_spec,
        grid=sweep.grid,
        created_at=sweep.created_at,
        runs=[RunOut.model_validate(run) for run in runs],
        counts=dict(Counter(run.status for run in runs)),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepOut,
    summary="Create a sweep",
    description="Expands `grid` (dotted spec path → values) over `base`: one run per "
    f"combination, at most {MAX_SWEEP_RUNS}. Every expanded spec is validated before "
    "anything is stored; a 422 names the failing combination, the field and the bound.",
    responses={
        413: {**PROBLEM, "description": "Body over the size limit."},
        422: {**PROBLEM, "description": "Invalid grid or an invalid combination."},
    },
)
def create_sweep(
    body: Annotated[SweepIn, Body(openapi_examples={"bn-vs-none": {"value": SWEEP_EXAMPLE}})],
    session: SessionDep,
    executor: ExecutorDep,
) -> Any:
    base = body.base.model_dump(mode="json")
    if "name" not in body.base.model_fields_set:
        base["name"] = body.name  # runs are named "<sweep>[norm=…,lr=…]"
    specs = []
    for index, raw in enumerate(store.expand_grid(base, body.grid)):
        try:
            specs.append(JobSpec.model_validate(raw))
        except ValidationError as exc:
            combo = _combination(body.grid, raw)
            errors = clean_errors(exc.errors(), prefix=["body", "grid", index])
            detail = f"combination {index} ({combo}): " + one_line(clean_errors(exc.errors()))
            raise ApiError(422, detail, title="Validation failed", errors=errors) from exc
    sweep, runs = store.create_sweep(session, body.name, base, body.grid, specs, tags=body.tags)
    log.info(
        "sweep %s created (%s, %d runs over %s)",
        sweep.id,
        body.name,
        len(runs),
        ", ".join(body.grid),
    )
    for run in runs:
        submit_run(session, executor, run.id)
    return sweep_out(sweep, store.sweep_runs(session, sweep.id))


def _combination(grid: dict[str, list[Any]], spec: dict[str, Any]) -> str:
    """ "optimizer.lr=200, seed=0": the grid values of one expanded spec."""
    parts = []
    for path in grid:
        node: Any = spec
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        parts.append(f"{path}={node}")
    return ", ".join(parts)


@router.get(
    "",
    response_model=SweepPage,
    summary="List sweeps",
    description="Newest first, each with its run count and runs per status (not the runs: "
    "`GET /sweeps/{id}` or `GET /runs?sweep_id=` have them). Follow `next_cursor` (pass it as "
    "`cursor`) for the next page; it is null on the last page.",
    responses={400: {**PROBLEM, "description": "Invalid cursor."}},
)
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None, Query(max_length=500, description="The next_cursor of the previous page.")
    ] = None,
) -> Any:
    try:
        page, next_cursor = store.list_sweeps(session, limit=limit, cursor=cursor)
    except ValueError as exc:
        detail = f"cursor: {exc}; pass the next_cursor of a previous page"
        raise HTTPException(400, detail) from exc
    items = [
        SweepSummary(
            id=sweep.id,
            name=sweep.name,
            grid=sweep.grid,
            created_at=sweep.created_at,
            run_count=sum(counts.values()),
            counts=counts,
        )
        for sweep, counts in page
    ]
    return SweepPage(items=items, next_cursor=next_cursor)


@router.get(
    "/{sweep_id}",
    response_model=SweepOut,
    summary="Get a sweep and its runs",
    responses={404: {**PROBLEM, "description": "No sweep with this id."}},
)
def get_sweep(sweep_id: SweepId, session: SessionDep) -> Any:
    sweep = store.get_sweep(session, sweep_id)
    return sweep_out(sweep, store.sweep_runs(session, sweep_id))
