"""The API's maintenance pass: the reaper, and resubmission of runs a broker refused or lost.

Every ``heartbeat_timeout_s / 4`` the API (``service/app.py``'s lifespan) runs ``maintain``:

* runs whose heartbeat went stale lost their worker: requeue them (and submit them again) or,
  past ``max_attempts``, fail them;
* runs the broker refused when they were submitted are submitted again;
* queued runs whose message the broker may have lost (``Executor.resubmit_due``) are sent again.

A duplicate submission is harmless: claiming a run is a guarded UPDATE (workers/execute.py).
"""

from __future__ import annotations

import asyncio
import logging

import anyio
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.executor import Executor, submit_run
from service.settings import Settings
from service.vocab import RunStatus

log = logging.getLogger("bnlab.api")


def maintain_once(settings: Settings, sessions: sessionmaker[Session], executor: Executor) -> None:
    """One maintenance pass (see the module docstring)."""
    with sessions() as session:
        outcomes = store.reap_stale(session, settings.heartbeat_timeout_s, settings.max_attempts)
        for run_id, status in outcomes:
            log.warning("run %s lost its worker: now %s", run_id, status)
            if status == RunStatus.queued:
                submit_run(session, executor, run_id)
        refused = store.submit_failed_run_ids(session)
        for run_id in refused:
            if not submit_run(session, executor, run_id, retry=True):
                return  # still down: one warning per pass, not one per waiting run
        # TRANSITIONAL (issue 10): the test doubles of the executor (tests/conftest.py,
        # test_cli.py, test_client.py, test_fuzz_openapi.py) predate resubmit_due in the
        # protocol; once they have it, call executor.resubmit_due directly.
        resubmit_due = getattr(executor, "resubmit_due", lambda _queued: [])
        retried = set(refused)
        waiting = [r for r in store.queued_run_ids(session) if r not in retried]
        for run_id in resubmit_due(waiting):
            if not submit_run(session, executor, run_id):
                break


async def maintenance_loop(
    settings: Settings, sessions: sessionmaker[Session], executor: Executor
) -> None:
    """``maintain_once`` every ``heartbeat_timeout_s / 4``, until cancelled."""
    interval = settings.heartbeat_timeout_s / 4
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(maintain_once, settings, sessions, executor)
        except Exception as exc:  # keep the loop alive through a database outage
            log.error("maintenance pass failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
