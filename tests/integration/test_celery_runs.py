"""End to end on the real stack: HTTP API → Redis → a real Celery worker (prefork) → the
trainer subprocess → PostgreSQL. Plus the faults: cancel mid-run, a worker SIGKILLed mid-run
(the run is requeued by the API's reaper and finished by another worker, without duplicate
points, and the trainer does not outlive its worker)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from api_runs import TINY, Api

from bncore.spec import JobSpec
from service import store
from service.executor import CeleryExecutor
from service.settings import Settings
from tests.procs import alive, descendants
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_bn_and_plain_runs_succeed_and_metrics_land_in_postgres(api, worker, pg_session) -> None:  # noqa: ANN001
    assert api.get("/readyz").status_code == 200
    ids = {}
    for norm in ("batchnorm", "none"):
        spec = TINY | {"name": f"it-{norm}", "model": {"hidden": [16], "norm": norm}}
        response = api.post("/api/v1/runs", json=spec)
        assert response.status_code == 201, response.text
        ids[norm] = response.json()["id"]

    for norm, run_id in ids.items():
        run = Api(api).finished(run_id)
        assert run["status"] == "succeeded", run
        assert run["worker"].startswith(f"{worker.name}:") and run["attempt"] == 1
        assert run["last_step"] == 30 and run["summary"]["best_test_acc"] > 0.1
        counts = store.metric_summary(pg_session, run_id)
        assert counts["train_loss"]["count"] == 30 and counts["test_acc"]["count"] == 4
        assert ("test_acc_population" in run["summary"]) == (norm == "batchnorm")

    series = api.get(f"/api/v1/runs/{ids['batchnorm']}/metrics", params={"keys": "test_acc"})
    assert series.json()["series"]["test_acc"]["steps"] == [0, 10, 20, 30]

    # A re-delivered task finds the run taken: it neither runs nor changes it.
    api.app.state.executor.submit(ids["none"])
    deadline = time.monotonic() + 30
    while f"run {ids['none']} not executed" not in worker.log():
        assert time.monotonic() < deadline, worker.log()[-3000:]
        time.sleep(0.25)
    again = api.get(f"/api/v1/runs/{ids['none']}").json()
    assert again["attempt"] == 1 and again["status"] == "succeeded"


def test_cancel_stops_a_running_run(api, worker) -> None:  # noqa: ANN001
    spec = TINY | {"name": "it-cancel", "steps": 200_000, "log_every": 50, "eval_every": 10_000}
    run_id = api.post("/api/v1/runs", json=spec).json()["id"]
    Api(api).wait(run_id, lambda r: (r["last_step"] or 0) > 0)
    trainers = [p for p, cmd in descendants(worker.proc.pid).items() if b"bncore.train" in cmd]
    assert len(trainers) == 1

    response = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"]

    run = Api(api).finished(run_id, timeout=30)
    assert (run["status"], run["status_reason"]) == ("cancelled", "cancelled by request")
    assert not alive(trainers[0])


def test_a_worker_killed_mid_run_loses_the_run_to_a_retry_without_duplicates(
    api,  # noqa: ANN001
    worker,  # noqa: ANN001
    start_worker,  # noqa: ANN001
    int_settings: Settings,
    pg_session,  # noqa: ANN001
) -> None:
    # A second worker on its own queue takes the first attempt; the API's reaper resubmits
    # to the session queue, where the long-lived worker finishes the run.
    victim_queue = f"{int_settings.queue}-victim"
    victim = start_worker("victim", queue=victim_queue)
    spec = JobSpec.model_validate(
        TINY | {"name": "it-kill", "steps": 3000, "log_every": 10, "eval_every": 1000}
    )
    run, _ = store.create_run(pg_session, spec)
    sender = CeleryExecutor(int_settings.model_copy(update={"queue": victim_queue}))
    sender.submit(run.id)
    sender.shutdown()

    Api(api).wait(run.id, lambda r: (r["last_step"] or 0) > 0 and r["status"] == "running")
    tree = descendants(victim.proc.pid)
    trainers = [p for p, cmd in tree.items() if b"bncore.train" in cmd]
    assert len(trainers) == 1, tree
    first = api.get(f"/api/v1/runs/{run.id}").json()
    assert first["worker"].startswith(f"{victim.name}:")  # NAME:PID:RANDOM

    os.kill(victim.proc.pid, signal.SIGKILL)  # the main worker process, no warning
    victim.proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in tree):
        assert time.monotonic() < deadline, "a process outlived its killed worker"
        time.sleep(0.1)

    # Heartbeat timeout 6 s, maintenance every 1.5 s: requeued, then run again elsewhere.
    requeued = Api(api).wait(run.id, lambda r: r["attempt"] == 2 or r["status"] != "running", 30)
    assert requeued["status"] != "failed", requeued
    final = Api(api).finished(run.id, timeout=90)
    assert final["status"] == "succeeded", final
    assert final["worker"].startswith(f"{worker.name}:") and final["attempt"] == 2

    series = store.get_metrics(pg_session, run.id)
    duplicates = [
        key for key, points in series.items() if len({s for s, _ in points}) < len(points)
    ]
    assert duplicates == []
    losses = store.get_metrics(pg_session, run.id, keys=["train_loss"])["train_loss"]
    assert [step for step, _ in losses] == list(range(10, 3001, 10))


def test_a_database_outage_mid_run_loses_no_metric_points(
    api,  # noqa: ANN001
    worker,  # noqa: ANN001
    pg_url: str,
    pg_admin_url: str,
    pg_session,  # noqa: ANN001
) -> None:
    """Like a PostgreSQL restart, for this session's database only: refuse new connections
    and drop the open ones for a few seconds (less than the heartbeat timeout) mid-run."""
    import psycopg

    name = pg_url.rsplit("/", 1)[1]
    spec = TINY | {"name": "it-outage", "steps": 4000, "log_every": 1, "eval_every": 1000}
    run_id = api.post("/api/v1/runs", json=spec).json()["id"]
    Api(api).wait(run_id, lambda r: (r["last_step"] or 0) > 0)
    pg_session.close()

    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                [name],
            )
            wait_until(  # the outage lasts until a metric write has hit it
                lambda: f"run {run_id}: writing metrics failed" in worker.log(),
                30,
                "a metric write to fail during the outage",
            )
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    run = Api(api).finished(run_id, timeout=90)
    assert run["status"] == "succeeded", run
    assert run["attempt"] == 1  # the heartbeat gap stayed under the timeout: no retry
    assert f"run {run_id}: writing metrics failed" in worker.log()  # the outage did hit it
    losses = store.get_metrics(pg_session, run_id, keys=["train_loss"])["train_loss"]
    assert [step for step, _ in losses] == list(range(1, 4001))
