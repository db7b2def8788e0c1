"""Faults injected for real (issue 7): private Redis and PostgreSQL servers restarted under a
running system, a ``bnlab serve`` killed with SIGKILL, and races between real processes.

Each test builds its own small stack from conftest_faults.py: a private PostgreSQL cluster
(one per module, migrated once), a private Redis per test, real ``celery worker``
subprocesses and the real app (lifespan and maintenance loop running). Trainers are real
``python -m bncore.train`` processes; where a test needs a run to stay in flight while it
injects a fault, it freezes the trainer with SIGSTOP (and thaws it with SIGCONT), so that the
timing does not depend on how busy the machine is.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from sqlalchemy import select, update

from bncore.spec import JobSpec
from service import store
from service.db import open_session
from service.executor import CeleryExecutor
from service.models import Run, Worker, utcnow
from service.proc import settings_env
from service.vocab import FINISHED_STATUSES

# A sibling module (pytest puts this folder on sys.path), also loaded as a plugin below for its
# fixtures; its asserts are rewritten only if registered before the import.
pytest.register_assert_rewrite("conftest_faults")
from api_runs import TINY, Api  # noqa: E402
from conftest_faults import (  # noqa: E402
    PrivatePostgres,
    Proc,
    app_client,
    fault_settings,
    start_celery_worker,
    start_server,
    wait_until,
)

from tests.procs import alive, descendants  # noqa: E402

pytest_plugins = ["conftest_faults"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# ----------------------------------------------------------------------------- helpers


def trainers(pid: int) -> list[int]:
    return [p for p, cmd in descendants(pid).items() if b"bncore.train" in cmd]


def the_trainer(pid: int, timeout: float = 60) -> int:
    found = wait_until(lambda: trainers(pid), timeout, f"a trainer under pid {pid}")
    assert len(found) == 1, descendants(pid)
    return found[0]


def claims(run_id: str, *workers: Proc) -> int:
    """How many times any of these workers claimed the run (its log says so each time)."""
    return sum(w.log().count(f"run {run_id} claimed by") for w in workers)


def assert_complete(settings: Any, run_id: str, steps: int, log_every: int = 1) -> None:
    """train_loss has every logged step exactly once, and no (key, step) is duplicated."""
    with open_session(settings) as session:
        series = store.get_metrics(session, run_id)
    losses = series["train_loss"]
    duplicates = [
        key for key, points in series.items() if len({s for s, _ in points}) < len(points)
    ]
    assert [s for s, _ in losses] == list(range(log_every, steps + 1, log_every))
    assert duplicates == []


# ----------------------------------------------------------------------------- Redis


@pytest.mark.parametrize("appendonly", [False, True], ids=["no-persistence", "aof"])
def test_redis_restart_loses_no_queued_run_and_runs_none_twice(
    appendonly: bool,
    caplog: pytest.LogCaptureFixture,
    private_redis,  # noqa: ANN001
    fault_db: str,
    processes: list[Proc],
    logs: Path,
    tmp_path: Path,
) -> None:
    """Redis restarted while one run is running and two wait in its queue. Without
    persistence the queue is gone, yet every run (and one submitted during the outage) runs;
    with an append-only file the messages survive and the API's resends after the restart
    are duplicates. Either way each run executes exactly once; /readyz says the broker is
    down meanwhile."""
    import redis as redis_py

    broker = private_redis(appendonly=appendonly)
    # resubmit_after_s is long: what brings the lost runs back is noticing the restart.
    settings = fault_settings(fault_db, broker.url(), tmp_path, resubmit_after_s=3600)
    worker = start_celery_worker(settings, "redis", logs, processes)

    with app_client(settings) as client:
        api = Api(client)
        assert api.get("/readyz").status_code == 200
        running = api.submit(name="redis-running", steps=200, eval_every=100)
        api.wait(running, lambda r: r["status"] == "running" and (r["last_step"] or 0) > 0)
        trainer = the_trainer(worker.proc.pid)
        os.kill(trainer, signal.SIGSTOP)  # keep it in flight across the restart
        waiting = [api.submit(name=f"redis-queued-{i}") for i in range(2)]
        queue = redis_py.Redis.from_url(broker.url())
        assert queue.llen(settings.queue) == 2  # their messages are only in Redis...
        queue.close()

        broker.stop()  # ...which forgets them unless it has an append-only file
        ready = api.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.headers["content-type"].startswith("application/problem+json")
        assert "broker" in ready.json()["detail"] and "database" not in ready.json()["detail"]
        during = api.submit(name="redis-during-outage")
        assert api.run(during)["status_reason"] == store.SUBMIT_FAILED
        wait_until(  # the outage lasts until the worker has seen it (asserted below)
            lambda: "Connection to broker lost" in worker.log(), 30, "the worker to lose Redis"
        )

        broker.start()  # same port; a new run id
        wait_until(  # before the worker can take them: the resends are then deterministic
            lambda: "resending 2 queued run(s): the broker restarted" in caplog.text,
            30,
            "the API to resend the waiting runs",
        )
        os.kill(trainer, signal.SIGCONT)
        wait_until(lambda: api.get("/readyz").status_code == 200, 30, "/readyz to recover")
        outcomes = {run_id: api.finished(run_id) for run_id in [running, *waiting, during]}

    assert "Connection to broker lost" in worker.log()  # the worker did see it go

    # The API resent the waiting runs when it saw the new Redis: with the AOF each of them
    # got there twice, and the second delivery found the run taken.
    def duplicates() -> int:
        return sum(f"run {r} not executed" in worker.log() for r in waiting)

    expected = 2 if appendonly else 0
    wait_until(lambda: duplicates() >= expected, 30, "the worker to drop the duplicates")
    queue = redis_py.Redis.from_url(broker.url())
    # Tasks are acknowledged when they end (acks_late): once the queue and kombu's hash of
    # unacknowledged messages are both empty, every message taken has been handled.
    wait_until(
        lambda: queue.llen(settings.queue) == 0 and queue.hlen("unacked") == 0,
        30,
        "the queue to drain and every message taken to be handled",
    )
    queue.close()
    assert duplicates() == expected, worker.log()[-3000:]
    for run_id, run in outcomes.items():
        assert run["status"] == "succeeded" and run["attempt"] == 1, run
        assert claims(run_id, worker) == 1, worker.log()[-3000:]
    assert_complete(settings, running, 200)
    for run_id in [*waiting, during]:
        assert_complete(settings, run_id, 30)


# ----------------------------------------------------------------------------- PostgreSQL


def test_postgres_restart_mid_run_loses_no_point_and_the_api_answers_503(
    private_redis,
    private_pg: PrivatePostgres,
    fault_db: str,
    processes: list[Proc],
    logs: Path,
    tmp_path: Path,
) -> None:
    """The whole PostgreSQL server stopped for a few seconds while a run writes metrics:
    the worker keeps its points and retries, the run completes on its first attempt with
    every step; the API answers 503 problem+json (no traceback) while the server is down."""
    broker = private_redis()
    settings = fault_settings(fault_db, broker.url(), tmp_path, heartbeat_timeout_s=20.0)
    worker = start_celery_worker(settings, "pg", logs, processes)
    steps = 600

    with app_client(settings) as client:
        api = Api(client)
        run_id = api.submit(name="pg-restart", steps=steps, eval_every=200)
        api.wait(run_id, lambda r: r["status"] == "running" and (r["last_step"] or 0) > 0)
        trainer = the_trainer(worker.proc.pid)
        os.kill(trainer, signal.SIGSTOP)
        private_pg.stop("fast")  # every connection dropped, new ones refused
        os.kill(trainer, signal.SIGCONT)  # it trains on, and its points have nowhere to go
        try:
            for path in (f"/api/v1/runs/{run_id}", "/api/v1/runs", "/api/v1/workers"):
                response = api.get(path)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                problem = response.json()
                assert problem["status"] == 503 and "Traceback" not in response.text
                assert response.headers.get("retry-after")
            refused = api.post("/api/v1/runs", json=TINY | {"name": "pg-down"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            ready = api.get("/readyz")
            assert ready.status_code == 503 and "database" in ready.json()["detail"]
            wait_until(  # a retry failed too: the points stayed buffered across it
                lambda: worker.log().count("writing metrics failed") >= 2,
                20,
                "a failed metric write and a failed retry",
            )
        finally:
            private_pg.start()
        run = api.finished(run_id)
        assert api.get("/readyz").status_code == 200

    assert run["status"] == "succeeded" and run["attempt"] == 1, run
    assert run["last_step"] == steps
    assert claims(run_id, worker) == 1
    assert_complete(settings, run_id, steps)
    with open_session(settings) as session:  # the refused POST left nothing behind
        assert store.list_runs(session, name="pg-down")[0] == []


# ----------------------------------------------------------------------------- API restart


def test_embedded_server_killed_mid_run_recovers_the_run_on_start(
    processes: list[Proc], logs: Path, tmp_path: Path, migrated_sqlite: Path
) -> None:
    """``bnlab serve`` (embedded, SQLite) killed with SIGKILL while a run trains: its
    executor child and the trainer die with it; the next start requeues the run and finishes
    it (attempt 2, every point once). Killed again on the last attempt, the run is failed
    with a reason on the next start, never left running."""
    import shutil

    db_path = tmp_path / "bnlab.db"
    shutil.copyfile(migrated_sqlite, db_path)
    settings = fault_settings(f"sqlite:///{db_path}", None, tmp_path, max_attempts=2)
    steps = 300

    def serve(label: str) -> tuple[Proc, Api]:
        server = start_server(settings, logs, processes, label)
        return server, Api(httpx.Client(base_url=str(server.extra["base"]), timeout=30))

    def kill_mid_run(server: Proc, api: Api, run_id: str, attempt: int) -> None:
        api.wait(run_id, lambda r: r["attempt"] == attempt and (r["last_step"] or 0) > 0)
        trainer = the_trainer(server.proc.pid)
        os.kill(trainer, signal.SIGSTOP)  # it cannot finish before the kill
        children = descendants(server.proc.pid)
        assert any(b"workers.execute" in cmd for cmd in children.values()), children
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        wait_until(
            lambda: not any(alive(pid) for pid in children), 15, "the server's children to die"
        )
        with open_session(settings) as session:  # what a crash leaves behind
            assert store.get_run(session, run_id).status == "running"

    first, api = serve("first")
    run_id = api.submit(name="serve-killed", steps=steps, eval_every=100)
    kill_mid_run(first, api, run_id, attempt=1)

    second, api = serve("second")
    run = api.finished(run_id)
    assert run["status"] == "succeeded" and run["attempt"] == 2, run
    assert "left running by a previous" in second.log()
    assert_complete(settings, run_id, steps)

    doomed = api.submit(name="serve-killed-twice", steps=steps, eval_every=100)
    kill_mid_run(second, api, doomed, attempt=1)
    third, api = serve("third")
    kill_mid_run(third, api, doomed, attempt=2)
    _, api = serve("fourth")
    run = api.run(doomed)
    assert run["status"] == "failed", run
    assert "lost" in run["status_reason"] and "after 2 attempt(s)" in run["status_reason"]


# ----------------------------------------------------------------------------- races


def _race(*fns: Callable[[], Any]) -> list[Any]:
    """Run the callables at once (a barrier), each in its own thread; their results."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def go(i: int, fn: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[i] = fn()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i, fn)) for i, fn in enumerate(fns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_racing_transitions_have_exactly_one_outcome(fault_db: str, tmp_path: Path) -> None:
    """On real PostgreSQL connections, many times over: a worker recording success races
    the same worker's cancel path and the reaper; two claims race; a cancel races a claim.
    Exactly one transition wins each time, and a cancel is never lost."""
    settings = fault_settings(fault_db, None, tmp_path)
    spec = JobSpec.model_validate(TINY | {"name": "race"})

    def session_call(fn: Callable[..., Any], *args: Any, **kw: Any) -> Callable[[], Any]:
        def call() -> Any:
            with open_session(settings) as session:
                return fn(session, *args, **kw)

        return call

    with open_session(settings) as session:
        for _ in range(25):
            run, _ = store.create_run(session, spec)
            assert store.claim_run(session, run.id, "w")
            session.execute(  # its heartbeat is stale: the reaper may take it too
                update(Run)
                .where(Run.id == run.id)
                .values(heartbeat_at=utcnow() - timedelta(seconds=60))
            )
            session.commit()
            won = _race(
                session_call(
                    store.finish_run, run.id, store.RunStatus.succeeded, "done", worker="w"
                ),
                session_call(
                    store.finish_run, run.id, store.RunStatus.cancelled, "cancel", worker="w"
                ),
                session_call(store.reap_stale, 30, 2),
            )
            finishers = [won[0], won[1], bool(won[2])]
            assert sum(finishers) == 1, won
            final = store.get_run(session, run.id)
            expected = ["succeeded", "cancelled", "queued"][finishers.index(True)]
            assert final.status == expected

            run, _ = store.create_run(session, spec)
            tokens = _race(*(session_call(store.claim_run, run.id, f"w{i}") for i in range(3)))
            claimed = [token is not None for token in tokens]
            assert sum(claimed) == 1, tokens
            final = store.get_run(session, run.id)
            assert final.attempt == 1 and final.worker == f"w{claimed.index(True)}"
            assert final.claim_token == tokens[claimed.index(True)]

            run, _ = store.create_run(session, spec)
            claim, cancelled = _race(
                session_call(store.claim_run, run.id, "w"),
                session_call(store.request_cancel, run.id),
            )
            final = store.get_run(session, run.id)
            if claim:  # it started first: the cancel must be waiting for the worker
                assert final.status == "running" and final.cancel_requested
            else:
                assert final.status == "cancelled" and final.attempt == 0


