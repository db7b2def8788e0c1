"""Reads of runs: one run, several, a filtered page, and the counts the API and the
maintenance loop ask for. Nothing here writes.

Filters on spec fields compare the run's ``spec_*`` columns, copies of those fields of its
validated spec (defaults included) written at creation (``service.models.SPEC_FILTERS``), each
indexed with (created_at, id) like status and name: a filtered page is an index range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, cast, exists, func, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from service.models import SPEC_FILTERS, Run
from service.store.cursors import newest_first_page
from service.store.errors import NotFound
from service.vocab import SUBMIT_FAILED, RunStatus


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def get_runs(session: Session, run_ids: Sequence[str]) -> list[Run]:
    """The runs in the order given; NotFound names the first missing id."""
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(run_ids)))}
    for run_id in run_ids:
        if run_id not in found:
            raise NotFound(f"run {run_id} not found")
    return [found[run_id] for run_id in run_ids]


def list_runs(
    session: Session,
    *,
    status: RunStatus | None = None,
    sweep_id: str | None = None,
    name: str | None = None,
    spec: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    id_prefix: str | None = None,
    q: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Run], str | None]:
    """Newest first, paginated by (created_at, id). Returns (runs, next cursor or None).

    Every filter given must hold: ``spec`` maps names of ``SPEC_FILTERS`` to the value the
    field must have; every one of ``tags`` must be on the run; ``id_prefix`` is the start of
    the id (a short id); ``q`` is a substring of the name or the note, in any case (``%`` and
    ``_`` are literal). Raises ValueError for a cursor that is not one of ours."""
    query = select(Run)
    if status is not None:
        query = query.where(Run.status == status.value)
    if sweep_id is not None:
        query = query.where(Run.sweep_id == sweep_id)
    if name is not None:
        query = query.where(Run.name == name)
    for field, value in (spec or {}).items():
        query = query.where(spec_value(field) == value)
    if tags:
        query = query.where(_has_tags(session, tags))
    if id_prefix is not None:
        query = query.where(Run.id.startswith(id_prefix.lower()))
    if q is not None:
        query = query.where(
            or_(Run.name.icontains(q, autoescape=True), Run.note.icontains(q, autoescape=True))
        )
    return newest_first_page(session, query, Run, limit=limit, cursor=cursor)


def spec_value(field: str) -> ColumnElement[Any]:
    """The column holding one of ``SPEC_FILTERS`` of each run."""
    if field not in SPEC_FILTERS:
        raise KeyError(f"no spec filter '{field}'; known: {', '.join(SPEC_FILTERS)}")
    _, column = SPEC_FILTERS[field]
    return column


def _has_tags(session: Session, tags: Sequence[str]) -> ColumnElement[bool]:
    """True for runs carrying every one of ``tags``. PostgreSQL: JSONB containment (``@>``);
    SQLite: one ``EXISTS`` over ``json_each`` per tag."""
    if session.get_bind().dialect.name == "postgresql":
        return cast(Run.tags, JSONB).contains(list(tags))
    conditions = []
    for tag in tags:
        element = func.json_each(Run.tags).table_valued("value")
        conditions.append(exists(select(1).select_from(element).where(element.c.value == tag)))
    return and_(*conditions)


def queue_depth(session: Session) -> int:
    return session.scalar(
        select(func.count()).select_from(Run).where(Run.status == RunStatus.queued.value)
    )


def queued_run_ids(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(Run.id).where(Run.status == RunStatus.queued.value).order_by(Run.created_at)
        )
    )


def submit_failed_run_ids(session: Session) -> list[str]:
    """Queued runs whose submission to the executor failed, oldest first."""
    return list(
        session.scalars(
            select(Run.id)
            .where(Run.status == RunStatus.queued.value, Run.status_reason == SUBMIT_FAILED)
            .order_by(Run.created_at)
        )
    )


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Run.status, func.count()).group_by(Run.status)).all()
    return {status: n for status, n in rows}
