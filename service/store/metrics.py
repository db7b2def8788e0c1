"""Metric points: batched, idempotent, fenced writes (reads: ``service.store.metric_reads``).

Points are stored per (run, key) series in packed chunks (``service.store.series`` explains the
layout). A step is stored at most once per series: points of a batch whose step is already
stored are dropped, so a re-sent batch changes nothing. A write that carries the attempt's claim
token changes nothing unless the run still holds that token.

A write is a few fixed statements on the driver connection (``service.store.raw`` says why),
the guarded run-row update first: on PostgreSQL its row lock orders concurrent writers of one
run, so two batches of a run never interleave. Then one of two paths:

- **Appending** (PostgreSQL, the worker's steady state: each key's points all come after its
  stored ones): per key, one statement appends the points to the key's newest chunk in the
  database (``steps || new``) while it has room, and one stores them as a new chunk if not.
  They go out with the run-row update, so the write is one round trip and the commit; the
  client never reads a chunk back.
- **Merging** (SQLite, a key's first points, a re-sent or late batch, a backlog of more than a
  chunk): one read of the run's series with each one's newest chunk, then per key an update of
  that chunk while it has room and inserts of new chunks, with points already stored dropped.
  A key the append left alone (any of those cases) goes this way, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service.store import series as packing
from service.store.metric_reads import (
    count_metrics,
    get_metric_arrays,
    get_metrics,
    metric_summary,
    metric_versions,
    read_series,
)
from service.store.raw import Raw, Statement

__all__ = [
    "add_metrics",
    "count_metrics",
    "delete_metrics_after",
    "get_metric_arrays",
    "get_metrics",
    "metric_summary",
    "metric_versions",
    "read_series",
]

Point = tuple[str, int, float | None]
Batch = dict[str, packing.Arrays]
CHUNK_COLUMNS = (
    "first_step",
    "last_step",
    "count",
    "steps",
    '"values"',
    "min_value",
    "max_value",
    "mean_value",
    "finite_count",
)
INSERT_CHUNK = (
    f"INSERT INTO metric_chunks (series_id, {', '.join(CHUNK_COLUMNS)}) "
    f"VALUES (%s, {', '.join(['%s'] * len(CHUNK_COLUMNS))})"
)
UPDATE_CHUNK = (
    f"UPDATE metric_chunks SET {', '.join(f'{c} = %s' for c in CHUNK_COLUMNS)} "
    "WHERE series_id = %s AND first_step = %s"
)
# Only removals bump a series' revision: a write that stores points raises its count, which a
# reader's version (``metric_versions``) includes already.
BUMP_REVISION = "UPDATE metric_series SET revision = revision + 1 WHERE id = %s"
# Each series of the run, with its newest chunk (the one with the highest last step) if any.
SERIES_AND_TAILS = (
    'SELECT s.key, s.id, c.first_step, c.last_step, c.count, c.steps, c."values" '
    "FROM metric_series s LEFT JOIN metric_chunks c ON c.series_id = s.id AND c.last_step = "
    "(SELECT max(m.last_step) FROM metric_chunks m WHERE m.series_id = s.id) "
    "WHERE s.run_id = %s"
)
# PostgreSQL: append one key's points to its newest chunk if they all come after its stored
# ones and the chunk has room (rowcount 1), else change nothing (rowcount 0). It runs after the
# run-row update locked the row, so its snapshot sees every committed write of the run.
APPEND = f"""UPDATE metric_chunks c SET last_step = %(last_step)s, count = c.count + %(count)s,
    steps = c.steps || %(steps)s, "values" = c."values" || %(values)s,
    min_value = LEAST(c.min_value, %(min_value)s),
    max_value = GREATEST(c.max_value, %(max_value)s),
    mean_value = (coalesce(c.mean_value * c.finite_count, 0) + %(finite_sum)s)
        / nullif(c.finite_count + %(finite_count)s, 0),
    finite_count = c.finite_count + %(finite_count)s
