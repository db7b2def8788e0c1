"""Accountability: who did what. The audit trail (every cancel and delete, with the name of
the API key that asked) and per-key counts of active runs, for quotas.

Used as ``from service.store import audit`` (a module of the store package).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import AuditEvent, Run
from service.vocab import ACTIVE_STATUSES


def record(
    session: Session, action: str, run_id: str, key_name: str | None, detail: str | None = None
) -> AuditEvent:
    """Append one event and commit it (an action is on record once it has happened)."""
    event = AuditEvent(action=action, run_id=run_id, key_name=key_name, detail=detail)
    session.add(event)
    session.commit()
    return event


def list_events(
    session: Session,
    *,
    limit: int,
    before: int | None = None,
    key_name: str | None = None,
    run_id: str | None = None,
) -> Sequence[AuditEvent]:
    """Newest first; ``before`` (an event id) pages back."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    if key_name is not None:
        query = query.where(AuditEvent.key_name == key_name)
    if run_id is not None:
        query = query.where(AuditEvent.run_id == run_id)
    return session.scalars(query).all()


def active_runs(session: Session, key_name: str | None) -> int:
    """Queued and running runs submitted by this key (None: by no key, an open server)."""
    owner = Run.created_by.is_(None) if key_name is None else Run.created_by == key_name
    query = (
        select(func.count())
        .select_from(Run)
        .where(owner, Run.status.in_([status.value for status in ACTIVE_STATUSES]))
    )
    return session.scalar(query) or 0
