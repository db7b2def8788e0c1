"""The store's guards where a mutation run found them untested: a stale worker racing the
worker that now owns the run to finish it, a re-sent metric batch, and the retry limit at its
boundary.

Each check takes an Engine so that tests/integration/test_store_pg_mutations.py runs the same
checks on the real PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.db import make_engine
from service.settings import Settings
from service.store import RunStatus

# Worker names unique to this test session, and every reap limited to them: on the shared
# PostgreSQL database of an integration session, a reap with timeout 0 would otherwise take
# other tests' running runs too.
PREFIX = f"guards-{uuid.uuid4().hex[:8]}-"
W1, W2 = PREFIX + "w1", PREFIX + "w2"
RACES = 12  # rounds per race; without the guard the stale worker wins about half of them


def _queued(session: Session, name: str) -> str:
    run, created = store.create_run(session, JobSpec(name=name))
    assert created
    return run.id


def _race(engine: Engine, *calls: Callable[[Session], Any]) -> list[Any]:
    """Run each call in its own thread and session, released together by a barrier."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def go(i: int, call: Callable[[Session], Any]) -> None:
        try:
            with Session(engine, expire_on_commit=False) as session:
                barrier.wait(timeout=30)
                results[i] = call(session)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def _reclaimed_by_second_worker(session: Session, name: str) -> str:
    """A run that w1 claimed, lost to the reaper, and w2 claimed again (attempt 2)."""
    run_id = _queued(session, name)
    assert store.claim_run(session, run_id, W1)
    assert store.reap_stale(session, 0.0, max_attempts=3, worker_prefix=PREFIX) == [
        (run_id, RunStatus.queued)
    ]
    assert store.claim_run(session, run_id, W2)
    return run_id


# ----------------------------------------------------------------------------- finish guard


def check_stale_worker_cannot_finish(engine: Engine) -> None:
    """w1 comes back after losing its run and reports an outcome: nothing changes, and the
    outcome recorded is the one of w2, which owns the run now."""
    with Session(engine, expire_on_commit=False) as session:
        run_id = _reclaimed_by_second_worker(session, "stale")
        assert not store.finish_run(session, run_id, RunStatus.failed, "stale", worker=W1)
        run = store.get_run(session, run_id)
        assert (run.status, run.worker, run.finished_at) == ("running", W2, None)
        assert store.finish_run(session, run_id, RunStatus.succeeded, "done", worker=W2)
        run = store.get_run(session, run_id)
        assert (run.status, run.status_reason) == ("succeeded", "done")


def _finish(run_id: str, worker: str, status: RunStatus) -> Callable[[Session], bool]:
    return lambda s: store.finish_run(s, run_id, status, f"by {worker}", worker=worker)


def check_distinct_workers_race_to_finish(engine: Engine) -> None:
    """The stale w1 and the owner w2 report different outcomes at the same moment, many
    times over: w2's wins every round and w1's never does."""
    for round_ in range(RACES):
        with Session(engine, expire_on_commit=False) as session:
            run_id = _reclaimed_by_second_worker(session, f"race-{round_}")

        stale, owner = _race(
            engine,
            _finish(run_id, W1, RunStatus.failed),
            _finish(run_id, W2, RunStatus.succeeded),
        )
        assert (stale, owner) == (False, True), f"round {round_}"
        with Session(engine, expire_on_commit=False) as session:
            run = store.get_run(session, run_id)
            assert (run.status, run.status_reason) == ("succeeded", f"by {W2}")


def check_stale_heartbeat_keeps_nothing_alive(engine: Engine) -> None:
    """The stale w1 keeps sending heartbeats for a run that w2 now owns: each is refused and
    none refreshes the run, so if w2 dies the run is still reaped."""
    with Session(engine, expire_on_commit=False) as session:
        run_id = _reclaimed_by_second_worker(session, "stale-heartbeat")
        owner_beat = store.get_run(session, run_id).heartbeat_at
        assert not store.heartbeat(session, run_id, W1)
        assert store.get_run(session, run_id).heartbeat_at == owner_beat
        assert store.heartbeat(session, run_id, W2)
        assert store.get_run(session, run_id).heartbeat_at > owner_beat
        assert store.finish_run(session, run_id, RunStatus.succeeded, "done", worker=W2)


def check_cancel_leaves_finished_runs_alone(engine: Engine) -> None:
    """A cancel request for a run that has finished changes nothing (no cancel flag on a
    succeeded run)."""
    with Session(engine, expire_on_commit=False) as session:
        run_id = _queued(session, "finished-then-cancelled")
        assert store.claim_run(session, run_id, W1)
        assert store.finish_run(session, run_id, RunStatus.succeeded, "done", worker=W1)
        run = store.request_cancel(session, run_id)
        assert (run.status, run.status_reason, run.cancel_requested) == ("succeeded", "done", False)


# ----------------------------------------------------------------------------- metric batches


