"""Metric points: batched, idempotent, fenced writes and the reads behind the metrics, events
and compare routes.

Points are stored per (run, key) series in packed chunks (``service.store.series`` explains the
layout). A step is stored at most once per series: points of a batch whose step is already
stored are dropped, so a re-sent batch changes nothing. A write that carries the attempt's
claim token changes nothing unless the run still holds that token. Reads return per-key series
ordered by step, exact.

Every write first updates the run row (``last_step``, guarded by the token): on PostgreSQL that
row lock orders concurrent writers of one run, so two batches of a run never interleave.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import Select, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.models import MetricChunk, MetricSeries, Run
from service.store import series as packing

Point = tuple[str, int, float | None]


def add_metrics(
    session: Session, run_id: str, points: Iterable[Point], *, token: str | None = None
) -> int:
    """Store (key, step, value) points and commit; returns how many were new. Points already
    stored are left as they are (a re-sent batch changes nothing). With ``token``, nothing is
    written unless the run's ``claim_token`` is that token (a lost attempt's late flush)."""
    batch = packing.group_points(points)
    if not batch:
        return 0
    newest = max(int(steps[-1]) for steps, _ in batch.values())
    if not _touch_run(session, run_id, newest, token):
        session.rollback()
        return 0
    ids = _series_ids(session, run_id, list(batch))
    tails = _tails(session, list(ids.values()))
    written = 0
    changed = []
    for key, (steps, values) in batch.items():
        n = _write_series(session, ids[key], steps, values, tails.get(ids[key]))
        if n:
            written += n
            changed.append(ids[key])
    if changed:
        session.execute(
            update(MetricSeries)
            .where(MetricSeries.id.in_(changed))
            .values(revision=MetricSeries.revision + 1)
        )
    session.commit()
    return written


def _touch_run(session: Session, run_id: str, newest: int, token: str | None) -> bool:
    """Raise the run's last_step to ``newest``; False if the run is gone or, with ``token``,
    no longer held by it. Always updates the row (when it matches) to take its lock first."""
    guard = [Run.id == run_id]
    if token is not None:
        guard.append(Run.claim_token == token)
    last = case((Run.last_step.is_(None) | (Run.last_step < newest), newest), else_=Run.last_step)
    return session.execute(update(Run).where(*guard).values(last_step=last)).rowcount > 0


def _series_ids(session: Session, run_id: str, keys: list[str]) -> dict[str, int]:
    """The series id of each key of the run, creating the missing series."""
    query = select(MetricSeries.key, MetricSeries.id).where(
        MetricSeries.run_id == run_id, MetricSeries.key.in_(keys)
    )
    ids = {key: id_ for key, id_ in session.execute(query)}
    missing = [k for k in keys if k not in ids]
    if missing:
        dialect = session.get_bind().dialect.name
        upsert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
        rows = [{"run_id": run_id, "key": k, "revision": 0} for k in missing]
        session.execute(upsert(MetricSeries).on_conflict_do_nothing(), rows)
        ids = {key: id_ for key, id_ in session.execute(query)}
    return ids


def _tails(session: Session, series_ids: list[int]) -> dict[int, Any]:
    """Each series' chunk with the highest last step (the one appends go to)."""
    tail = MetricChunk.__table__.alias("tail")
    newest = (
        select(func.max(MetricChunk.last_step))
        .where(MetricChunk.series_id == tail.c.series_id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(tail).where(tail.c.series_id.in_(series_ids), tail.c.last_step == newest)
    ).all()
    return {row.series_id: row for row in rows}


def _write_series(
    session: Session, series_id: int, steps: np.ndarray, values: np.ndarray, tail: Any
) -> int:
    """Store the points of one series that are not stored yet; returns how many."""
    rows = []
    written = 0
    if tail is not None and steps[0] <= tail.last_step:
        # Points not after the newest stored one: a re-send, or a missing step filled late.
        # Those not stored yet go to chunks of their own (chunks may then overlap in range).
        old = steps <= tail.last_step
        stored = _stored_steps(session, series_id, int(steps[0]), int(tail.last_step))
        fresh = old & ~np.isin(steps, stored)
        rows += packing.split(steps[fresh], values[fresh])
        written += int(fresh.sum())
        steps, values = steps[~old], values[~old]
    written += len(steps)
    if len(steps) and tail is not None and tail.count < packing.CHUNK_POINTS:
        room = packing.CHUNK_POINTS - tail.count  # fill the unfilled newest chunk first
        tail_steps, tail_values = packing.unpack(tail.steps, tail.values)
        merged = packing.pack(
            np.concatenate((tail_steps, steps[:room])), np.concatenate((tail_values, values[:room]))
        )
        session.execute(
            update(MetricChunk)
            .where(MetricChunk.series_id == series_id, MetricChunk.first_step == tail.first_step)
            .values(**merged)
        )
        steps, values = steps[room:], values[room:]
    rows += packing.split(steps, values)
    if rows:
        session.execute(
            insert(MetricChunk), [{"series_id": series_id, **packing.pack(*r)} for r in rows]
        )
    return written


def _stored_steps(session: Session, series_id: int, lo: int, hi: int) -> np.ndarray:
    """The steps of the series stored within [lo, hi] (and around it, by whole chunks)."""
    blobs = session.execute(
        select(MetricChunk.steps).where(
            MetricChunk.series_id == series_id,
            MetricChunk.last_step >= lo,
            MetricChunk.first_step <= hi,
        )
    ).scalars()
    parts = [np.frombuffer(blob, dtype=packing.STEP_DTYPE) for blob in blobs]
    return np.concatenate(parts) if parts else np.empty(0, dtype=packing.STEP_DTYPE)


def delete_metrics_after(session: Session, run_id: str, step: int) -> int:
    """Remove the run's points after ``step`` (a lost attempt's, before its successor resumes
    from ``step``) and commit; returns how many were removed. The run's last_step is lowered
    to ``step`` if it was past it."""
    ids = select(MetricSeries.id).where(MetricSeries.run_id == run_id)
    chunks = session.execute(
        select(MetricChunk).where(MetricChunk.series_id.in_(ids), MetricChunk.last_step > step)
    ).scalars()
    removed = 0
    changed = set()
    for chunk in chunks.all():
        changed.add(chunk.series_id)
        if chunk.first_step > step:
            removed += chunk.count
            session.delete(chunk)
            continue
        steps, values = packing.unpack(chunk.steps, chunk.values)
        keep = steps <= step
        removed += int((~keep).sum())
        for name, value in packing.pack(steps[keep], values[keep]).items():
            setattr(chunk, name, value)
    if changed:
        session.execute(
            update(MetricSeries)
            .where(MetricSeries.id.in_(changed))
            .values(revision=MetricSeries.revision + 1)
        )
    session.execute(
        update(Run).where(Run.id == run_id, Run.last_step > step).values(last_step=step)
    )
    session.commit()
    return removed


# --- reads ---------------------------------------------------------------------------------


def metric_summary(session: Session, run_id: str) -> dict[str, dict[str, int]]:
    """For each key: number of points and first/last step."""
    return {key: info for key, (info, _) in _summary(session, [run_id]).get(run_id, {}).items()}


def metric_versions(session: Session, run_ids: Sequence[str]) -> dict[str, tuple]:
    """Per run, a value that changes whenever any of its points change (for ETags and cache
    keys): each key's count, step range and write revision. Runs without points map to ()."""
    versions = {run_id: () for run_id in run_ids}
    for run_id, keys in _summary(session, run_ids).items():
        versions[run_id] = tuple(
            (key, info["count"], info["first_step"], info["last_step"], revision)
            for key, (info, revision) in keys.items()
        )
    return versions


def _summary(session: Session, run_ids: Sequence[str]) -> dict[str, dict[str, tuple]]:
    rows = session.execute(
        select(
            MetricSeries.run_id,
            MetricSeries.key,
            MetricSeries.revision,
            func.sum(MetricChunk.count),
            func.min(MetricChunk.first_step),
            func.max(MetricChunk.last_step),
        )
        .join(MetricChunk, MetricChunk.series_id == MetricSeries.id)
        .where(MetricSeries.run_id.in_(list(run_ids)))
        .group_by(MetricSeries.run_id, MetricSeries.key, MetricSeries.revision)
        .order_by(MetricSeries.run_id, MetricSeries.key)
    ).all()
    out: dict[str, dict[str, tuple]] = {}
    for run_id, key, revision, n, lo, hi in rows:
        info = {"count": int(n), "first_step": lo, "last_step": hi}
        out.setdefault(run_id, {})[key] = (info, revision)
    return out


def get_metrics(
    session: Session,
    run_id: str,
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    after_step: int | None = None,
    limit: int | None = None,
) -> dict[str, list[tuple[int, float | None]]]:
    """Series per key as (step, value) pairs, ordered by step (keys in order).
    ``after_step``/``limit`` page through long series (``limit`` counts points per key)."""
    arrays = get_metric_arrays(
        session,
        run_id,
        keys=keys,
        step_min=step_min,
        step_max=step_max,
        after_step=after_step,
        limit=limit,
    )
    return {key: list(zip(steps, values, strict=True)) for key, (steps, values) in arrays.items()}


def get_metric_arrays(
    session: Session,
    run_id: str,
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    after_step: int | None = None,
    limit: int | None = None,
) -> dict[str, tuple[list[int], list[float | None]]]:
    """get_metrics as two lists per key, steps and values (no pair per point: cheaper when
    the caller wants columns anyway, as the downsampling and the JSON series do)."""
    series = read_series(
        session, [run_id], keys=keys, step_min=step_min, step_max=step_max, after_step=after_step
    ).get(run_id, {})
    out = {}
    for key, (steps, values) in series.items():
        if limit is not None:
            steps, values = steps[:limit], values[:limit]
        out[key] = packing.as_lists(steps, values)
    return out


def read_series(
    session: Session,
    run_ids: Sequence[str],
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
    after_step: int | None = None,
) -> dict[str, dict[str, packing.Arrays]]:
    """Per run, per key (in order): the points within the bounds as numpy arrays (steps
    int64, values float64 with NaN for a missing value), in one query for all the runs."""
    lo = step_min
    if after_step is not None:
        lo = after_step + 1 if lo is None else max(lo, after_step + 1)
    query = (
        select(MetricSeries.run_id, MetricSeries.key, MetricChunk.steps, MetricChunk.values)
        .join(MetricChunk, MetricChunk.series_id == MetricSeries.id)
        .where(MetricSeries.run_id.in_(list(run_ids)))
        .order_by(MetricSeries.run_id, MetricSeries.key, MetricChunk.first_step)
    )
    if keys:
        query = query.where(MetricSeries.key.in_(list(keys)))
    if lo is not None:
        query = query.where(MetricChunk.last_step >= lo)
    if step_max is not None:
        query = query.where(MetricChunk.first_step <= step_max)
    parts: dict[str, dict[str, list[packing.Arrays]]] = {}
    for run_id, key, steps, values in _rows(session, query):
        parts.setdefault(run_id, {}).setdefault(key, []).append(packing.unpack(steps, values))
    out: dict[str, dict[str, packing.Arrays]] = {}
    for run_id, by_key in parts.items():
        for key, chunks in by_key.items():
            steps, values = packing.concat(chunks)
            if lo is not None or step_max is not None:
                start = 0 if lo is None else int(np.searchsorted(steps, lo, "left"))
                end = (
                    len(steps)
                    if step_max is None
                    else int(np.searchsorted(steps, step_max, "right"))
                )
                steps, values = steps[start:end], values[start:end]
            if len(steps):
                out.setdefault(run_id, {})[key] = (steps, values)
    return out


def count_metrics(
    session: Session,
    run_id: str,
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
) -> dict[str, int]:
    """Points per key within a step range (for ``total_points`` of a paged series)."""
    if step_min is None and step_max is None:
        summary = metric_summary(session, run_id)
        return {k: v["count"] for k, v in summary.items() if not keys or k in keys}
    series = read_series(session, [run_id], keys=keys, step_min=step_min, step_max=step_max)
    return {key: len(steps) for key, (steps, _) in series.get(run_id, {}).items()}


def _rows(session: Session, query: Select) -> list[Any]:
    """Rows of ``query``; on PostgreSQL read in binary (bytea as bytes, not hex text)."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return connection.execute(query).all()
    compiled = query.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    return _raw_binary(session, str(compiled), compiled.params)


def _raw_binary(session: Session, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from a binary psycopg cursor on the session's connection (in its
    transaction). SQLAlchemy reads results as text; binary arrays decode several times faster.
    Driver errors are raised as SQLAlchemy's (OperationalError, DataError, ...), as any other
    query's are, so the API maps them the same way (503, 400)."""
    connection = session.connection()
    dbapi = connection.dialect.loaded_dbapi
    raw = connection.connection.dbapi_connection
    try:
        with raw.cursor(binary=True) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    except dbapi.Error as exc:
        lost = connection.dialect.is_disconnect(exc, raw, None)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, dbapi.Error, connection_invalidated=lost, dialect=connection.dialect
        ) from exc
