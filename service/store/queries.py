"""Reads of runs: one run, several, a filtered page, and the counts the API and the
maintenance loop ask for. Nothing here writes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Run
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
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[Run], str | None]:
    """Newest first, paginated by (created_at, id). Returns (runs, next cursor or None)."""
    query = select(Run)
    if status is not None:
        query = query.where(Run.status == status.value)
    if sweep_id is not None:
        query = query.where(Run.sweep_id == sweep_id)
    if name is not None:
        query = query.where(Run.name == name)
    return newest_first_page(session, query, Run, limit=limit, cursor=cursor)


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
