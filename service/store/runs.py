"""Every write to a run: the state machine, creation, deletion. The only writer of ``runs.status``.

Run lifecycle (drawn in ``service.vocab``; guarded in SQL here)::

    queued ──claim──▶ running ──finish──▶ succeeded | failed | diverged | cancelled
      │                  │
      └──cancel──▶ cancelled          └──heartbeat lost──▶ queued (retry) | failed

Every status change goes through ``_transition``: one ``UPDATE … WHERE id = :id AND status IN
(:allowed) [AND guard]``. Whoever loses a race (two workers claiming one run, a cancel racing
completion, a re-delivered task, a worker that lost its run to the reaper) sees rowcount 0 and
backs off, so each run has exactly one outcome. Each records a human-readable
``status_reason``.

Each attempt is fenced by a claim token: ``claim_run`` returns a fresh one and stores it on
the run; heartbeats, metric writes (``holds_claim``), the resume point and the outcome carry
it, and with a stale token they change nothing. Worker names only label the attempt (two
processes may share one); liveness is judged by the database's clock (``db_now``).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service.models import MetricSeries, Run, spec_filter_values, utcnow
from service.store.errors import Conflict
from service.store.metrics import delete_metrics_after
from service.store.queries import get_run
from service.vocab import FINISHED_STATUSES, WAITING, RunStatus

# ----------------------------------------------------------------------------- transitions


def _transition(
    session: Session,
    run_id: str,
    allowed_from: Iterable[RunStatus],
    to: RunStatus,
    reason: str | None,
    *,
    guard: Iterable[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    """The one guarded status UPDATE: ``run_id`` moves to ``to`` only if its status is one of
    ``allowed_from`` and every ``guard`` condition holds (e.g. it is still this worker's).
    ``values`` are written with it. True if this caller made the transition."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([s.value for s in allowed_from]), *guard)
        .values(status=to.value, status_reason=reason, **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return result.rowcount == 1


def db_now(session: Session) -> datetime:
    """The database's clock (UTC). Heartbeats are written and judged by it, so hosts whose
    clocks disagree cannot make a live run look stale (or a dead one look alive)."""
    if session.get_bind().dialect.name == "postgresql":
        return session.scalar(select(func.clock_timestamp()))  # now(): the transaction's start
    text_now = session.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now")))
    return datetime.fromisoformat(text_now).replace(tzinfo=UTC)


def new_token() -> str:
    return secrets.token_hex(16)


def claim_run(session: Session, run_id: str, worker: str) -> str | None:
    """queued → running for this worker. Returns the attempt's fresh claim token (every later
    write of this attempt carries it), or None if someone else has it or it was cancelled.
    ``last_step`` is set again when the attempt says where it starts (``record_resume``)."""
    now = db_now(session)
    token = new_token()
    claimed = _transition(
        session,
        run_id,
        [RunStatus.queued],
        RunStatus.running,
        f"running on {worker}",
        worker=worker,
        claim_token=token,
        started_at=now,
        heartbeat_at=now,
        attempt=Run.attempt + 1,
        resumed_step=None,
    )
    return token if claimed else None


def _owner_guard(worker: str | None, token: str | None) -> list[ColumnElement[bool]]:
    """The conditions that make a write this attempt's: its token (and/or worker name)."""
    guard = [] if worker is None else [Run.worker == worker]
    if token is not None:
        guard.append(Run.claim_token == token)
    return guard


def finish_run(
    session: Session,
    run_id: str,
    status: RunStatus,
    reason: str | None,
    *,
    worker: str | None = None,
    token: str | None = None,
    **outcome: Any,
) -> bool:
    """running → a finished status. With ``token`` (or ``worker``), only that attempt may
    finish it: a worker that lost its run to the reaper must not overwrite the retry's
    outcome, even when the retry runs under the same worker name."""
    assert status in FINISHED_STATUSES, status
    return _transition(
        session,
        run_id,
        [RunStatus.running],
        status,
        reason,
        guard=_owner_guard(worker, token),
        finished_at=utcnow(),
        **outcome,
    )


def record_resume(session: Session, run_id: str, token: str, step: int, reason: str) -> bool:
    """The attempt holding ``token`` resumed from its checkpoint at ``step`` (0: from the
    start): the points a lost attempt stored after that step are deleted, so the stored curve
    is this attempt's alone, and the reason says where it resumed. One transaction, guarded by
    the token: a stale attempt changes nothing."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value, Run.claim_token == token)
        .values(resumed_step=step or None, last_step=step or None, status_reason=reason)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    delete_metrics_after(session, run_id, step)
    session.commit()
    return True


def holds_claim(session: Session, run_id: str, token: str) -> bool:
    """Whether ``token`` is still the run's claim, checked under the run's row lock (the write
    lock on SQLite) so that the caller's writes in this transaction land before any new claim.
    The caller commits (or rolls back) the transaction."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.claim_token == token)
        .values(claim_token=token)  # a no-op write: it takes the lock
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def fail_queued(session: Session, run_id: str, reason: str) -> bool:
    """A queued run that can never start (e.g. the broker refused it)."""
    return _transition(
        session, run_id, [RunStatus.queued], RunStatus.failed, reason, finished_at=utcnow()
    )


def release_run(
    session: Session, run_id: str, worker: str, reason: str, *, token: str | None = None
) -> bool:
    """running → queued for a worker that stops on purpose (its process is shutting down)
    before the run ends. The run is not at fault, so this attempt does not count towards
    ``max_attempts``; the executor submits queued runs again when it starts."""
    return _transition(
        session,
        run_id,
        [RunStatus.running],
        RunStatus.queued,
        reason,
        guard=_owner_guard(worker, token),
        worker=None,
        claim_token=None,
        attempt=Run.attempt - 1,
    )


def set_queued_reason(
    session: Session, run_id: str, reason: str, *, only_if_reason: str | None = None
) -> bool:
    """Change the reason of a run that is still queued (its status stays as it is)."""
    guard = [] if only_if_reason is None else [Run.status_reason == only_if_reason]
    return _transition(session, run_id, [RunStatus.queued], RunStatus.queued, reason, guard=guard)


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
    # Only a flag (the status is the worker's to write once the trainer has stopped).
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running.value)
        .values(cancel_requested=True)
    )
    session.commit()
    return get_run(session, run_id)


