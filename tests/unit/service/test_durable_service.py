"""Durable runs on the service side (issue 12): the reaper's grace after a database outage,
unique worker names, temporary folders of killed runs, and the embedded executor executing
again a run that was requeued while its process still ran (F2). SQLite, real subprocesses."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from service import store
from service.db import open_session, session_factory
from service.executor import LocalExecutor, RecordingExecutor
from service.maintenance import OutageGrace, maintain_once
from service.proc import (
    clean_stale_temp_dirs,
    gone_local_workers,
    run_temp_dir,
    unique_worker_id,
    worker_host_pid,
)
from service.settings import Settings
from service.store import RunStatus
from tests.executing import LONG_SPEC, create, executing_settings, load
from tests.waiting import wait_until


@pytest.fixture
def db_settings(tmp_path: Path) -> Settings:
    return executing_settings(
        tmp_path,
        heartbeat_timeout_s=30,
        checkpoint_every=200,
        max_attempts=3,
    )


def dead_pid() -> int:
    child = subprocess.Popen(["true"])  # noqa: S607
    child.wait()
    return child.pid


def test_the_reaper_waits_out_the_grace_after_the_database_was_unreachable(
    db_settings: Settings,
) -> None:
    run_id = create(db_settings, {"steps": 10})
    with open_session(db_settings) as session:
        assert store.claim_run(session, run_id, "w@h:1:abc")
    now = [0.0]
    grace = OutageGrace(60, clock=lambda: now[0])
    sessions = session_factory(db_settings.database_url)

    def unreachable():  # noqa: ANN202
        raise OperationalError("SELECT 1", {}, ConnectionError("database down (test)"))

    with pytest.raises(OperationalError):
        maintain_once(db_settings, unreachable, RecordingExecutor(), grace)  # type: ignore[arg-type]
    stale = db_settings.model_copy(update={"heartbeat_timeout_s": 0.001})
    now[0] = 59.0
    maintain_once(stale, sessions, RecordingExecutor(), grace)
    assert load(db_settings, run_id).status == "running"  # its heartbeat could not land
    now[0] = 60.0
    executor = RecordingExecutor()
    maintain_once(stale, sessions, executor, grace)
    assert load(db_settings, run_id).status == "queued" and executor.submitted == [run_id]


def test_worker_ids_are_unique_and_name_their_host_and_process() -> None:
    first, second = unique_worker_id("gpu"), unique_worker_id("gpu")
    assert first != second and first.startswith(f"gpu@{socket.gethostname()}:{os.getpid()}:")
    assert unique_worker_id("celery@box").startswith(f"celery@box:{os.getpid()}:")
    assert worker_host_pid(first) == (socket.gethostname(), os.getpid())
    assert worker_host_pid("celery@box") is None  # the old form names no process
    here = socket.gethostname()
    alive, gone = f"embedded@{here}:{os.getppid()}:a1", f"embedded@{here}:{dead_pid()}:a1"
    mine = f"embedded@{here}:{os.getpid()}:a1"  # a previous process with our pid
    elsewhere = f"embedded@not-{here}:{dead_pid()}:a1"
    assert gone_local_workers([alive, gone, mine, elsewhere, "celery@x"]) == [gone, mine]


def test_the_temporary_folders_of_killed_runs_are_removed(tmp_path: Path) -> None:
    killed = tmp_path / f"bnlab-0123abcd-{dead_pid()}-x1y2"
    live = tmp_path / f"bnlab-0123abcd-{os.getppid()}-x1y2"
    unrelated = tmp_path / "bnlab-something"
    for folder in (killed, live, unrelated):
        folder.mkdir()
        (folder / "spec.json").write_text("{}")
    with run_temp_dir("0123abcd-ffff") as ours:
        assert Path(ours).name.startswith(f"bnlab-0123abcd-{os.getpid()}-")

    assert clean_stale_temp_dirs(tmp_path) == [killed]
    assert not killed.exists() and live.exists() and unrelated.exists()


def test_a_run_requeued_while_its_process_runs_is_executed_again(db_settings: Settings) -> None:
    """F2: the reaper requeued the run (its process looked stalled) and the maintenance pass
    submitted it again while that process still counted as pending."""
    run_id = create(db_settings, LONG_SPEC)
    executor = LocalExecutor(db_settings)
    try:
        executor.submit(run_id)
        wait_until(lambda: (load(db_settings, run_id).last_step or 0) >= 300, 180, "step 300")
        with open_session(db_settings) as session:
            assert store.reap_stale(session, 0, 3) == [(run_id, RunStatus.queued)]
        executor.submit(run_id)  # what the maintenance pass does with a requeued run

        wait_until(lambda: load(db_settings, run_id).status == "succeeded", 180, "the retry")
    finally:
        executor.shutdown()
    run = load(db_settings, run_id)
    assert run.attempt == 2 and run.resumed_step is not None and run.resumed_step >= 200
