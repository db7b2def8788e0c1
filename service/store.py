"""Every query and every run-status change. The only writer of ``runs.status``.

Run lifecycle (one place, guarded in SQL)::

    queued ──claim──▶ running ──finish──▶ succeeded | failed | diverged | cancelled
      │                  │
      └──cancel──▶ cancelled          └──heartbeat lost──▶ queued (retry) | failed

Each transition is one ``UPDATE … WHERE id = :id AND status IN (:allowed)``: whoever loses a
race (two workers claiming one run, a cancel racing completion, a re-delivered task) sees
rowcount 0 and backs off, so each run has exactly one outcome. Each records a human-readable
``status_reason``.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service.models import MetricPoint, Run, Sweep, Worker, utcnow


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    diverged = "diverged"
    cancelled = "cancelled"


FINISHED = (RunStatus.succeeded, RunStatus.failed, RunStatus.diverged, RunStatus.cancelled)


class NotFound(LookupError):
    pass


class Conflict(RuntimeError):
    """The request is valid but the run's state forbids it (e.g. deleting a running run)."""


# ----------------------------------------------------------------------------- transitions


def _transition(
    session: Session,
    run_id: str,
    allowed_from: Iterable[RunStatus],
    to: RunStatus,
    reason: str | None,
    **values: Any,
) -> bool:
    """The one guarded status UPDATE. True if this caller made the transition."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([s.value for s in allowed_from]))
        .values(status=to.value, status_reason=reason, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def claim_run(session: Session, run_id: str, worker: str) -> bool:
    """queued → running for this worker; False if someone else has it or it was cancelled."""
    now = utcnow()
    return _transition(
        session,
        run_id,
        [RunStatus.queued],
        RunStatus.running,
        f"running on {worker}",
        worker=worker,
        started_at=now,
        heartbeat_at=now,
        attempt=Run.attempt + 1,
    )


def finish_run(
    session: Session,
    run_id: str,
    status: RunStatus,
    reason: str | None,
    *,
    worker: str | None = None,
    **outcome: Any,
) -> bool:
    """running → a finished status. With ``worker``, only that worker's attempt may finish it
    (a worker that lost its run to the reaper must not overwrite the retry's outcome)."""
    assert status in FINISHED, status
    values = {"finished_at": utcnow(), **outcome}
    if worker is None:
        return _transition(session, run_id, [RunStatus.running], status, reason, **values)
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value, Run.worker == worker)
        .values(status=status.value, status_reason=reason, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def fail_queued(session: Session, run_id: str, reason: str) -> bool:
    """A queued run that can never start (e.g. the broker refused it)."""
    return _transition(
        session, run_id, [RunStatus.queued], RunStatus.failed, reason, finished_at=utcnow()
    )


def request_cancel(session: Session, run_id: str) -> Run:
    """Queued runs are cancelled at once; running ones are flagged and their worker stops the
    trainer and records ``cancelled``. Finished runs are left as they are."""
    run = get_run(session, run_id)
    if run.status == RunStatus.queued and _transition(
        session,
        run_id,
        [RunStatus.queued],
        RunStatus.cancelled,
        "cancelled by request",
        finished_at=utcnow(),
    ):
        return get_run(session, run_id)
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value)
        .values(cancel_requested=True)
    )
    session.commit()
    return get_run(session, run_id)


def heartbeat(session: Session, run_id: str, worker: str) -> bool:
    """Record that ``worker`` is alive on this run. Returns False when the worker should stop:
    cancellation was requested or the run is no longer its own (reaped, finished)."""
    now = utcnow()
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value, Run.worker == worker)
        .values(heartbeat_at=now)
    )
    session.commit()
    row = session.execute(
        select(Run.status, Run.worker, Run.cancel_requested).where(Run.id == run_id)
    ).one_or_none()
    if row is None:
        return False
    return row.status == RunStatus.running and row.worker == worker and not row.cancel_requested