FROM metric_series s
WHERE s.run_id = %(run)s AND s.key = %(key)s AND c.series_id = s.id
    AND c.last_step = (SELECT max(m.last_step) FROM metric_chunks m WHERE m.series_id = s.id)
    AND c.last_step < %(first_step)s AND c.count + %(count)s <= {packing.CHUNK_POINTS}"""
# ...then, if it did not, store them as a new chunk when no stored point is at or after their
# first step (rowcount 1). Both rowcounts 0 leave the key to the merging path.
APPEND_CHUNK = f"""INSERT INTO metric_chunks (series_id, {", ".join(CHUNK_COLUMNS)})
SELECT s.id, %(first_step)s, %(last_step)s, %(count)s, %(steps)s, %(values)s, %(min_value)s,
    %(max_value)s, %(mean_value)s, %(finite_count)s
FROM metric_series s WHERE s.run_id = %(run)s AND s.key = %(key)s
    AND NOT EXISTS (SELECT 1 FROM metric_chunks c
                    WHERE c.series_id = s.id AND c.last_step >= %(first_step)s)"""


def add_metrics(
    session: Session, run_id: str, points: Iterable[Point], *, token: str | None = None
) -> int:
    """Store (key, step, value) points and commit; returns how many were new. Points already
    stored are left as they are (a re-sent batch changes nothing). With ``token``, nothing is
    written unless the run's ``claim_token`` is that token (a lost attempt's late flush), nor
    when the run no longer exists."""
    batch = packing.group_points(points)
    if not batch:
        return 0
    raw = Raw(session)
    statements = [_touch_run(run_id, _newest(batch), token)]
    appending = raw.postgres and all(len(s) <= packing.CHUNK_POINTS for s, _ in batch.values())
    if appending:
        statements += _appends(run_id, batch)
    touched, *counts = raw.batch(statements)
    if not touched:  # the run is gone or no longer held by the token: undo the appends
        session.rollback()
        return 0
    written = 0
    for i, key in enumerate(list(batch) if appending else []):
        if counts[2 * i] or counts[2 * i + 1]:
            written += len(batch.pop(key)[0])
    if batch:
        written += _merge(raw, run_id, batch)
    session.commit()
    return written


def _appends(run_id: str, batch: Batch) -> list[Statement]:
    """APPEND and APPEND_CHUNK for every key of the batch, in its order."""
    statements = []
    for key, (steps, values) in batch.items():
        chunk = packing.pack(steps, values)
        chunk["finite_sum"] = float(values[np.isfinite(values)].sum())
        params = {**chunk, "run": run_id, "key": key}
        statements += [Statement(APPEND, params), Statement(APPEND_CHUNK, params)]
    return statements


def _merge(raw: Raw, run_id: str, batch: Batch) -> int:
    """The merging path (module docstring): store the points not stored yet; returns how many
    that is. The caller holds the run's row lock and commits."""
    series = _by_key(raw.fetchall(SERIES_AND_TAILS, (run_id,)))
    missing = [k for k in batch if k not in series]
    if missing:
        create = Statement(
            "INSERT INTO metric_series (run_id, key, revision) VALUES (%s, %s, 0) "
            "ON CONFLICT DO NOTHING",
            [(run_id, k) for k in missing],
            many=True,
        )
        series = _by_key(raw.batch([create, _tails(run_id)])[1])
    inserts: list[tuple] = []
    updates: list[tuple] = []
    written = 0
    for key, (steps, values) in batch.items():
        series_id, tail = series[key]
        written += _plan(raw, series_id, steps, values, tail, inserts, updates)
    writes = [(UPDATE_CHUNK, updates), (INSERT_CHUNK, inserts)]
    raw.batch([Statement(sql, rows, many=True) for sql, rows in writes if rows])
    return written


def _newest(batch: Batch) -> int:
    return max(int(steps[-1]) for steps, _ in batch.values())


def _touch_run(run_id: str, newest: int, token: str | None) -> Statement:
    """Raise the run's last_step to ``newest``; its rowcount is 0 if the run is gone or, with
    ``token``, no longer held by it. Updates the row whenever it matches, to take its lock."""
    sql = (
        "UPDATE runs SET last_step = CASE WHEN last_step IS NULL OR last_step < %s THEN %s "
        "ELSE last_step END WHERE id = %s"
    )
    params: list[Any] = [newest, newest, run_id]
    if token is not None:
        sql += " AND claim_token = %s"
        params.append(token)
    return Statement(sql, params)


