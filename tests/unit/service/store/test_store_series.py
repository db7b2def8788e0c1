"""The chunked series store: exact round trips across chunk boundaries, idempotent re-sends
(also of points in the middle of a series), token fencing, chunk summaries, and removing a lost
attempt's points.
Checks run on SQLite here and on PostgreSQL in tests/integration/test_store_pg.py."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.models import MetricChunk, MetricSeries, Run
from service.store.series import CHUNK_POINTS, unpack


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
    versions = store.metric_versions(session, [run_id])
    assert store.add_metrics(session, run_id, points[-3:]) == 0
    assert store.metric_versions(session, [run_id]) == versions  # a re-send changed nothing
    assert store.add_metrics(session, run_id, [("k", 5, 0.0), ("k", 3001, 1.0)]) == 1
    assert store.metric_versions(session, [run_id]) != versions
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
    # Points after the stored ones (on PostgreSQL, appended in the database) are fenced too.
    set_token(session, run_id, "attempt-3")
    assert store.add_metrics(session, run_id, [("k", 3, 3.0)], token="attempt-2") == 0
    assert store.get_metrics(session, run_id) == {"k": [(1, 1.0), (2, 2.0)]}
    session.expire_all()
    assert session.get(Run, run_id).last_step == 2
    assert store.add_metrics(session, run_id, [("k", 3, 3.0)], token="attempt-3") == 1


def check_chunk_summaries(session: Session) -> None:
    """Each chunk's count, step range, finite count and finite min/max/mean describe the
    points it holds, however many batches were merged into it: missing and infinite values
    are not finite, and a chunk can start with no finite value at all."""
    rng = random.Random(2)
    run_id = new_run(session)
    n = 2 * CHUNK_POINTS + 300
    values: list[float | None] = [rng.uniform(-5, 5) for _ in range(n)]
    for i in range(0, n, 97):
        values[i] = None
    values[200], values[1500] = math.inf, -math.inf
    points = [("k", s, v) for s, v in enumerate(values)]
    points += [("late", s, None if s < 400 else s / 3) for s in range(n)]
    for batch in worker_batches(sorted(points, key=lambda p: p[1]), size=300):
        assert store.add_metrics(session, run_id, batch) == len(batch)
    chunks = session.scalars(
        select(MetricChunk)
        .join(MetricSeries, MetricSeries.id == MetricChunk.series_id)
        .where(MetricSeries.run_id == run_id)
    ).all()
    assert sum(chunk.count for chunk in chunks) == 2 * n
    assert len(chunks) < 2 * n / 300  # batches were merged into chunks
    for chunk in chunks:
        steps, stored = unpack(chunk.steps, chunk.values)
        finite = stored[np.isfinite(stored)]
        assert (chunk.count, chunk.first_step, chunk.last_step) == (
            len(steps),
            steps[0],
            steps[-1],
        )
        assert chunk.finite_count == len(finite)
        if len(finite):
            assert (chunk.min_value, chunk.max_value) == (finite.min(), finite.max())
            assert chunk.mean_value == pytest.approx(finite.mean(), rel=1e-12, abs=1e-12)
        else:
            assert chunk.min_value is chunk.max_value is chunk.mean_value is None


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


def test_chunk_summaries_describe_their_points(session: Session) -> None:
    check_chunk_summaries(session)


def test_a_batch_with_new_and_stored_points_stores_the_new_once(session: Session) -> None:
    check_new_and_stored_points(session)


def check_new_and_stored_points(session: Session) -> None:
    """One key's points all new, another's partly stored: both end up stored once (on
    PostgreSQL the first is appended in the database, the second merged)."""
    run_id = new_run(session)
    store.add_metrics(session, run_id, [(k, s, float(s)) for s in range(100) for k in "ab"])
    batch = [("a", s, float(s)) for s in range(100, 150)] + [("b", s, -1.0) for s in range(50, 150)]
    assert store.add_metrics(session, run_id, batch) == 100
    got = store.get_metrics(session, run_id)
    assert got["a"] == [(s, float(s)) for s in range(150)]
    assert got["b"] == [(s, float(s)) for s in range(100)] + [(s, -1.0) for s in range(100, 150)]


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
