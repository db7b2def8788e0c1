"""The API's maintenance pass: the reaper, and resubmission of runs a broker refused or lost.

Every ``heartbeat_timeout_s / 4`` the API (``service/app.py``'s lifespan) runs ``maintain``:

* runs whose heartbeat went stale lost their worker: requeue them (and submit them again) or,
  past ``max_attempts``, fail them. Staleness is judged by the database's clock; and after
  the database was unreachable, heartbeats could not land either, so the reaper waits
  ``reap_grace_s`` (default: the heartbeat timeout) before judging them again
  (``OutageGrace``);
* runs the broker refused when they were submitted are submitted again;
* queued runs whose message the broker may have lost (``Executor.resubmit_due``) are sent again;
* rows of workers silent for ``worker_retention_s`` are removed (each process has its own).

A duplicate submission is harmless: claiming a run is a guarded UPDATE (workers/execute.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import anyio
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.db import DB_ERRORS
from service.executor import Executor, submit_run
from service.settings import Settings
from service.vocab import RunStatus

log = logging.getLogger("bnlab.api")


class OutageGrace:
    """When the database was last found unreachable, and whether reaping is allowed again:
    only ``grace_s`` later, once healthy workers had time to land a heartbeat."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s, self.clock = grace_s, clock
        self._until = float("-inf")

    def unreachable(self) -> None:
        self._until = self.clock() + self.grace_s

    def reaping_allowed(self) -> bool:
        return self.clock() >= self._until


def outage_grace(settings: Settings) -> OutageGrace:
    grace = settings.reap_grace_s
    return OutageGrace(settings.heartbeat_timeout_s if grace is None else grace)


def maintain_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    executor: Executor,
    grace: OutageGrace | None = None,
) -> None:
    """One maintenance pass (see the module docstring). A database error marks ``grace``."""
    try:
        _maintain(settings, sessions, executor, grace)
    except DB_ERRORS:
        if grace is not None:
            grace.unreachable()
        raise


def _maintain(
    settings: Settings,
    sessions: sessionmaker[Session],
    executor: Executor,
    grace: OutageGrace | None,
) -> None:
    with sessions() as session:
        outcomes = []
        if grace is None or grace.reaping_allowed():
            outcomes = store.reap_stale(
                session, settings.heartbeat_timeout_s, settings.max_attempts
            )
        else:
            log.info("reaper waits: the database was unreachable less than the grace ago")
        for run_id, status in outcomes:
            log.warning("run %s lost its worker: now %s", run_id, status)
            if status == RunStatus.queued:
                submit_run(session, executor, run_id)
        if pruned := store.prune_workers(session, settings.worker_retention_s):
            log.info("removed %d worker row(s) silent too long", pruned)
        refused = store.submit_failed_run_ids(session)
        for run_id in refused:
            if not submit_run(session, executor, run_id, retry=True):
                return  # still down: one warning per pass, not one per waiting run
        retried = set(refused)
        waiting = [r for r in store.queued_run_ids(session) if r not in retried]
        for run_id in executor.resubmit_due(waiting):
            if not submit_run(session, executor, run_id):
                break


async def maintenance_loop(
    settings: Settings, sessions: sessionmaker[Session], executor: Executor
) -> None:
    """``maintain_once`` every ``heartbeat_timeout_s / 4``, until cancelled."""
    interval = settings.heartbeat_timeout_s / 4
    grace = outage_grace(settings)
    while True:
        await asyncio.sleep(interval)
        try:
            await anyio.to_thread.run_sync(maintain_once, settings, sessions, executor, grace)
        except Exception as exc:  # keep the loop alive through a database outage
            log.error("maintenance pass failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
