"""workers.execute against the real trainer subprocess and a SQLite store (no services).

Each test spawns ``python -m bncore.train`` once or twice (a few seconds each, mostly imports),
so the specs are tiny.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from service import store
from service.db import engine_for, open_session
from service.settings import Settings
from tests.executing import create, executing_settings, load
from tests.waiting import wait_until
from workers.execute import execute_run
from workers.ingest import HELD_CONNECTIONS, HELD_WRITERS, MetricWriter

WORKER = "test-worker@host"
TINY = {
    "name": "tiny",
    "dataset": "digits",
    "model": {"hidden": [16]},
    "steps": 30,
    "eval_every": 10,
    "batch_size": 32,
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return executing_settings(tmp_path)


def trainer_children() -> list[int]:
    """Pids of this process's ``bncore.train`` children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"bncore.train" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_success_stores_metrics_and_a_second_delivery_does_nothing(settings: Settings) -> None:
    run_id = create(settings, TINY)

    assert execute_run(run_id, WORKER, settings) == "succeeded"

    run = load(settings, run_id)
    assert run.status == "succeeded"
    assert run.worker == WORKER and run.attempt == 1
    assert run.last_step == 30 and run.device == "cpu" and run.torch_version
    assert run.summary["best_test_acc"] > 0.1 and run.wall_time > 0
    with open_session(settings) as session:
        counts = store.metric_summary(session, run_id)
    assert counts["train_loss"] == {"count": 30, "first_step": 1, "last_step": 30}
    assert counts["test_acc"] == {"count": 4, "first_step": 0, "last_step": 30}

    # A re-delivered task: the claim fails and nothing runs or changes.
    assert execute_run(run_id, "another@host", settings) == "succeeded"
    again = load(settings, run_id)
    assert (again.worker, again.attempt, again.finished_at) == (WORKER, 1, run.finished_at)


def test_divergence_is_recorded_with_step_and_reason(settings: Settings) -> None:
    spec = TINY | {
        "model": {"hidden": [16], "activation": "relu", "norm": "none", "init": "poor"},
        "optimizer": {"lr": 100.0},
    }
    run_id = create(settings, spec)

    assert execute_run(run_id, WORKER, settings) == "diverged"

    run = load(settings, run_id)
    assert run.diverged_step is not None and 1 <= run.diverged_step <= 30
    assert f"at step {run.diverged_step}" in run.status_reason
    assert "loss" in run.status_reason


def test_trainer_crash_fails_with_exit_code_and_stderr(settings: Settings) -> None:
    run_id = create(settings, TINY | {"dataset": "npz", "data_path": "missing.npz"})

    assert execute_run(run_id, WORKER, settings) == "failed"

    run = load(settings, run_id)
    assert "exited with code 2 without an end event" in run.status_reason
    assert "invalid job" in run.status_reason  # the last stderr line, on one line
    assert "\n" not in run.status_reason
    assert "last lines of stderr" in run.error and "invalid job: data_path" in run.error
    assert run.finished_at is not None


def test_cancel_stops_the_trainer_and_its_process_group(settings: Settings) -> None:
    run_id = create(settings, TINY | {"steps": 200_000, "log_every": 50, "eval_every": 10_000})
    result: dict[str, str] = {}
    thread = threading.Thread(
        target=lambda: result.update(status=execute_run(run_id, WORKER, settings))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not (load(settings, run_id).last_step or 0) > 0:  # training, not just importing
            assert time.monotonic() < deadline, "the trainer never reported a step"
            time.sleep(0.2)
        pids = trainer_children()
        assert len(pids) == 1

        with open_session(settings) as session:
            store.request_cancel(session, run_id)
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        if thread.is_alive():  # do not leave a 200k-step trainer behind on failure
            for pid in trainer_children():
                os.kill(pid, 9)
            thread.join()

    assert result["status"] == "cancelled"
    run = load(settings, run_id)
    assert (run.status, run.status_reason) == ("cancelled", "cancelled by request")
    with pytest.raises(ProcessLookupError):
        os.killpg(pids[0], 0)  # the whole group is gone


def test_metric_writer_keeps_points_through_a_database_outage(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = create(settings, TINY)
    write = store.add_metrics
    outage = {"failures_left": 3}

    def flaky(session, run, points, **fence):  # noqa: ANN001, ANN003
        if outage["failures_left"]:
            outage["failures_left"] -= 1
            raise OperationalError("INSERT", {}, ConnectionError("server closed the connection"))
        return write(session, run, points, **fence)

    monkeypatch.setattr(store, "add_metrics", flaky)
    with open_session(settings) as session:
        token = store.claim_run(session, run_id, WORKER)
    assert token is not None
    writer = MetricWriter(run_id, token, settings)
    writer.start()
    for step in range(1, 1201):
        writer.add(step, {"loss": 1.0 / step, "nan_loss": None})
    assert writer.close(deadline_s=30) == 0

    assert outage["failures_left"] == 0
    with open_session(settings) as session:
        counts = store.metric_summary(session, run_id)
        assert store.get_run(session, run_id).last_step == 1200
    assert (
        counts["loss"] == counts["nan_loss"] == {"count": 1200, "first_step": 1, "last_step": 1200}
    )


def test_metric_writer_keeps_its_connection_only_while_busy(settings: Settings) -> None:
    """Flush after flush a writer keeps one pooled connection; once the next flush is a while
    off (or after a failed write) it gives it back, so idle runs hold none."""
    run_id = create(settings, TINY)
    with open_session(settings) as session:
        token = store.claim_run(session, run_id, WORKER)
    assert token is not None
    pool = engine_for(settings.database_url).pool
    idle = pool.checkedout()
    writer = MetricWriter(run_id, token, settings)
    writer.write(None, [("loss", step, 1.0) for step in range(1, 501)])
    assert pool.checkedout() == idle + 1
    writer.start()
    writer.add(501, {"loss": 0.5})
    wait_until(lambda: writer.written == 501, 10, "the timed flush")
    wait_until(lambda: pool.checkedout() == idle, 10, "the idle writer's connection back")
    assert writer.close(deadline_s=10) == 0
    with open_session(settings) as session:
        assert store.metric_summary(session, run_id)["loss"]["count"] == 501


def test_only_a_few_busy_writers_of_a_process_keep_a_connection(settings: Settings) -> None:
    """Writers take HELD_CONNECTIONS slots to keep a connection between flushes; once they
    are all taken the next writer gives its connection back after each flush, until a slot
    is free again."""
    slots = HELD_WRITERS
    writers = [MetricWriter(f"run-{i}", "token", settings) for i in range(slots + 1)]
    try:
        assert [writer._may_hold() for writer in writers] == [True] * slots + [False]
        writers[0]._release_connection()
        assert writers[-1]._may_hold()
    finally:
        for writer in writers:
            writer._release_connection()
    assert all(HELD_CONNECTIONS.acquire(blocking=False) for _ in range(slots))
    for _ in range(slots):
        HELD_CONNECTIONS.release()
