"""service.executor: settings reaching a child, the Celery client failing fast without a broker,
and the embedded executor's recovery, shutdown and crash handling (SQLite, real subprocesses)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import store
from service.db import open_session
from service.executor import CeleryExecutor, LocalExecutor, make_executor
from service.proc import embedded_worker_name, settings_env
from service.settings import Settings
from tests.executing import create, executing_settings, load

LONG = {
    "name": "long",
    "dataset": "digits",
    "model": {"hidden": [16]},
    "steps": 200_000,
    "log_every": 50,
    "eval_every": 10_000,
    "batch_size": 32,
}


@pytest.fixture
def db_settings(tmp_path: Path) -> Settings:
    return executing_settings(tmp_path)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # dead, waiting to be reaped by its (dead) parent's reaper
            return True
        time.sleep(0.1)
    return False


def wait_training(settings: Settings, run_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (load(settings, run_id).last_step or 0) == 0:
        assert time.monotonic() < deadline, "the run never reported a training step"
        time.sleep(0.2)


def test_settings_env_reproduces_the_settings_in_a_child(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        database_url="sqlite:////x/y.db",
        heartbeat_interval_s=0.3,
        api_key_hashes=["ab", "cd"],
        auth_reads=True,
        queue="q-1",
    )
    code = (
        "from service.settings import Settings; s = Settings(_env_file=None); "
        "print(s.model_dump_json())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert Settings.model_validate_json(out) == settings


def test_make_executor_picks_by_broker_url(tmp_path: Path) -> None:
    embedded = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'x.db'}")
    local = make_executor(embedded)
    assert isinstance(local, LocalExecutor) and local.broker_ok()
    local.shutdown()
    remote = make_executor(embedded.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}))
    assert isinstance(remote, CeleryExecutor)


def test_celery_executor_fails_fast_without_a_broker() -> None:
    executor = CeleryExecutor(Settings(_env_file=None, broker_url="redis://127.0.0.1:1/0"))
    started = time.monotonic()
    assert executor.broker_ok() is False
    with pytest.raises(Exception):  # noqa: B017 (kombu's OperationalError or redis' ConnectionError)
        executor.submit("00000000-0000-0000-0000-000000000000")
    assert time.monotonic() - started < 15
    executor.shutdown()


def test_start_requeues_this_hosts_lost_runs_and_submits_queued(db_settings: Settings) -> None:
    """Runs of a dead embedded server on this host are requeued at once; those of a live one
    (a second server on the same database) and of other hosts are left alone (F3)."""
    mine, live, other, waiting = (create(db_settings, LONG) for _ in range(4))
    dead_pid = subprocess.Popen(["true"])  # noqa: S607
    dead_pid.wait()
    host = embedded_worker_name()
    with open_session(db_settings) as session:
        assert store.claim_run(session, mine, f"{host}:{dead_pid.pid}:0a1b2c")
        assert store.claim_run(session, live, f"{host}:{os.getppid()}:0a1b2c")
        assert store.claim_run(session, other, "celery@elsewhere:12:0a1b2c")
    executor = LocalExecutor(db_settings)
    submitted: list[str] = []
    executor.submit = submitted.append  # type: ignore[method-assign]

    executor.start()

    assert load(db_settings, mine).status == "queued"
    assert "its server is gone" in load(db_settings, mine).status_reason
    assert load(db_settings, live).status == "running"  # a live server's run
    assert load(db_settings, other).status == "running"  # not ours: the reaper's business
    assert set(submitted) == {mine, waiting}


def test_shutdown_stops_the_trainer_and_puts_the_run_back(db_settings: Settings) -> None:
    run_id = create(db_settings, LONG)
    executor = LocalExecutor(db_settings)
    executor.submit(run_id)
    executor.submit(run_id)  # a duplicate submission is ignored
    try:
        wait_training(db_settings, run_id)
        child = executor._children[run_id]
        trainers = children_of(child.pid)
        assert len(trainers) == 1
    finally:
        executor.shutdown()

    run = load(db_settings, run_id)
    assert (run.status, run.attempt, run.worker) == ("queued", 0, None)
    assert "stopped; requeued" in run.status_reason
    assert child.returncode == 0
    assert gone(trainers[0])


def test_a_killed_child_takes_its_trainer_along_and_the_run_fails(db_settings: Settings) -> None:
    run_id = create(db_settings, LONG)
    executor = LocalExecutor(db_settings)
    executor.submit(run_id)
    try:
        wait_training(db_settings, run_id)
        child = executor._children[run_id]
        (trainer,) = children_of(child.pid)

        os.kill(child.pid, signal.SIGKILL)  # no chance to clean up: PDEATHSIG must do it

        assert gone(trainer), "the trainer outlived its worker process"
        deadline = time.monotonic() + 20
        while load(db_settings, run_id).status == "running":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        executor.shutdown()
    run = load(db_settings, run_id)
    assert run.status == "failed"
    assert "exited with code -9" in run.status_reason