def heartbeat(session: Session, run_id: str, worker: str, *, token: str | None = None) -> bool:
    """Record that ``worker`` (the attempt holding ``token``) is alive on this run, by the
    database's clock. Returns False when the worker should stop: cancellation was requested
    or the run is no longer its own (reaped, claimed again, finished)."""
    session.execute(
        update(Run)
        .where(
            Run.id == run_id, Run.status == RunStatus.running.value, *_owner_guard(worker, token)
        )
        .values(heartbeat_at=db_now(session))
    )
    session.commit()
    row = session.execute(
        select(Run.status, Run.worker, Run.claim_token, Run.cancel_requested).where(
            Run.id == run_id
        )
    ).one_or_none()
    if row is None:
        return False
    mine = row.worker == worker and (token is None or row.claim_token == token)
    return row.status == RunStatus.running and mine and not row.cancel_requested


def running_workers(session: Session, worker_prefix: str) -> list[str]:
    """The workers (names starting with ``worker_prefix``) that hold running runs."""
    query = select(Run.worker).where(
        Run.status == RunStatus.running.value, Run.worker.startswith(worker_prefix)
    )
    return sorted({w for w in session.scalars(query) if w is not None})


def reap_stale(
    session: Session,
    timeout_s: float,
    max_attempts: int,
    *,
    worker_prefix: str | None = None,
    workers: Collection[str] | None = None,
    why: str | None = None,
) -> list[tuple[str, RunStatus]]:
    """Runs whose heartbeat is older than ``timeout_s`` by the database's clock lost their
    worker: requeue them while attempts remain, otherwise fail them. ``worker_prefix`` or
    ``workers`` (exact names) limit this to some workers: the embedded executor, on start,
    reaps at once (``timeout_s=0``) the runs of its host's processes that are gone; ``why``
    then says how they were found lost. The claim token is cleared: the lost attempt's
    writes are refused from now on."""
    cutoff = db_now(session) - timedelta(seconds=timeout_s)
    stale = or_(Run.heartbeat_at.is_(None), Run.heartbeat_at <= cutoff)
    query = select(Run.id, Run.attempt, Run.worker, Run.cancel_requested).where(
        Run.status == RunStatus.running.value, stale
    )
    if worker_prefix is not None:
        query = query.where(Run.worker.startswith(worker_prefix))
    if workers is not None:
        query = query.where(Run.worker.in_(list(workers)))
    outcomes: list[tuple[str, RunStatus]] = []
    for run_id, attempt, worker, cancel_requested in session.execute(query).all():
        lost = f"worker {worker} lost ({why or f'no heartbeat for {timeout_s:.0f} s'})"
        if cancel_requested:
            new, reason = RunStatus.cancelled, f"cancelled by request; {lost}"
        elif attempt < max_attempts:
            new, reason = RunStatus.queued, f"{lost}; requeued (attempt {attempt + 1})"
        else:
            new, reason = RunStatus.failed, f"{lost} after {attempt} attempt(s)"
        extra: dict[str, Any] = {"worker": None, "claim_token": None}
        if new != RunStatus.queued:
            extra["finished_at"] = utcnow()
        # Guard on the stale heartbeat too: a worker that just came back keeps its run.
        guard = [Run.worker == worker, stale]
        if _transition(session, run_id, [RunStatus.running], new, reason, guard=guard, **extra):
            outcomes.append((run_id, new))
    return outcomes


