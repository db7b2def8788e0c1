"""/api/v1/audit: the audit trail (who cancelled or deleted which run, when), for admins."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.common import PROBLEM
from service.api.deps import SessionDep, require_admin
from service.models import as_utc
from service.store import audit
from service.vocab import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[Depends(require_admin)])


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int = Field(description="Increasing: pass the last one seen as `before` for older ones.")
    at: datetime
    key_name: str | None = Field(description="The API key's name; null on an open server.")
    action: str = Field(description="cancel or delete")
    run_id: str
    detail: str | None = Field(None, description="The run's status before the action.")

    @field_validator("at", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime | None:
        return as_utc(value)  # SQLite hands back naive datetimes


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_before: int | None = Field(description="Pass as `before` for the next page; null: done.")


@router.get(
    "",
    response_model=AuditPage,
    summary="The audit trail (admin)",
    description="Every cancel and delete, newest first, with the name of the API key that "
    "asked. Needs a key with the `admin` scope (on a server with keys).",
    responses={
        401: {**PROBLEM, "description": "No API key."},
        403: {**PROBLEM, "description": "The key is not valid or lacks the admin scope."},
    },
)
def list_audit(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    before: Annotated[int | None, Query(ge=1, description="Events older than this id.")] = None,
    key_name: Annotated[str | None, Query(max_length=64, description="Only this key's.")] = None,
    run_id: Annotated[str | None, Query(max_length=64, description="Only this run's.")] = None,
) -> AuditPage:
    events = audit.list_events(
        session, limit=limit, before=before, key_name=key_name, run_id=run_id
    )
    items = [AuditEventOut.model_validate(event) for event in events]
    next_before = items[-1].id if len(items) == limit else None
    return AuditPage(items=items, next_before=next_before)
