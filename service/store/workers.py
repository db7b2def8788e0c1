"""Worker rows: each Celery worker or embedded executor refreshes its own, so ``GET /workers``
can tell who is alive (independent of any run's heartbeat)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.models import Worker, utcnow


def worker_seen(
    session: Session, name: str, *, device: str, current_run_id: str | None = None
) -> None:
    """Insert or refresh a worker's row (its own heartbeat, independent of any run)."""
    now = utcnow()
    values = {"device": device, "current_run_id": current_run_id, "last_heartbeat": now}
    updated = session.execute(update(Worker).where(Worker.name == name).values(**values))
    if updated.rowcount == 0:
        session.add(Worker(name=name, started_at=now, **values))
    try:
        session.commit()
    except IntegrityError:  # two threads of one worker registering at once
        session.rollback()


def worker_alive(session: Session, name: str, *, device: str) -> None:
    """Refresh an (idle or busy) worker's heartbeat without touching ``current_run_id``, which
    belongs to the process executing its run; insert the row if it is missing."""
    now = utcnow()
    updated = session.execute(
        update(Worker).where(Worker.name == name).values(device=device, last_heartbeat=now)
    )
    if updated.rowcount == 0:
        session.add(Worker(name=name, device=device, started_at=now, last_heartbeat=now))
    try:
        session.commit()
    except IntegrityError:  # the run's own heartbeat inserted it meanwhile
        session.rollback()


def list_workers(session: Session) -> list[Worker]:
    return list(session.scalars(select(Worker).order_by(Worker.name)))


def prune_workers(session: Session, silent_for_s: float) -> int:
    """Delete the rows of workers silent for ``silent_for_s`` or longer (worker names are
    unique per process, so the rows of stopped ones would pile up); returns how many."""
    cutoff = utcnow() - timedelta(seconds=silent_for_s)
    removed = session.execute(delete(Worker).where(Worker.last_heartbeat <= cutoff)).rowcount
    session.commit()
    return removed
