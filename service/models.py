"""ORM tables: runs, sweeps, metric points, workers, the audit trail. Schemas for the API
live in schemas.py.

Ids are UUID strings; times are timezone-aware UTC. Metric points are stored as series
(one row per run and key, with an integer id) cut into chunks of consecutive points packed as
arrays (``service.store.series`` says why and how); a step is stored at most once per series,
so writing the same batch twice changes nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Sweep(Base):
    """A set of runs fanned out from one base spec and a grid, compared as one."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_created_id", "created_at", "id"),)  # newest-first pages

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    base_spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    grid: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def newest_first_index(column: Any) -> Index:
    """An index on ``column`` then (created_at, id) of its table: the rows having one value of
    ``column`` in the order of the newest-first keyset pages (``service.store.cursors``), so a
    page filtered on it is a range of the index read backwards until the page is full, not a
    scan of the table and a sort."""
    table = column.table
    name = f"ix_{table.name}_{column.name}_created_id"
    return Index(name, column, table.c.created_at, table.c.id)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_created_id", "created_at", "id"),)  # unfiltered pages

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))  # indexed below
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # indexed below
    status_reason: Mapped[str | None] = mapped_column(Text)
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), index=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # People's labels, set at creation or later (PATCH); bounds in service.schemas.
    tags: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    note: Mapped[str | None] = mapped_column(Text)
    # The name of the API key that submitted the run (service.auth); null on an open server.
    created_by: Mapped[str | None] = mapped_column(String(64), index=True)
    # Copies of the spec fields runs are filtered on (SPEC_FILTERS), written once at creation
    # from the validated spec (defaults included): filters compare these plain, indexed columns
    # instead of extracting JSON from every run's spec. Null where an old spec lacks the field.
    spec_dataset: Mapped[str | None] = mapped_column(String(64))
    spec_arch: Mapped[str | None] = mapped_column(String(64))
    spec_activation: Mapped[str | None] = mapped_column(String(64))
    spec_norm: Mapped[str | None] = mapped_column(String(64))
    spec_optimizer: Mapped[str | None] = mapped_column(String(64))
    spec_lr: Mapped[float | None] = mapped_column(Float)
    spec_batch_size: Mapped[int | None] = mapped_column(Integer)
    spec_seed: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    worker: Mapped[str | None] = mapped_column(String(200))
    # The current attempt's fencing token (store.claim_run): every write a worker makes carries
    # it, and a write with any other token changes nothing (issue 12, F1).
    claim_token: Mapped[str | None] = mapped_column(String(64))
    # The step the current attempt resumed from (its checkpoint), None when it started at 0.
    resumed_step: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    # Outcome, filled as the trainer reports it.
    last_step: Mapped[int | None] = mapped_column(Integer)
    diverged_step: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    torch_version: Mapped[str | None] = mapped_column(String(32))
    wall_time: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


# The spec fields runs can be filtered on: filter name (the API's query parameter) → (path in
# the spec, the column of ``runs`` holding its value). The one owner of this mapping.
SPEC_FILTERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "dataset": (("dataset",), Run.spec_dataset),
    "arch": (("model", "arch"), Run.spec_arch),
    "activation": (("model", "activation"), Run.spec_activation),
    "norm": (("model", "norm"), Run.spec_norm),
    "optimizer": (("optimizer", "name"), Run.spec_optimizer),
    "lr": (("optimizer", "lr"), Run.spec_lr),
    "batch_size": (("batch_size",), Run.spec_batch_size),
    "seed": (("seed",), Run.spec_seed),
}

# Newest-first pages filtered on status, on name or on one spec field are index ranges; a page
# filtered on several of these reads the range of one (the planner picks it) and checks the
# others on the rows it meets.
for _column in (Run.status, Run.name, *(column for _, column in SPEC_FILTERS.values())):
    newest_first_index(_column)  # attaches itself to the table


def spec_filter_values(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``spec_*`` column values of a run whose spec (as stored, JSON-ready) is ``spec``:
    what the filters compare. None where the spec lacks the field."""
    values: dict[str, Any] = {}
    for path, column in SPEC_FILTERS.values():
        value: Any = spec
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        values[column.key] = value
    return values


class MetricSeries(Base):
    """One metric key of one run; its points live in ``metric_chunks`` under ``id`` (an
    integer, so chunks do not repeat the 36-character run id and the key)."""

    __tablename__ = "metric_series"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_metric_series_run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    # Bumped whenever points are removed: with the counts (which every write that stores a
    # point raises), it tells a reader (ETag, cache key) whether the points changed, also when
    # points were removed and written again.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class MetricChunk(Base):
    """Consecutive points of one series: steps (int32) and values (float64, NaN for a missing
    value) packed little-endian, with their step range, count, how many values are finite and
    their min/max/mean (on PostgreSQL the arrays are stored uncompressed: see migration
    e41b7a9c2d05)."""

    __tablename__ = "metric_chunks"
    __table_args__ = (Index("ix_metric_chunks_series_last", "series_id", "last_step"),)

    series_id: Mapped[int] = mapped_column(
        ForeignKey("metric_series.id", ondelete="CASCADE"), primary_key=True
    )
    first_step: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_step: Mapped[int] = mapped_column(Integer)
    count: Mapped[int] = mapped_column(Integer)
    steps: Mapped[bytes] = mapped_column(LargeBinary)
    values: Mapped[bytes] = mapped_column(LargeBinary)
    min_value: Mapped[float | None] = mapped_column(Float)
    max_value: Mapped[float | None] = mapped_column(Float)
    mean_value: Mapped[float | None] = mapped_column(Float)
    finite_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Worker(Base):
    """A process that executes runs: a Celery worker or the embedded executor."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(64))
    current_run_id: Mapped[str | None] = mapped_column(String(36))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """Who cancelled or deleted which run, when: one row per action, never updated. Kept apart
    from runs so that a deleted run's deletion is still on record."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    key_name: Mapped[str | None] = mapped_column(String(64), index=True)  # null: open server
    action: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    detail: Mapped[str | None] = mapped_column(Text)
