"""Metric points: batched idempotent writes and the reads behind the metrics, events and
compare routes.

Points are keyed by (run_id, key, step): a re-delivered batch changes nothing. Reads return
per-key series ordered by step; on PostgreSQL they come back as two arrays per key, read in
binary (``_pg_metrics``), which is several times cheaper than one row per point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service.models import MetricPoint, Run


def add_metrics(session: Session, run_id: str, points: Iterable[tuple[str, int, float | None]]):
    """Upsert (key, step, value) points; points already stored are left as they are, so a
    re-delivered batch changes nothing."""
    rows = [{"run_id": run_id, "key": k, "step": s, "value": v} for k, s, v in points]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    session.execute(insert(MetricPoint).on_conflict_do_nothing(), rows)
    newest = max(row["step"] for row in rows)
    session.execute(
        update(Run)
        .where(Run.id == run_id, or_(Run.last_step.is_(None), Run.last_step < newest))
        .values(last_step=newest)
    )
    session.commit()


def metric_summary(session: Session, run_id: str) -> dict[str, dict[str, int]]:
    """For each key: number of points and first/last step."""
    rows = session.execute(
        select(
            MetricPoint.key,
            func.count(),
            func.min(MetricPoint.step),
            func.max(MetricPoint.step),
        )
        .where(MetricPoint.run_id == run_id)
        .group_by(MetricPoint.key)
        .order_by(MetricPoint.key)
    ).all()
    return {k: {"count": n, "first_step": lo, "last_step": hi} for k, n, lo, hi in rows}


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
    ``after_step``/``limit`` page through long series (``limit`` counts points per key,
    applied in the database)."""
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
    if session.get_bind().dialect.name == "postgresql":
        return _pg_metrics(session, run_id, keys, step_min, step_max, after_step, limit)
    query = select(MetricPoint.key, MetricPoint.step, MetricPoint.value).where(
        MetricPoint.run_id == run_id
    )
    if keys:
        query = query.where(MetricPoint.key.in_(list(keys)))
    if step_min is not None:
        query = query.where(MetricPoint.step >= step_min)
    if step_max is not None:
        query = query.where(MetricPoint.step <= step_max)
    if after_step is not None:
        query = query.where(MetricPoint.step > after_step)
    if limit is not None:  # the first ``limit`` points of each key, not the whole series
        rank = func.row_number().over(partition_by=MetricPoint.key, order_by=MetricPoint.step)
        ranked = query.add_columns(rank.label("rank")).subquery()
        query = select(ranked.c.key, ranked.c.step, ranked.c.value).where(ranked.c.rank <= limit)
        query = query.order_by(ranked.c.key, ranked.c.step)
    else:
        query = query.order_by(MetricPoint.key, MetricPoint.step)
    # Plain tuples through the Core connection: a long series is thousands of rows, and ORM
    # row processing and per-row grouping calls were most of this function's time.
    series: dict[str, tuple[list[int], list[float | None]]] = {}
    steps: list[int] = []
    values: list[float | None] = []
    last_key = None
    for key, step, value in session.connection().execute(query).all():
        if key != last_key:
            steps, values = series.setdefault(key, ([], []))
            last_key = key
        steps.append(step)
        values.append(value)
    return series


def _pg_metrics(
    session: Session,
    run_id: str,
    keys: Sequence[str] | None,
    step_min: int | None,
    step_max: int | None,
    after_step: int | None,
    limit: int | None,
) -> dict[str, tuple[list[int], list[float | None]]]:
    """get_metric_arrays on PostgreSQL: one row per key, its steps and values as two arrays
    (``array_agg`` in step order), read in binary. Row by row, a live run's ~18,000 points
    cost ~30 ms of the API's CPU (and GIL) in driver and result processing; as arrays, ~3 ms.
    Same points, same order as the portable query."""
    where = ["run_id = %(run_id)s"]
    params: dict[str, Any] = {"run_id": run_id}
    if keys:
        where.append("key = ANY(%(keys)s)")
        params["keys"] = list(keys)
    for bound, op, value in (
        ("step_min", ">=", step_min),
        ("step_max", "<=", step_max),
        ("after_step", ">", after_step),
    ):
        if value is not None:
            where.append(f"step {op} %({bound})s")
            params[bound] = value
    source = f"{MetricPoint.__tablename__} WHERE {' AND '.join(where)}"
    if limit is not None:  # the first ``limit`` points of each key, not the whole series
        source = (
            f"(SELECT key, step, value, row_number() OVER (PARTITION BY key ORDER BY step) AS rank"
            f" FROM {source}) AS ranked WHERE rank <= %(limit)s"
        )
        params["limit"] = limit
    sql = (
        "SELECT key, array_agg(step ORDER BY step), array_agg(value ORDER BY step) "
        f"FROM {source} GROUP BY key ORDER BY key"
    )
    return {key: (steps, values) for key, steps, values in _raw_binary(session, sql, params)}


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


def count_metrics(
    session: Session,
    run_id: str,
    *,
    keys: Sequence[str] | None = None,
    step_min: int | None = None,
    step_max: int | None = None,
) -> dict[str, int]:
    """Points per key within a step range (for ``total_points`` of a paged series)."""
    query = (
        select(MetricPoint.key, func.count())
        .where(MetricPoint.run_id == run_id)
        .group_by(MetricPoint.key)
    )
    if keys:
        query = query.where(MetricPoint.key.in_(list(keys)))
    if step_min is not None:
        query = query.where(MetricPoint.step >= step_min)
    if step_max is not None:
        query = query.where(MetricPoint.step <= step_max)
    return {key: n for key, n in session.execute(query).all()}
