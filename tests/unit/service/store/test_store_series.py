"""The chunked series store: exact round trips across chunk boundaries, idempotent re-sends
(also of points in the middle of a series), token fencing, and removing a lost attempt's points.
Checks run on SQLite here and on PostgreSQL in tests/integration/test_store_pg.py."""

from __future__ import annotations

import math
import random

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.models import MetricChunk, MetricSeries, Run
from service.store.series import CHUNK_POINTS


def new_run(session: Session) -> str:
    run, _ = store.create_run(session, JobSpec())
    return run.id


def set_token(session: Session, run_id: str, token: str | None) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(claim_token=token))
    session.commit()


def worker_batches(points: list, size: int = 500) -> list[list]:
    return [points[i : i + size] for i in range(0, len(points), size)]


def check_round_trip(session: Session) -> None:
    """Values of every kind (tiny, huge, negative, missing) come back exactly, in step order,
    from series longer than several chunks written in worker-sized batches."""
    rng = random.Random(1)
    run_id = new_run(session)
    n = 3 * CHUNK_POINTS + 17
    values = [rng.uniform(-1e300, 1e300) if i % 5 else rng.random() * 1e-300 for i in range(n)]
    values[7] = None
    points = [("loss", s * 3, v) for s, v in enumerate(values)]
    points += [("acc", s, s / 7) for s in range(0, n, 100)]
    for batch in worker_batches(points):
        store.add_metrics(session, run_id, batch)
    got = store.get_metrics(session, run_id)
    assert got["loss"] == [(s * 3, v) for s, v in enumerate(values)]
    assert got["acc"] == [(s, s / 7) for s in range(0, n, 100)]
    summary = store.metric_summary(session, run_id)
    assert summary["loss"] == {"count": n, "first_step": 0, "last_step": 3 * (n - 1)}
    chunks = session.scalar(  # this run's only: the database may hold other tests' runs
        select(func.count())
        .select_from(MetricChunk)
        .join(MetricSeries, MetricSeries.id == MetricChunk.series_id)
        .where(MetricSeries.run_id == run_id)
    )
    assert chunks <= math.ceil(n / CHUNK_POINTS) + 1 + 10  # chunks are filled, not one per batch


def check_resends_change_nothing(session: Session) -> None:
    run_id = new_run(session)
    points = [("k", s, float(s)) for s in range(0, 3000, 2)]
    assert store.add_metrics(session, run_id, points) == len(points)
    before = store.get_metrics(session, run_id)
    changed = [("k", s, -1.0) for s, _ in before["k"][100:1400]]
    assert store.add_metrics(session, run_id, changed) == 0  # same steps, other values
    assert store.add_metrics(session, run_id, points[::-1]) == 0
    assert store.get_metrics(session, run_id) == before
    # A missing step filled in later lands in its place, once.
    assert (
        store.add_metrics(
            session, run_id, [("k", 5, 5.0), ("k", 9, 9.0), ("k", 7, 7.0), ("k", 6, 0.0)]
        )
        == 3
    )
    assert store.add_metrics(session, run_id, [("k", 5, 0.0), ("k", 3001, 1.0)]) == 1
    expected = sorted(before["k"] + [(5, 5.0), (7, 7.0), (9, 9.0), (3001, 1.0)])
    assert store.get_metrics(session, run_id)["k"] == expected
    assert store.get_metrics(session, run_id, step_min=4, step_max=9)["k"] == expected[2:8]
    assert store.count_metrics(session, run_id, step_min=4, step_max=9) == {"k": 6}


def check_fencing(session: Session) -> None:
    run_id = new_run(session)
    set_token(session, run_id, "attempt-2")
    assert store.add_metrics(session, run_id, [("k", 1, 1.0)], token="attempt-1") == 0
    assert store.get_metrics(session, run_id) == {}
    assert store.add_metrics(session, run_id, [("k", 1, 1.0)], token="attempt-2") == 1
    assert store.add_metrics(session, run_id, [("k", 2, 2.0)]) == 1  # no token: not fenced
    assert store.get_metrics(session, run_id) == {"k": [(1, 1.0), (2, 2.0)]}
    assert session.get(Run, run_id).last_step == 2


def check_delete_after(session: Session) -> None:
    """A lost attempt's points after the resume step go; the new attempt writes them again."""
    run_id = new_run(session)
    points = [(k, s, float(s)) for s in range(2500) for k in ("a", "b")]
    for batch in worker_batches(points):
        store.add_metrics(session, run_id, batch)
    versions = store.metric_versions(session, [run_id])
    assert store.delete_metrics_after(session, run_id, 1200) == 2 * 1299
    got = store.get_metrics(session, run_id)
    assert got == {k: [(s, float(s)) for s in range(1201)] for k in ("a", "b")}
    session.expire_all()
    assert session.get(Run, run_id).last_step == 1200
    again = [(k, s, -float(s)) for s in range(1201, 2500) for k in ("a", "b")]
    for batch in worker_batches(again):
        assert store.add_metrics(session, run_id, batch) == len(batch)
    assert store.get_metrics(session, run_id)["a"][1201:] == [
        (s, -float(s)) for s in range(1201, 2500)
    ]
    # Same counts and step ranges as before, other values: the version still changed.
    assert store.metric_versions(session, [run_id]) != versions
    assert store.delete_metrics_after(session, run_id, 5000) == 0
    assert store.delete_metrics_after(session, run_id, -1) == 2 * 2500
    assert store.get_metrics(session, run_id) == {}


def test_round_trip_is_exact(session: Session) -> None:
    check_round_trip(session)


def test_resends_change_nothing(session: Session) -> None:
    check_resends_change_nothing(session)


def test_a_stale_token_writes_nothing(session: Session) -> None:
    check_fencing(session)


def test_delete_after_removes_a_lost_attempts_points(session: Session) -> None:
    check_delete_after(session)


def test_delete_after_keeps_the_point_a_chunk_starts_with(session: Session) -> None:
    """A chunk that starts at the resume step keeps that step's point (only later ones go):
    the chunk of steps 1-4 cut after step 1 holds step 1 alone."""
    run_id = new_run(session)
    store.add_metrics(session, run_id, [("k", s, float(s)) for s in range(1, 5)])
    assert store.delete_metrics_after(session, run_id, 1) == 3
    assert store.get_metrics(session, run_id) == {"k": [(1, 1.0)]}
    session.expire_all()
    assert session.get(Run, run_id).last_step == 1


def test_deleting_a_run_deletes_its_points(session: Session) -> None:
    run_id = new_run(session)
    store.add_metrics(session, run_id, [("k", 1, 1.0)])
    store.claim_run(session, run_id, "w")
    store.finish_run(session, run_id, store.RunStatus.succeeded, "done")
    store.delete_run(session, run_id)
    assert session.scalar(select(func.count()).select_from(MetricChunk)) == 0
