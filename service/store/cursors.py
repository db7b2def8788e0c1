"""Cursor pagination, newest first, for any table with ``created_at`` and ``id`` (runs, sweeps).

A cursor is the (created_at, id) of the last row of a page, base64url-encoded: opaque to
clients, stable while rows are added (new rows sort before it), and cheap for the database:
the page is ``WHERE (created_at, id) < (…) ORDER BY created_at DESC, id DESC LIMIT …``, a row
value comparison that SQLite and PostgreSQL both use as the bound of a range of the
``(created_at, id)`` index, or of a ``(column, created_at, id)`` index when a filter fixes
``column`` (``service.models.newest_first_index``); so a page deep in the list costs what the
first one does.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = f"{created_at.replace(tzinfo=None).isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not a cursor this module made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id = raw.split("|", 1)
        return datetime.fromisoformat(created), row_id
    except Exception as exc:  # binascii, unicode, split and isoformat errors alike
        raise ValueError("invalid cursor") from exc


def newest_first_page(
    session: Session, query: Select, table: Any, *, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """One page of ``query`` (a select of ``table``'s rows), newest first, after ``cursor``.
    Returns (rows, the cursor of the next page or None on the last page). Raises ValueError
    for a cursor this module did not make."""
    query = query.order_by(table.created_at.desc(), table.id.desc())
    if cursor is not None:
        created, row_id = decode_cursor(cursor)
        query = query.where(tuple_(table.created_at, table.id) < (created, row_id))
    rows = list(session.scalars(query.limit(limit + 1)))
    if len(rows) > limit:
        last = rows[limit - 1]
        return rows[:limit], encode_cursor(last.created_at, last.id)
    return rows, None