def _tails(run_id: str) -> Statement:
    return Statement(SERIES_AND_TAILS, (run_id,), fetch=True)


def _by_key(rows: list[Any]) -> dict[str, tuple[int, Any]]:
    """Per key: its series id and its newest chunk row (None for a series with no points)."""
    return {row[0]: (row[1], row if row[2] is not None else None) for row in rows}


def _plan(
    raw: Raw,
    series_id: int,
    steps: np.ndarray,
    values: np.ndarray,
    tail: Any,
    inserts: list[tuple],
    updates: list[tuple],
) -> int:
    """Add to ``inserts``/``updates`` the chunk rows that store the points of one series not
    stored yet; returns how many points that is. ``tail`` is the row of SERIES_AND_TAILS."""
    parts: list[packing.Arrays] = []
    written = 0
    if tail is not None and steps[0] <= tail[3]:
        # Points not after the newest stored one: a re-send, or a missing step filled late.
        # Those not stored yet go to chunks of their own (chunks may then overlap in range).
        old = steps <= tail[3]
        stored = _stored_steps(raw, series_id, int(steps[0]), int(tail[3]))
        fresh = old & ~np.isin(steps, stored)
        parts += packing.split(steps[fresh], values[fresh])
        written += int(fresh.sum())
        steps, values = steps[~old], values[~old]
    written += len(steps)
    if len(steps) and tail is not None and tail[4] < packing.CHUNK_POINTS:
        room = packing.CHUNK_POINTS - tail[4]  # fill the newest chunk first
        tail_steps, tail_values = packing.unpack(tail[5], tail[6])
        merged = packing.pack(
            np.concatenate((tail_steps, steps[:room])), np.concatenate((tail_values, values[:room]))
        )
        updates.append((*merged.values(), series_id, tail[2]))
        steps, values = steps[room:], values[room:]
    parts += packing.split(steps, values)
    inserts += [(series_id, *packing.pack(*part).values()) for part in parts]
    return written


def _stored_steps(raw: Raw, series_id: int, lo: int, hi: int) -> np.ndarray:
    """The steps of the series stored within [lo, hi] (and around it, by whole chunks)."""
    rows = raw.fetchall(
        "SELECT steps FROM metric_chunks WHERE series_id = %s AND last_step >= %s "
        "AND first_step <= %s",
        (series_id, lo, hi),
    )
    parts = [np.frombuffer(blob, dtype=packing.STEP_DTYPE) for (blob,) in rows]
    return np.concatenate(parts) if parts else np.empty(0, dtype=packing.STEP_DTYPE)


def delete_metrics_after(session: Session, run_id: str, step: int) -> int:
    """Remove the run's points after ``step`` (a lost attempt's, before its successor resumes
    from ``step``) and commit; returns how many were removed. The run's last_step is lowered
    to ``step`` if it was past it."""
    raw = Raw(session)
    chunks = raw.fetchall(
        'SELECT c.series_id, c.first_step, c.count, c.steps, c."values" FROM metric_chunks c '
        "JOIN metric_series s ON s.id = c.series_id WHERE s.run_id = %s AND c.last_step > %s",
        (run_id, step),
    )
    removed = 0
    drops, updates = [], []
    for series_id, first_step, count, steps_blob, values_blob in chunks:
        if first_step > step:
            removed += count
            drops.append((series_id, first_step))
            continue
        steps, values = packing.unpack(steps_blob, values_blob)
        keep = steps <= step
        removed += int((~keep).sum())
        updates.append((*packing.pack(steps[keep], values[keep]).values(), series_id, first_step))
    raw.executemany("DELETE FROM metric_chunks WHERE series_id = %s AND first_step = %s", drops)
    raw.executemany(UPDATE_CHUNK, updates)
    raw.executemany(BUMP_REVISION, sorted({(row[0],) for row in chunks}))
    raw.execute(
        "UPDATE runs SET last_step = %s WHERE id = %s AND last_step > %s", (step, run_id, step)
    )
    session.commit()
    return removed
