"""Runs of 2 replicas through the worker and the embedded executor: SQLite, the real launcher
(torch.distributed.run) and 2 gloo ranks on the CPU. Metrics are stored once, cancel kills
every rank, a crashing rank fails the run naming the rank; runs are routed by size.

The crash uses the trainer's test-only hook BNLAB_TEST_CRASH_RANK (bncore/distributed.py).
BN runs on its eager backend (see tests/unit/bncore/test_train_distributed.py for why).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from service import store
from service.db import open_session
from service.executor import CeleryExecutor, LocalExecutor, submit_run
from service.settings import Settings
from service.vocab import FINISHED_STATUSES, queue_for_replicas, queues_for_capacity
from tests.executing import create, executing_settings, load
from tests.procs import alive, descendants
from tests.waiting import wait_until
from workers.execute import execute_run

WORKER = "test-worker@host"
PAIR = {
    "name": "pair",
    "dataset": "synthetic",
    "synthetic_features": 8,
    "train_size": 256,
    "model": {"hidden": [16], "norm": "batchnorm"},
    "batch_size": 16,
    "steps": 6,
    "eval_every": 3,
    "replicas": 2,
}


@pytest.fixture(autouse=True)
def eager_bn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNCORE_BACKEND", "eager")  # the trainers inherit it


@pytest.fixture
def db_settings(tmp_path: Path) -> Settings:
    return executing_settings(
        tmp_path,
        max_replicas=2,
    )


def trainer_processes() -> list[int]:
    """Live pids running bncore.train below this process: the launcher and its ranks."""
    below = descendants(os.getpid())
    return [pid for pid, cmd in below.items() if b"bncore.train" in cmd and alive(pid)]


def test_runs_are_routed_to_queues_a_worker_can_hold() -> None:
    assert [queue_for_replicas("bnlab", n) for n in (1, 2, 3, 4, 5, 8)] == [
        "bnlab",
        "bnlab.r2",
        "bnlab.r4",
        "bnlab.r4",
        "bnlab.r8",
        "bnlab.r8",
    ]
    assert queues_for_capacity("bnlab", 1) == ["bnlab"]
    assert queues_for_capacity("bnlab", 3) == ["bnlab", "bnlab.r2"]
    assert queues_for_capacity("bnlab", 8) == ["bnlab", "bnlab.r2", "bnlab.r4", "bnlab.r8"]


def test_the_celery_executor_sends_a_run_to_the_queue_of_its_size(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = CeleryExecutor(
        db_settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    )
    sent: list[str] = []
    monkeypatch.setattr(executor._app, "send_task", lambda *a, **k: sent.append(k["queue"]))
    runs = [create(db_settings, PAIR | {"replicas": n, "batch_size": 24}) for n in (1, 2, 3)]
    with open_session(db_settings) as session:
        assert all(submit_run(session, executor, run_id) for run_id in runs)
    assert sent == ["bnlab", "bnlab.r2", "bnlab.r4"]
    executor.shutdown()


def test_a_run_larger_than_the_worker_is_failed_with_the_reason(db_settings: Settings) -> None:
    small = db_settings.model_copy(update={"max_replicas": 1})
    run_id = create(small, PAIR)
    assert execute_run(run_id, WORKER, small) == "failed"
    reason = load(small, run_id).status_reason
    assert "needs 2 replicas" in reason and "at most 1 (max_replicas)" in reason


def test_two_replicas_succeed_through_the_embedded_executor_with_metrics_once(
    db_settings: Settings,
) -> None:
    run_id = create(db_settings, PAIR | {"log_every": 1})
    executor = LocalExecutor(db_settings)
    try:
        executor.submit(run_id)
        wait_until(lambda: load(db_settings, run_id).status in FINISHED_STATUSES, 240, "the end")
    finally:
        executor.shutdown()
    run = load(db_settings, run_id)
    assert run.status == "succeeded", (run.status_reason, run.error)
    assert run.last_step == 6 and run.summary["final_test_acc"] is not None
    with open_session(db_settings) as session:
        counts = store.metric_summary(session, run_id)
    assert counts["train_loss"] == {"count": 6, "first_step": 1, "last_step": 6}
    assert counts["test_acc"] == {"count": 3, "first_step": 0, "last_step": 6}
    assert (Path(db_settings.artifact_dir) / "runs" / run_id / "model.pt").exists()


def run_in_thread(settings: Settings, run_id: str) -> tuple[threading.Thread, dict[str, str]]:
    result: dict[str, str] = {}
    thread = threading.Thread(
        target=lambda: result.update(status=execute_run(run_id, WORKER, settings))
    )
    thread.start()
    return thread, result


def test_cancel_kills_the_launcher_and_every_rank(db_settings: Settings) -> None:
    run_id = create(db_settings, PAIR | {"steps": 200_000, "log_every": 50, "eval_every": 10_000})
    thread, result = run_in_thread(db_settings, run_id)
    pids: list[int] = []
    try:
        wait_until(lambda: (load(db_settings, run_id).last_step or 0) > 0, 240, "training")
        pids = trainer_processes()
        assert len(pids) == 3, pids  # the launcher and two ranks
        with open_session(db_settings) as session:
            store.request_cancel(session, run_id)
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        if thread.is_alive():  # never leave a 200k-step group behind
            for pid in trainer_processes():
                os.kill(pid, 9)
            thread.join()
    assert result["status"] == "cancelled"
    wait_until(lambda: not any(alive(pid) for pid in pids), 30, "every rank gone")


def test_divergence_stops_both_ranks_at_the_same_step(db_settings: Settings) -> None:
    """The ranks judge the replica-averaged losses, so they break out together (a rank left
    behind would hang in its next all-reduce and the run would never end)."""
    spec = PAIR | {
        "steps": 200,
        "log_every": 5,
        "model": {"hidden": [16], "activation": "relu", "norm": "none", "init": "poor"},
        "optimizer": {"lr": 100.0},
    }
    run_id = create(db_settings, spec)
    assert execute_run(run_id, WORKER, db_settings) == "diverged"
    run = load(db_settings, run_id)
    assert run.diverged_step is not None and f"at step {run.diverged_step}" in run.status_reason
    assert not trainer_processes()


def test_a_crashing_rank_fails_the_run_naming_the_rank(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNLAB_TEST_CRASH_RANK", "1:3")
    run_id = create(db_settings, PAIR | {"steps": 50})
    assert execute_run(run_id, WORKER, db_settings) == "failed"
    run = load(db_settings, run_id)
    assert run.status_reason.startswith("rank 1 of 2 failed (launcher exited with code 1)")
    assert "RuntimeError: rank 1 crashed on purpose at step 3" in run.status_reason
    assert "[rank 1]" in run.error
    assert not trainer_processes()