def check_resent_batch_changes_nothing(engine: Engine) -> None:
    """A batch delivered twice (the worker's write went through but its acknowledgement was
    lost) raises nothing and stores each point once; a later batch overlapping stored points
    keeps the stored values and adds only the new steps."""
    with Session(engine, expire_on_commit=False) as session:
        run_id = _queued(session, "resent")
        batch = [("loss", 1, 2.5), ("loss", 2, 2.0), ("acc", 2, 0.25)]
        store.add_metrics(session, run_id, batch)
        store.add_metrics(session, run_id, batch)
        assert store.get_metrics(session, run_id) == {
            "acc": [(2, 0.25)],
            "loss": [(1, 2.5), (2, 2.0)],
        }
        overlapping = [("loss", 2, 9.0), ("loss", 3, 1.5)]
        store.add_metrics(session, run_id, overlapping)
        store.add_metrics(session, run_id, overlapping)
        assert store.get_metrics(session, run_id)["loss"] == [(1, 2.5), (2, 2.0), (3, 1.5)]
        assert store.metric_summary(session, run_id)["loss"] == {
            "count": 3,
            "first_step": 1,
            "last_step": 3,
        }
        assert store.get_run(session, run_id).last_step == 3
        store.add_metrics(session, run_id, batch)  # an old batch arriving late
        assert store.get_run(session, run_id).last_step == 3


def check_concurrent_duplicate_batches(engine: Engine) -> None:
    """Two deliveries of one batch written at the same moment (a redelivered task while the
    first is still writing): both succeed and the points are stored once."""
    with Session(engine, expire_on_commit=False) as session:
        run_id = _queued(session, "twice")
    batch = [("loss", step, 1.0 / step) for step in range(1, 201)]
    _race(engine, *(lambda s: store.add_metrics(s, run_id, batch) for _ in range(2)))
    with Session(engine, expire_on_commit=False) as session:
        assert store.count_metrics(session, run_id) == {"loss": 200}
        assert store.get_metrics(session, run_id)["loss"] == [(s, 1.0 / s) for s in range(1, 201)]


# ----------------------------------------------------------------------------- retry limit


def check_retry_limit_at_its_boundary(session: Session, max_attempts: int) -> None:
    """A run that loses its worker is requeued while attempt < max_attempts and failed on
    the attempt that reaches it: exactly ``max_attempts`` claims, never one more."""
    run_id = _queued(session, f"retry-{max_attempts}")
    for attempt in range(1, max_attempts + 1):
        assert store.claim_run(session, run_id, f"{PREFIX}w{attempt}")
        assert store.get_run(session, run_id).attempt == attempt
        outcome = RunStatus.queued if attempt < max_attempts else RunStatus.failed
        assert store.reap_stale(session, 0.0, max_attempts, worker_prefix=PREFIX) == [
            (run_id, outcome)
        ]
    run = store.get_run(session, run_id)
    assert run.status == "failed"
    assert run.status_reason.endswith(f"after {max_attempts} attempt(s)")
    assert not store.claim_run(session, run_id, PREFIX + "one-more")


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
def test_retry_limit_at_its_boundary(session: Session, max_attempts: int) -> None:
    check_retry_limit_at_its_boundary(session, max_attempts)


def test_a_cancelled_run_is_not_retried(session: Session) -> None:
    """A lost worker whose run was flagged for cancellation: cancelled, not requeued, even
    with attempts left."""
    run_id = _queued(session, "cancel-lost")
    assert store.claim_run(session, run_id, W1)
    store.request_cancel(session, run_id)
    assert store.reap_stale(session, 0.0, max_attempts=5, worker_prefix=PREFIX) == [
        (run_id, RunStatus.cancelled)
    ]


def test_a_zero_timeout_reaps_a_heartbeat_of_this_very_moment(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timeout 0 means "every running run of these workers is lost", even one whose heartbeat
    the database's clock stamped at the same instant (SQLite's clock counts milliseconds)."""
    frozen = store.db_now(session)
    monkeypatch.setattr("service.store.runs.db_now", lambda _session: frozen)
    run_id = _queued(session, "same-moment")
    assert store.claim_run(session, run_id, W1)
    assert store.reap_stale(session, 0.0, max_attempts=3, worker_prefix=PREFIX) == [
        (run_id, RunStatus.queued)
    ]


def test_a_fresh_heartbeat_keeps_the_run(session: Session) -> None:
    """Only runs silent for longer than the timeout are reaped."""
    run_id = _queued(session, "alive")
    assert store.claim_run(session, run_id, W1)
    assert store.heartbeat(session, run_id, W1)
    assert store.reap_stale(session, 3600.0, max_attempts=1, worker_prefix=PREFIX) == []
    assert store.get_run(session, run_id).status == "running"


# ----------------------------------------------------------------------------- on SQLite


@pytest.fixture
def engine(settings: Settings):  # noqa: ANN201
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


def test_stale_worker_cannot_finish(engine: Engine) -> None:
    check_stale_worker_cannot_finish(engine)


def test_distinct_workers_race_to_finish(engine: Engine) -> None:
    check_distinct_workers_race_to_finish(engine)


def test_resent_batch_changes_nothing(engine: Engine) -> None:
    check_resent_batch_changes_nothing(engine)


def test_concurrent_duplicate_batches(engine: Engine) -> None:
    check_concurrent_duplicate_batches(engine)


def test_stale_heartbeat_keeps_nothing_alive(engine: Engine) -> None:
    check_stale_heartbeat_keeps_nothing_alive(engine)


def test_cancel_leaves_finished_runs_alone(engine: Engine) -> None:
    check_cancel_leaves_finished_runs_alone(engine)