# ----------------------------------------------------------------------------- creation


def new_run(
    spec: JobSpec, *, sweep_id: str | None = None, tags: Sequence[str] = (), **values: Any
) -> Run:
    """A queued run for ``spec``, not yet added to a session (a run starts here and nowhere
    else: ``create_run`` and ``create_sweep`` both build their rows with it). Its ``spec_*``
    columns, what the filters compare, come from the spec as stored."""
    stored = spec.model_dump(mode="json")
    return Run(
        name=spec.name,
        spec=stored,
        status=RunStatus.queued.value,
        status_reason=WAITING,
        sweep_id=sweep_id,
        tags=_unique(tags),
        **spec_filter_values(stored),
        **values,
    )


def _unique(tags: Sequence[str]) -> list[str]:
    """The tags without repeats, first occurrence first."""
    return list(dict.fromkeys(tags))


def annotate_run(
    session: Session, run_id: str, *, tags: Sequence[str] | None = None, note: str | None = None
) -> Run:
    """Replace a run's tags and/or its note (None leaves that one as it is; an empty note
    clears it). People's labels, not the state machine's: a run of any status takes them."""
    get_run(session, run_id)  # NotFound names the id
    values: dict[str, Any] = {}
    if tags is not None:
        values["tags"] = _unique(tags)
    if note is not None:
        values["note"] = note or None
    if values:
        session.execute(update(Run).where(Run.id == run_id).values(**values))
        session.commit()
    return get_run(session, run_id)


def create_run(
    session: Session,
    spec: JobSpec,
    *,
    sweep_id: str | None = None,
    idempotency_key: str | None = None,
    tags: Sequence[str] = (),
    created_by: str | None = None,
) -> tuple[Run, bool]:
    """Insert a queued run, submitted by the API key named ``created_by`` (None: an open
    server). Returns (run, created); with an ``idempotency_key`` seen before, returns that
    earlier run (as it is) and created=False."""
    if idempotency_key is not None:
        existing = session.scalar(select(Run).where(Run.idempotency_key == idempotency_key))
        if existing is not None:
            return existing, False
    run = new_run(spec, sweep_id=sweep_id, idempotency_key=idempotency_key, tags=tags)
    run.created_by = created_by
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


def record_start(session: Session, run_id: str, *, device: str, torch_version: str) -> None:
    session.execute(
        update(Run).where(Run.id == run_id).values(device=device, torch_version=torch_version)
    )
    session.commit()


def delete_run(session: Session, run_id: str) -> None:
    """Delete a finished run and its metrics."""
    run = get_run(session, run_id)
    if run.status not in FINISHED_STATUSES:
        raise Conflict(f"run {run_id} is {run.status}; cancel it before deleting")
    session.execute(delete(MetricSeries).where(MetricSeries.run_id == run_id))
    session.execute(delete(Run).where(Run.id == run_id))
    session.commit()
