"""Durable runs against the real services (issue 12): PostgreSQL, Redis, real Celery workers
and real ``bnlab serve`` processes.

* F1: a worker stalled (SIGSTOP of its pool process and trainer) past the heartbeat timeout
  loses its run to a peer with the same name; resumed (SIGCONT) it records nothing, stops
  its trainer, and the stored curve is exactly the retry's.
* F6: a worker killed with SIGKILL mid-run; the retry resumes from the checkpoint and the
  stored curve equals an uninterrupted run's.
* F2: an embedded run whose execution process stalls (SIGSTOP) past the timeout is requeued and
  executed again by the same server, which kills the stalled process (it might never wake).
* F3: a second embedded server on the same database leaves the first one's run alone.
* A database outage longer than the heartbeat timeout reaps no healthy run.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from bncore.spec import JobSpec
from bncore.train import train
from service import store
from service.db import open_session
from service.executor import CeleryExecutor
from service.proc import settings_env, worker_host_pid
from service.vocab import FINISHED_STATUSES

pytest.register_assert_rewrite("conftest_faults")
from conftest_faults import (  # noqa: E402
    Proc,
    app_client,
    fault_settings,
    start_celery_worker,
    start_server,
    wait_until,
)

from tests.procs import celery_worker_command, descendants, spawn  # noqa: E402

pytest_plugins = ["conftest_faults"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LONG: dict[str, Any] = {
    "name": "durable",
    "dataset": "digits",
    "model": {"hidden": [16]},
    "steps": 3000,
    "log_every": 10,
    "eval_every": 500,
    "batch_size": 32,
}


def the_trainer(pid: int) -> tuple[int, int]:
    """(trainer pid, its parent: the pool process executing the run) under worker ``pid``."""
    found = wait_until(
        lambda: [p for p, cmd in descendants(pid).items() if b"bncore.train" in cmd],
        60,
        f"a trainer under pid {pid}",
    )
    assert len(found) == 1
    parent = int(Path(f"/proc/{found[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return found[0], parent


def start_named_worker(
    settings: Any, name: str, log_path: Path, started: list[Proc], *, wait: bool = True
) -> Proc:
    """A real Celery worker under exactly ``name`` (two may share it)."""
    cmd = celery_worker_command(settings.queue, name)
    worker = Proc(log_path.stem, spawn(cmd, settings_env(settings), log_path), log_path)
    started.append(worker)
    if wait:
        wait_until(lambda: " ready." in worker.log(), 90, f"{log_path.stem} to be ready", 0.2)
    return worker


def create(settings: Any, spec: dict) -> str:
    with open_session(settings) as session:
        run_id = store.create_run(session, JobSpec.model_validate(spec))[0].id
    sender = CeleryExecutor(settings)
    sender.submit(run_id)
    sender.shutdown()
    return run_id


def load(settings: Any, run_id: str):  # noqa: ANN201
    with open_session(settings) as session:
        return store.get_run(session, run_id)


def wait_finished(settings: Any, run_id: str, what: str = "the run to finish") -> None:
    wait_until(lambda: load(settings, run_id).status in FINISHED_STATUSES, 240, what)


def stored_curve(settings: Any, run_id: str) -> dict[tuple[str, int], float | None]:
    with open_session(settings) as session:
        series = store.get_metrics(session, run_id)
    return {(k, s): v for k, points in series.items() if k != "steps_per_sec" for s, v in points}


def reference_curve(spec: dict) -> dict[tuple[str, int], float | None]:
    """The same spec trained uninterrupted, in this process (one thread, as the trainer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        events = list(train(JobSpec.model_validate(spec)))
    finally:
        torch.set_num_threads(threads)
    return {
        (k, e["step"]): v
        for e in events
        if e["event"] == "metrics"
        for k, v in e["values"].items()
        if k != "steps_per_sec"
    }


def assert_same_curve(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert (value is None and got[key] is None) or math.isclose(
            value, got[key], rel_tol=1e-5, abs_tol=1e-7
        ), (key, value, got[key])


def test_a_stalled_worker_never_records_over_its_same_named_peer(
    private_redis, fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    broker = private_redis()
    settings = fault_settings(fault_db, broker.url(), tmp_path, checkpoint_every=100)
    name = f"same-{uuid.uuid4().hex[:6]}@{os.uname().nodename}"  # both workers: one name
    first = start_named_worker(settings, name, logs / "first.log", processes)
    run_id = create(settings, LONG)
    trainer, pool = the_trainer(first.proc.pid)
    wait_until(lambda: (load(settings, run_id).last_step or 0) >= 300, 120, "progress")

    os.kill(trainer, signal.SIGSTOP)
    os.kill(pool, signal.SIGSTOP)
    try:
        start_named_worker(settings, name, logs / "second.log", processes, wait=False)
        with app_client(settings):  # its maintenance loop reaps and resubmits the run
            wait_until(
                lambda: (
                    load(settings, run_id).attempt == 2
                    and load(settings, run_id).status == "running"
                ),
                120,
                "the run to be claimed again by the same-named peer",
            )
    finally:
        os.kill(pool, signal.SIGCONT)
        os.kill(trainer, signal.SIGCONT)
    retry_worker = load(settings, run_id).worker
    assert worker_host_pid(retry_worker)[1] != pool  # the peer's process, not the stale one's
    # The stale attempt notices at its next heartbeat and stops its trainer.
    wait_until(lambda: _gone(trainer), 30, "the stale trainer to stop")
    wait_finished(settings, run_id)

    run = load(settings, run_id)
    assert run.status == "succeeded" and run.attempt == 2 and run.worker == retry_worker
    assert f"run {run_id} succeeded" not in first.log()  # the stale one recorded nothing
    assert run.resumed_step is not None and run.resumed_step >= 300 - 100
    assert_same_curve(stored_curve(settings, run_id), reference_curve(LONG))


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_run_killed_mid_way_resumes_to_the_same_curve(
    private_redis, fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    broker = private_redis()
    settings = fault_settings(fault_db, broker.url(), tmp_path, checkpoint_every=100)
    first = start_celery_worker(settings, "killed", logs, processes)
    run_id = create(settings, LONG)
    the_trainer(first.proc.pid)
    wait_until(lambda: (load(settings, run_id).last_step or 0) >= 350, 120, "progress")
    os.killpg(first.proc.pid, signal.SIGKILL)  # the worker, its pool and the trainer

    start_celery_worker(settings, "retry", logs, processes)
    with app_client(settings):
        wait_finished(settings, run_id, "the retry to end")

    run = load(settings, run_id)
    assert run.status == "succeeded" and run.attempt == 2
    assert run.resumed_step is not None and run.resumed_step >= 300
    assert_same_curve(stored_curve(settings, run_id), reference_curve(LONG))


def test_a_second_embedded_server_leaves_the_first_ones_run_alone(
    fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    import httpx2 as httpx

    settings = fault_settings(fault_db, None, tmp_path)
    first = start_server(settings, logs, processes, "first")
    base = first.extra["base"]
    spec = LONG | {"steps": 200_000, "log_every": 50, "eval_every": 100_000}
    run_id = httpx.post(f"{base}/api/v1/runs", json=spec, timeout=10).json()["id"]
    wait_until(lambda: (load(settings, run_id).last_step or 0) > 0, 120, "the run to train")
    before = load(settings, run_id)

    second = start_server(settings, logs, processes, "second")  # same database, same host
    assert httpx.get(f"{second.extra['base']}/healthz", timeout=5).status_code == 200

    after = load(settings, run_id)
    assert (after.status, after.attempt, after.worker) == ("running", 1, before.worker)
    assert "lost" not in second.log() and "previous server" not in second.log()
    httpx.post(f"{base}/api/v1/runs/{run_id}/cancel", timeout=10)
    wait_until(lambda: load(settings, run_id).status == "cancelled", 60, "the cancel")


def test_an_embedded_run_whose_process_stalls_is_executed_again(
    fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    import httpx2 as httpx

    settings = fault_settings(fault_db, None, tmp_path, checkpoint_every=100)
    server = start_server(settings, logs, processes, "stall")
    base = server.extra["base"]
    run_id = httpx.post(f"{base}/api/v1/runs", json=LONG, timeout=10).json()["id"]
    trainer, execution = the_trainer(server.proc.pid)
    wait_until(lambda: (load(settings, run_id).last_step or 0) >= 300, 120, "progress")

    os.kill(trainer, signal.SIGSTOP)
    os.kill(execution, signal.SIGSTOP)
    try:  # the server's own maintenance pass reaps the run and submits it again: the stalled
        # process is killed (it might never wake) and the run executed anew
        wait_until(
            lambda: load(settings, run_id).attempt == 2 and load(settings, run_id).worker,
            120,
            "the run to be executed again",
        )
        wait_until(lambda: _gone(execution) and _gone(trainer), 30, "the stalled ones to go")
    finally:
        for pid in (execution, trainer):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    wait_finished(settings, run_id)

    run = load(settings, run_id)
    assert run.status == "succeeded" and run.attempt == 2, run.status_reason
    assert worker_host_pid(run.worker)[1] == server.proc.pid  # the same server executed it
    assert run.resumed_step is not None and run.resumed_step >= 300 - 100
    assert_same_curve(stored_curve(settings, run_id), reference_curve(LONG))


def test_a_database_outage_longer_than_the_timeout_reaps_no_healthy_run(
    private_redis,
    private_pg,  # noqa: ANN001
    fault_db: str,
    processes: list[Proc],
    logs: Path,
    tmp_path: Path,
) -> None:
    """PostgreSQL down for longer than the heartbeat timeout while a run trains: no heartbeat
    can land meanwhile, so the API's reaper gives workers a grace period once the database is
    back; the healthy run finishes on its first attempt."""
    broker = private_redis()
    # Heartbeats far apart next to the reaper's passes (every timeout / 4): without the grace,
    # the first pass after the outage would find the run stale before its heartbeat lands.
    settings = fault_settings(
        fault_db, broker.url(), tmp_path, heartbeat_interval_s=2.5, heartbeat_timeout_s=6.0
    )
    worker = start_celery_worker(settings, "outage", logs, processes)
    run_id = create(settings, LONG | {"steps": 4000})
    with app_client(settings):
        wait_until(lambda: (load(settings, run_id).last_step or 0) > 0, 120, "the run to train")
        private_pg.stop("fast")
        try:
            wait_until(lambda: "heartbeat failed" in worker.log(), 30, "a failed heartbeat")
            # Twice the heartbeat timeout with the database down. A duration, not a condition:
            # staleness is judged by the database's clock (store.db_now), which a test
            # cannot move, and nothing observable happens while the database is down.
            time.sleep(12)
        finally:
            private_pg.start()
        wait_finished(settings, run_id)
    run = load(settings, run_id)
    assert run.status == "succeeded" and run.attempt == 1, run.status_reason
