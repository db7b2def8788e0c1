"""Trainer metric points → ``store.add_metrics``, in batches, through database outages.

The reader (``workers/execute.py``) hands every metrics event to a ``MetricWriter`` and never
waits: the writer thread flushes every FLUSH_INTERVAL_S or FLUSH_POINTS, and a database error
keeps the points buffered, in order, and retries with backoff. Writes are idempotent upserts, so
a retried batch changes nothing. The start event's facts (device, torch version) ride along.

Every write is fenced by the attempt's claim token: it lands only while the run is still this
attempt's (checked in the write's own transaction, under the run's row lock).
Once the claim is lost the writer drops what it has and whatever comes; the heartbeat stops
the trainer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from service import store
from service.db import DB_ERRORS, engine_for, first_line
from service.settings import Settings

log = logging.getLogger("bnlab.execute")

FLUSH_INTERVAL_S = 0.5  # metric points reach the database at most this late...
FLUSH_POINTS = 500  # ...or as soon as this many are waiting
WRITE_BATCH = 5_000  # rows per INSERT when a backlog built up during an outage
FINAL_WRITE_DEADLINE_S = 120.0  # how long the last flush (and the outcome) retry a down database
# At most this many writers of a process keep a connection between flushes (MetricWriter.
# _session): a process running many runs at once (embedded_concurrency goes up to 64) must not
# tie up its connection pool (15 connections on SQLite, 30 on PostgreSQL) with idle writers.
HELD_WRITERS = 4
HELD_CONNECTIONS = threading.BoundedSemaphore(HELD_WRITERS)


class MetricWriter(threading.Thread):
    """Writes buffered metric points (and the start event's facts) in batches, every
    FLUSH_INTERVAL_S or FLUSH_POINTS. A database error keeps the points buffered and retries
    with backoff, so the reader (and the trainer behind it) never waits on the database."""

    def __init__(
        self,
        run_id: str,
        token: str,
        settings: Settings,
        on_stored: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(name=f"metrics-{run_id[:8]}", daemon=True)
        self.run_id, self.token = run_id, token
        self.on_stored = on_stored  # called with the last step stored, after each write
        self.claim_lost = False  # a write found the run claimed by another attempt
        self.settings = settings
        self.max_step: int | None = None
        self.written = 0
        self._points: list[tuple[str, int, float | None]] = []
        self._start: dict[str, str] | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._held: Session | None = None  # see _session
        self._slot = False  # holds one of HELD_CONNECTIONS

    def add(self, step: int, values: dict[str, Any]) -> None:
        points = [(key, step, _as_float(value)) for key, value in values.items()]
        with self._cond:
            if self.claim_lost:
                return
            self._points.extend(points)
            self.max_step = step if self.max_step is None else max(self.max_step, step)
            if len(self._points) >= FLUSH_POINTS:
                self._cond.notify()

    def set_start(self, device: str, torch_version: str) -> None:
        with self._cond:
            self._start = {"device": device[:32], "torch_version": torch_version[:32]}
            self._cond.notify()

    def close(self, deadline_s: float = FINAL_WRITE_DEADLINE_S) -> int:
        """Flush what is left (retrying until the deadline) and stop. Returns the number of
        points that could not be written (0 unless the database stayed down)."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + deadline_s
            self._cond.notify()
        if self.is_alive():
            self.join()
        self._release_connection()  # (if write was called without the thread)
        with self._cond:
            return len(self._points)

    def run(self) -> None:
        try:
            self._flush_until_closed()
        finally:
            self._release_connection()

    def _flush_until_closed(self) -> None:
        delay = 0.2
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closing or len(self._points) >= FLUSH_POINTS,
                    timeout=FLUSH_INTERVAL_S,
                )
                if self._closing and not self._points and self._start is None:
                    return
                batch, self._points = self._points, []
                start, self._start = self._start, None
            try:
                self.write(start, batch)
                delay = 0.2
                if batch and self.on_stored is not None:
                    self.on_stored(max(step for _, step, _ in batch))
                with self._cond:
                    busy = len(self._points) >= FLUSH_POINTS
                if not (busy and self._may_hold()):  # the next flush is a while off, or
                    self._release_connection()  # the process's writers hold enough already
            except ClaimLost:
                log.warning(
                    "run %s: claimed by another attempt; %d metric point(s) dropped",
                    self.run_id,
                    len(batch),
                )
                with self._cond:
                    self.claim_lost = True
                    self._points, self._start = [], None
                continue
            except Exception as exc:
                with self._cond:  # keep them, in order, ahead of anything newer
                    self._points[:0] = batch
                    if start is not None and self._start is None:
                        self._start = start
                    pending, closing = len(self._points), self._closing
                if closing and time.monotonic() > self._deadline:
                    log.error(
                        "run %s: giving up on %d metric point(s): %s",
                        self.run_id,
                        pending,
                        first_line(exc),
                    )
                    return
                retryable = isinstance(exc, DB_ERRORS)
                log.warning(
                    "run %s: writing metrics failed (%s); %d point(s) kept, retrying in %.1f s",
                    self.run_id,
                    first_line(exc),
                    pending,
                    delay,
                )
                if not retryable and closing:
                    return  # e.g. the run was deleted under us: retrying cannot help
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def write(self, start: dict[str, str] | None, batch: list[tuple[str, int, float | None]]):
        """One flush: the start facts (if any), then the points in slices of WRITE_BATCH.
        Raises ClaimLost once the run is no longer this attempt's."""
        session = self._session()
        try:
            if start is not None:
                self._fence(session)
                store.record_start(session, self.run_id, **start)
            for i in range(0, len(batch), WRITE_BATCH):
                # add_metrics' token guard keeps a lost attempt's points out. When it stored
                # nothing (a re-sent batch, or the claim lost), _fence tells which, so the
                # writer stops at once instead of at the next heartbeat.
                points = batch[i : i + WRITE_BATCH]
                if not store.add_metrics(session, self.run_id, points, token=self.token):
                    self._fence(session)
                    session.rollback()  # the claim holds: nothing to commit
        except BaseException:
            self._release_connection()  # a broken connection is not used again
            raise
        self.written += len(batch)

    def _session(self) -> Session:
        """A session on the connection the writer keeps while it is busy (flush after flush,
        the trainer outpacing FLUSH_INTERVAL_S; see HELD_CONNECTIONS). Checking a pooled
        connection out for every flush, with the pool's liveness ping, cost a busy PostgreSQL
        writer about a sixth of its throughput; a connection that broke meanwhile fails the
        write, which is retried on a new one."""
        if self._held is None:
            connection = engine_for(self.settings.database_url).connect()
            self._held = Session(bind=connection, expire_on_commit=False)
        return self._held

    def _may_hold(self) -> bool:
        """Whether this writer may keep its connection until the next flush: one of the
        process's HELD_CONNECTIONS slots is (or now becomes) its own."""
        if not self._slot:
            self._slot = HELD_CONNECTIONS.acquire(blocking=False)
        return self._slot

    def _release_connection(self) -> None:
        if self._held is not None:
            connection = self._held.bind  # the Connection _session made it on
            self._held.close()
            connection.close()  # back to the pool (discarded if it was invalidated)
            self._held = None
        if self._slot:
            HELD_CONNECTIONS.release()
            self._slot = False

    def _fence(self, session: Session) -> None:
        """Lock the run's row (SQLite: the write lock) and check the claim, in the transaction
        the next write commits: no other attempt can claim the run in between."""
        if not store.holds_claim(session, self.run_id, self.token):
            session.rollback()
            raise ClaimLost(self.run_id)


class ClaimLost(Exception):
    """The run was claimed again (or reaped): this attempt's writes must not land."""


def _as_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
