"""Fencing by claim token (issue 12, F1) and resume (F6), with the real trainer subprocess and
a SQLite store: an attempt that lost its run, even to a retry under the same worker name,
changes nothing and stops; the retry resumes from the checkpoint and the stored curve equals
an uninterrupted run's."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from service import store
from service.db import open_session
from service.settings import Settings
from service.store import RunStatus
from tests.executing import LONG_SPEC, create, executing_settings, load
from tests.waiting import wait_until
from workers.execute import execute_run
from workers.ingest import MetricWriter

WORKER = "celery@host"  # both attempts under one name: only the token tells them apart


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return executing_settings(
        tmp_path,
        checkpoint_every=200,
        checkpoint_keep=1,  # the fewest: a retry must still find the one it resumes from
    )


def curve(settings: Settings, run_id: str) -> dict[tuple[str, int], float | None]:
    with open_session(settings) as session:
        series = store.get_metrics(session, run_id)
    return {
        (key, step): value
        for key, points in series.items()
        if key != "steps_per_sec"  # wall-clock
        for step, value in points
    }


def requeue(settings: Settings, run_id: str) -> None:
    """What the reaper does to a run whose worker stalled past the timeout."""
    with open_session(settings) as session:
        assert store.reap_stale(session, 0, max_attempts=3) == [(run_id, RunStatus.queued)]


def test_a_stale_token_changes_nothing_even_under_the_same_worker_name(settings: Settings) -> None:
    run_id = create(settings, LONG_SPEC)
    with open_session(settings) as session:
        old = store.claim_run(session, run_id, WORKER)
        assert old and store.heartbeat(session, run_id, WORKER, token=old)
        assert store.reap_stale(session, 0, max_attempts=3) == [(run_id, RunStatus.queued)]
        new = store.claim_run(session, run_id, WORKER)
        assert new and new != old

        assert not store.heartbeat(session, run_id, WORKER, token=old)
        assert not store.record_resume(session, run_id, old, 5, "stale")
        assert not store.holds_claim(session, run_id, old)
        session.rollback()
        assert not store.finish_run(session, run_id, RunStatus.succeeded, "stale", token=old)
        assert not store.release_run(session, run_id, WORKER, "stale", token=old)
        run = store.get_run(session, run_id)
        assert (run.status, run.claim_token, run.attempt) == ("running", new, 2)
        assert store.heartbeat(session, run_id, WORKER, token=new)
        assert store.finish_run(session, run_id, RunStatus.succeeded, "done", token=new)


def test_a_stale_metric_writer_stores_nothing(settings: Settings) -> None:
    run_id = create(settings, LONG_SPEC)
    with open_session(settings) as session:
        old = store.claim_run(session, run_id, WORKER)
    stored: list[int] = []  # what the writer reports stored (the worker prunes by it)
    stale = MetricWriter(run_id, old, settings, on_stored=stored.append)
    stale.start()
    stale.add(1, {"loss": 1.0})
    wait_until(lambda: curve(settings, run_id) == {("loss", 1): 1.0}, 120, "the first point stored")
    requeue(settings, run_id)
    with open_session(settings) as session:
        assert store.claim_run(session, run_id, WORKER)

    stale.add(2, {"loss": 2.0})
    assert stale.close(deadline_s=10) == 0
    assert stale.claim_lost and curve(settings, run_id) == {("loss", 1): 1.0}
    assert stored == [1]  # a lost attempt's refused write reports nothing stored


def test_a_stalled_attempt_stops_and_the_retry_resumes_to_the_same_curve(
    settings: Settings,
) -> None:
    reference = create(settings, LONG_SPEC)
    assert execute_run(reference, WORKER, settings) == "succeeded"

    run_id = create(settings, LONG_SPEC)
    first = threading.Thread(target=execute_run, args=(run_id, WORKER, settings))
    first.start()
    wait_until(lambda: (load(settings, run_id).last_step or 0) >= 700, 120, "step 700")
    requeue(settings, run_id)  # as if its worker had stalled past the timeout

    assert execute_run(run_id, WORKER, settings) == "succeeded"
    first.join(timeout=60)
    assert not first.is_alive()

    run = load(settings, run_id)
    assert run.attempt == 2 and run.resumed_step is not None and run.resumed_step >= 600
    assert run.status_reason == "finished 3000 steps"  # the retry's outcome, not the stale one's
    expected, got = curve(settings, reference), curve(settings, run_id)
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        assert (value is None and got[key] is None) or math.isclose(
            value, got[key], rel_tol=1e-6, abs_tol=1e-9
        ), key
    assert run.summary["final_test_acc"] == pytest.approx(
        load(settings, reference).summary["final_test_acc"]
    )
