"""The run state machine (service/store/runs.py) on SQLite: each transition, its guard, and
the rule that every status write goes through the one ``_transition``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.store import RunStatus

STORE_DIR = Path(__file__).resolve().parents[4] / "service" / "store"


def queued(session: Session, name: str = "r") -> str:
    run, created = store.create_run(session, JobSpec(name=name))
    assert created and run.status == RunStatus.queued and run.status_reason == store.WAITING
    return run.id


def test_only_transition_writes_the_status() -> None:
    """Every ``.values(status=…)`` in the store is inside ``_transition``."""
    writers = []
    for path in STORE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                is_values = (
                    isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "values"
                )
                if is_values and any(kw.arg == "status" for kw in node.keywords):
                    writers.append(f"{path.name}:{func.name}")
    assert writers == ["runs.py:_transition"]


def test_claim_once_then_finish_by_the_owner_only(session: Session) -> None:
    run_id = queued(session)
    assert store.claim_run(session, run_id, "w1")
    assert not store.claim_run(session, run_id, "w2")  # a re-delivered task backs off
    run = store.get_run(session, run_id)
    assert (run.status, run.worker, run.attempt) == ("running", "w1", 1)

    assert not store.finish_run(session, run_id, RunStatus.succeeded, "x", worker="w2")
    assert store.finish_run(session, run_id, RunStatus.succeeded, "done", worker="w1", last_step=9)
    assert not store.finish_run(session, run_id, RunStatus.failed, "late")  # one outcome
    run = store.get_run(session, run_id)
    assert (run.status, run.status_reason, run.last_step) == ("succeeded", "done", 9)
    assert run.finished_at is not None


def test_cancel_queued_at_once_and_running_by_flag(session: Session) -> None:
    first = queued(session)
    assert store.request_cancel(session, first).status == "cancelled"
    assert not store.claim_run(session, first, "w1")

    second = queued(session)
    assert store.claim_run(session, second, "w1")
    run = store.request_cancel(session, second)
    assert run.status == "running" and run.cancel_requested
    assert not store.heartbeat(session, second, "w1")  # the worker is told to stop


def test_release_requeues_without_spending_an_attempt(session: Session) -> None:
    run_id = queued(session)
    assert store.claim_run(session, run_id, "w1")
    assert not store.release_run(session, run_id, "w2", "not mine")
    assert store.release_run(session, run_id, "w1", "worker shutting down")
    run = store.get_run(session, run_id)
    assert (run.status, run.worker, run.attempt) == ("queued", None, 0)


def test_reap_requeues_then_fails(session: Session) -> None:
    run_id = queued(session)
    assert store.claim_run(session, run_id, "w1")
    assert store.reap_stale(session, 0.0, max_attempts=2) == [(run_id, RunStatus.queued)]
    assert not store.heartbeat(session, run_id, "w1")  # the lost worker may not come back
    assert store.claim_run(session, run_id, "w2")
    assert store.reap_stale(session, 0.0, max_attempts=2) == [(run_id, RunStatus.failed)]
    run = store.get_run(session, run_id)
    assert run.status == "failed" and "after 2 attempt(s)" in run.status_reason
    assert store.reap_stale(session, 3600.0, max_attempts=2) == []


@pytest.mark.parametrize(
    "max_attempts, outcome", [(3, RunStatus.queued), (1, RunStatus.failed)], ids=str
)
def test_a_reaped_attempts_token_writes_nothing_more(
    session: Session, max_attempts: int, outcome: RunStatus
) -> None:
    """The reaper clears the claim token: the lost attempt's late flush lands neither in a
    requeued run (before anyone claims it again) nor in a run the reaper failed."""
    run_id = queued(session)
    token = store.claim_run(session, run_id, "w1")
    assert token and store.add_metrics(session, run_id, [("loss", 1, 1.0)], token=token) == 1
    assert store.reap_stale(session, 0.0, max_attempts=max_attempts) == [(run_id, outcome)]
    assert store.add_metrics(session, run_id, [("loss", 2, 0.5)], token=token) == 0
    assert not store.holds_claim(session, run_id, token)
    session.rollback()
    assert store.get_metrics(session, run_id) == {"loss": [(1, 1.0)]}
    run = store.get_run(session, run_id)
    assert (run.status, run.claim_token, run.last_step) == (outcome, None, 1)


def test_resume_drops_the_lost_attempts_points_after_its_step(session: Session) -> None:
    """The retry resumes from its checkpoint at step 5: the lost attempt's points after it go,
    so the stored curve is the retry's alone; those up to step 5 stay."""
    run_id = queued(session)
    lost = store.claim_run(session, run_id, "w1")
    assert lost and store.add_metrics(session, run_id, [("loss", s, 1.0) for s in range(1, 9)])
    assert store.reap_stale(session, 0.0, max_attempts=3) == [(run_id, RunStatus.queued)]
    retry = store.claim_run(session, run_id, "w2")
    assert retry and store.record_resume(session, run_id, retry, 5, "resumed from step 5")
    assert store.get_metrics(session, run_id) == {"loss": [(s, 1.0) for s in range(1, 6)]}
    run = store.get_run(session, run_id)
    assert (run.resumed_step, run.last_step, run.status_reason) == (5, 5, "resumed from step 5")


def test_queued_reason_changes_only_while_queued(session: Session) -> None:
    run_id = queued(session)
    assert store.set_queued_reason(session, run_id, store.SUBMIT_FAILED)
    assert store.submit_failed_run_ids(session) == [run_id]
    assert not store.set_queued_reason(session, run_id, "x", only_if_reason="other")
    assert store.set_queued_reason(
        session, run_id, store.WAITING, only_if_reason=store.SUBMIT_FAILED
    )
    assert store.claim_run(session, run_id, "w1")
    assert not store.set_queued_reason(session, run_id, "too late")
    assert store.get_run(session, run_id).status == "running"


def test_fail_queued_and_delete_only_finished(session: Session) -> None:
    run_id = queued(session)
    with pytest.raises(store.Conflict, match="cancel it"):
        store.delete_run(session, run_id)
    assert store.fail_queued(session, run_id, "broker refused")
    store.delete_run(session, run_id)
    assert store.get_runs(session, []) == []
    with pytest.raises(store.NotFound, match=run_id):
        store.get_run(session, run_id)