def test_cancel_racing_completion_and_two_workers_racing_for_one_run(
    private_redis, fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    """Real processes: two ``python -m workers.execute`` started together on one run (one
    trains, the other finds it taken), and a cancel sent as the run finishes: one outcome,
    recorded once, consistent with its metrics."""
    import subprocess
    import sys

    broker = private_redis()
    settings = fault_settings(fault_db, broker.url(), tmp_path)
    worker = start_celery_worker(settings, "race", logs, processes)

    with open_session(settings) as session:
        run, _ = store.create_run(session, JobSpec.model_validate(TINY | {"name": "two"}))
    env = settings_env(settings)
    racers = []
    for i in range(2):
        log_path = logs / f"execute-{i}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.execute", run.id, "--worker", f"racer-{i}"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        racers.append(Proc(f"racer-{i}", proc, log_path))
        processes.append(racers[-1])
    for racer in racers:
        assert racer.proc.wait(120) == 0, racer.log()
    assert claims(run.id, *racers) == 1, [r.log() for r in racers]
    assert sum(f"run {run.id} not executed by" in r.log() for r in racers) == 1
    with open_session(settings) as session:
        final = store.get_run(session, run.id)
    assert final.status == "succeeded" and final.attempt == 1
    assert_complete(settings, run.id, 30)

    with app_client(settings) as client:
        api = Api(client)
        steps = 200
        run_id = api.submit(name="cancel-vs-end", steps=steps, eval_every=100)
        # Close to the end (points land every 0.5 s, so the trainer is further on): the
        # worker's end-of-run path and its cancel path (the next heartbeat) race.
        api.wait(run_id, lambda r: (r["last_step"] or 0) >= steps - 60)
        response = api.post(f"/api/v1/runs/{run_id}/cancel")
        assert response.status_code in (202, 409), response.text  # 409: it had just finished
        run = api.finished(run_id)
    outcome = re.findall(rf"run {run_id} (succeeded|cancelled|failed) on", worker.log())
    assert outcome == [run["status"]], (outcome, run)
    if run["status"] == "succeeded":  # completion won (the cancel came too late, or was lost)
        assert run["status_reason"] == f"finished {steps} steps"
        assert run["cancel_requested"] == (response.status_code == 202)
        assert_complete(settings, run_id, steps)
    else:
        assert response.status_code == 202
        assert run["status"] == "cancelled" and run["status_reason"] == "cancelled by request"
        assert not trainers(worker.proc.pid)


def test_a_task_redelivered_after_the_visibility_timeout_does_not_run_twice(
    private_redis, fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    """A visibility timeout far shorter than the run: Redis hands the unacknowledged message
    of the running task to a second worker, whose claim finds the run taken."""
    import redis as redis_py

    broker = private_redis()
    settings = fault_settings(fault_db, broker.url(), tmp_path, visibility_timeout_s=1.0)
    first = start_celery_worker(settings, "holder", logs, processes)
    with open_session(settings) as session:
        run, _ = store.create_run(
            session, JobSpec.model_validate(TINY | {"name": "redelivered", "steps": 200})
        )
    sender = CeleryExecutor(settings)
    sender.submit(run.id)
    sender.shutdown()

    trainer = the_trainer(first.proc.pid)
    os.kill(trainer, signal.SIGSTOP)  # hold the run past the visibility timeout
    queue = redis_py.Redis.from_url(broker.url())
    wait_until(  # kombu restores a message unacknowledged since before now - the timeout
        lambda: queue.zrangebyscore(
            "unacked_index", 0, time.time() - settings.visibility_timeout_s
        ),
        30,
        "the running task's message to be unacknowledged past the visibility timeout",
    )
    queue.close()
    # A worker starting up restores messages unacknowledged for longer than the timeout.
    second = start_celery_worker(settings, "second", logs, processes)
    wait_until(
        lambda: f"run {run.id} not executed by {second.name}" in second.log(),
        60,
        "the redelivered task to reach the second worker",
    )
    os.kill(trainer, signal.SIGCONT)
    with open_session(settings) as session:
        wait_until(
            lambda: store.get_run(session, run.id).status in FINISHED_STATUSES,
            120,
            "the run to finish",
        )
        final = store.get_run(session, run.id)
    assert (
        final.status == "succeeded"
        and final.attempt == 1
        and final.worker.startswith(f"{first.name}:")
    )
    assert claims(run.id, first, second) == 1
    assert_complete(settings, run.id, 200)


# ----------------------------------------------------------------------------- workers


def test_an_idle_worker_is_listed_and_keeps_its_heartbeat(
    private_redis, fault_db: str, processes: list[Proc], logs: Path, tmp_path: Path
) -> None:
    """A Celery worker that has run nothing appears in GET /workers once ready, with its
    device (detected without torch), and its heartbeat moves on while it idles."""
    broker = private_redis()
    settings = fault_settings(fault_db, broker.url(), tmp_path)
    worker = start_celery_worker(settings, "idle", logs, processes)

    with app_client(settings) as client:

        def listed() -> dict | None:
            found = client.get("/api/v1/workers").json()["workers"]
            # The worker's own process, named NAME:PID:RANDOM (unique per process).
            return next((w for w in found if w["name"].startswith(f"{worker.name}:")), None)

        row = wait_until(listed, 10, "the idle worker in /workers")
        assert row["alive"] and row["current_run_id"] is None
        assert row["device"] == "cpu" or row["device"].startswith("cuda")
        later = wait_until(
            lambda: (r := listed()) and r["last_heartbeat"] > row["last_heartbeat"] and r,
            10,
            "a newer worker heartbeat",
        )
        assert later["alive"]
    with open_session(settings) as session:
        names = session.scalars(select(Worker.name)).all()
        assert any(name.startswith(f"{worker.name}:") for name in names)
