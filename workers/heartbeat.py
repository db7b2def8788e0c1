"""A run's heartbeat thread: proof of life to the reaper, and the way a stop reaches the trainer.

Every ``heartbeat_interval_s`` the thread refreshes the run's heartbeat and the worker's row.
The store answers whether the run is still this attempt's (its claim token): if not, the
heartbeat reads why (the run's cancel flag was set → "cancel"; it was reaped, claimed again by
another attempt, even one under the same worker name, or deleted → "lost")
and calls ``on_stop`` once, which stops the trainer (workers/execute.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session

from service import store
from service.db import first_line, open_session
from service.settings import Settings
from service.vocab import RunStatus

log = logging.getLogger("bnlab.execute")


class Heartbeat(threading.Thread):
    """Every ``heartbeat_interval_s``: refresh the run's heartbeat and the worker's row. When
    the store answers "stop", calls ``on_stop("cancel" | "lost")`` once and ends."""

    def __init__(
        self,
        run_id: str,
        worker: str,
        token: str,
        device: str,
        settings: Settings,
        on_stop: Callable[[str], None],
    ) -> None:
        super().__init__(name=f"heartbeat-{run_id[:8]}", daemon=True)
        self.run_id, self.worker, self.token, self.device = run_id, worker, token, device
        self.settings = settings
        self.on_stop = on_stop
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            # Bounded: a heartbeat stuck on an unreachable database must not hold up the
            # outcome; once stopped it never calls on_stop.
            self.join(timeout=self.settings.heartbeat_interval_s + 30)

    def run(self) -> None:
        while not self._stopped.wait(self.settings.heartbeat_interval_s):
            try:
                with open_session(self.settings) as session:
                    keep_going = store.heartbeat(
                        session, self.run_id, self.worker, token=self.token
                    )
                    store.worker_seen(
                        session, self.worker, device=self.device, current_run_id=self.run_id
                    )
                    why = None if keep_going else self._why_stop(session)
            except Exception as exc:  # the reaper decides about silent workers, not us
                log.warning("run %s: heartbeat failed: %s", self.run_id, first_line(exc))
                continue
            if why is not None and not self._stopped.is_set():
                self.on_stop(why)
                return

    def _why_stop(self, session: Session) -> str:
        try:
            run = store.get_run(session, self.run_id)
        except store.NotFound:
            return "lost"
        mine = run.status == RunStatus.running and run.claim_token == self.token
        return "cancel" if mine and run.cancel_requested else "lost"