def reap_stale(
    session: Session, timeout_s: float, max_attempts: int, *, worker_prefix: str | None = None
) -> list[tuple[str, RunStatus]]:
    """Runs whose heartbeat is older than ``timeout_s`` lost their worker: requeue them while
    attempts remain, otherwise fail them. ``worker_prefix`` limits this to one host's workers
    (used by the embedded executor on start, with ``timeout_s=0``)."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    query = select(Run.id, Run.attempt, Run.worker, Run.cancel_requested).where(
        Run.status == RunStatus.running.value,
        or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff),
    )
    if worker_prefix is not None:
        query = query.where(Run.worker.startswith(worker_prefix))
    outcomes: list[tuple[str, RunStatus]] = []
    for run_id, attempt, worker, cancel_requested in session.execute(query).all():
        lost = f"worker {worker} lost (no heartbeat for {timeout_s:.0f} s)"
        if cancel_requested:
            new, reason = RunStatus.cancelled, f"cancelled by request; {lost}"
        elif attempt < max_attempts:
            new, reason = RunStatus.queued, f"{lost}; requeued (attempt {attempt + 1})"
        else:
            new, reason = RunStatus.failed, f"{lost} after {attempt} attempt(s)"
        extra: dict[str, Any] = {"worker": None}
        if new != RunStatus.queued:
            extra["finished_at"] = utcnow()
        # Guard on the stale heartbeat too: a worker that just came back keeps its run.
        result = session.execute(
            update(Run)
            .where(
                Run.id == run_id,
                Run.status == RunStatus.running.value,
                Run.worker == worker,
                or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff),
            )
            .values(status=new.value, status_reason=reason, **extra)
        )
        session.commit()
        if result.rowcount == 1:
            outcomes.append((run_id, new))
    return outcomes


# ----------------------------------------------------------------------------- runs


def create_run(
    session: Session,
    spec: JobSpec,
    *,
    sweep_id: str | None = None,
    idempotency_key: str | None = None,
) -> tuple[Run, bool]:
    """Insert a queued run. Returns (run, created); with an ``idempotency_key`` seen before,
    returns that earlier run and created=False."""
    if idempotency_key is not None:
        existing = session.scalar(select(Run).where(Run.idempotency_key == idempotency_key))
        if existing is not None:
            return existing, False
    run = Run(
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        status=RunStatus.queued.value,
        status_reason="waiting for a worker",
        sweep_id=sweep_id,
        idempotency_key=idempotency_key,
    )
    session.add(run)
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key won the insert
        session.rollback()
        existing = session.scalar(select(Run).where(Run.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing, False
    return run, True


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"run {run_id} not found")
    return run


def encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = f"{created_at.replace(tzinfo=None).isoformat()}|{run_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not a cursor this module made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, run_id = raw.split("|", 1)
        return datetime.fromisoformat(created), run_id
    except Exception as exc:  # binascii, unicode, split and isoformat errors alike
        raise ValueError("invalid cursor") from exc


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
    query = select(Run).order_by(Run.created_at.desc(), Run.id.desc())
    if status is not None:
        query = query.where(Run.status == status.value)
    if sweep_id is not None:
        query = query.where(Run.sweep_id == sweep_id)
    if name is not None:
        query = query.where(Run.name == name)
    if cursor is not None:
        created, run_id = decode_cursor(cursor)
        query = query.where(
            or_(Run.created_at < created, and_(Run.created_at == created, Run.id < run_id))
        )
    runs = list(session.scalars(query.limit(limit + 1)))
    if len(runs) > limit:
        last = runs[limit - 1]
        return runs[:limit], encode_cursor(last.created_at, last.id)
    return runs, None


def get_runs(session: Session, run_ids: Sequence[str]) -> list[Run]:
    """The runs in the order given; NotFound names the first missing id."""
    found = {run.id: run for run in session.scalars(select(Run).where(Run.id.in_(run_ids)))}
    for run_id in run_ids:
        if run_id not in found:
            raise NotFound(f"run {run_id} not found")
    return [found[run_id] for run_id in run_ids]


def delete_run(session: Session, run_id: str) -> None:
    """Delete a finished run and its metrics."""
    run = get_run(session, run_id)
    if run.status not in FINISHED:
        raise Conflict(f"run {run_id} is {run.status}; cancel it before deleting")
    session.execute(delete(MetricPoint).where(MetricPoint.run_id == run_id))
    session.execute(delete(Run).where(Run.id == run_id))
    session.commit()


def record_start(session: Session, run_id: str, *, device: str, torch_version: str) -> None:
    session.execute(
        update(Run).where(Run.id == run_id).values(device=device, torch_version=torch_version)
    )
    session.commit()


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


# ----------------------------------------------------------------------------- metrics


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


# ----------------------------------------------------------------------------- sweeps


def expand_grid(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` over ``base``; keys are dotted paths into the spec
    (``"model.norm"``, ``"optimizer.lr"``, ``"seed"``)."""
    keys = list(grid)
    specs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        spec = _deep_copy(base)
        for path, value in zip(keys, values, strict=True):
            node = spec
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        pairs = zip(keys, values, strict=True)
        suffix = ",".join(f"{path.split('.')[-1]}={value}" for path, value in pairs)
        spec["name"] = f"{base.get('name', 'run')}[{suffix}]"[:200]
        specs.append(spec)
    return specs


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def create_sweep(
    session: Session, name: str, base: dict[str, Any], grid: dict[str, list[Any]], specs
) -> tuple[Sweep, list[Run]]:
    """Insert a sweep and its (already validated) run specs in one transaction."""
    sweep = Sweep(name=name, base_spec=base, grid=grid)
    session.add(sweep)
    session.flush()
    runs = [
        Run(
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            status=RunStatus.queued.value,
            status_reason="waiting for a worker",
            sweep_id=sweep.id,
        )
        for spec in specs
    ]
    session.add_all(runs)
    session.commit()
    return sweep, runs


def get_sweep(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} not found")
    return sweep


def sweep_runs(session: Session, sweep_id: str) -> list[Run]:
    return list(
        session.scalars(select(Run).where(Run.sweep_id == sweep_id).order_by(Run.created_at))
    )


# ----------------------------------------------------------------------------- workers


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


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- API helpers

# The reason a queued run carries while the broker refuses it; the API's maintenance loop
# resubmits runs with this reason until the broker takes them.
SUBMIT_FAILED = "broker unavailable; will retry"
WAITING = "waiting for a worker"


def set_queued_reason(
    session: Session, run_id: str, reason: str, *, only_if_reason: str | None = None
) -> bool:
    """Change the reason of a run that is still queued (its status stays as it is)."""
    query = update(Run).where(Run.id == run_id, Run.status == RunStatus.queued.value)
    if only_if_reason is not None:
        query = query.where(Run.status_reason == only_if_reason)
    result = session.execute(
        query.values(status_reason=reason).execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


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


# ----------------------------------------------------------------------------- worker helpers


def release_run(session: Session, run_id: str, worker: str, reason: str) -> bool:
    """running → queued for a worker that stops on purpose (its process is shutting down)
    before the run ends. The run is not at fault, so this attempt does not count towards
    ``max_attempts``; the executor submits queued runs again when it starts."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value, Run.worker == worker)
        .values(
            status=RunStatus.queued.value,
            status_reason=reason,
            worker=None,
            attempt=Run.attempt - 1,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1
