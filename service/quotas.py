"""Per-key quotas and rate limits, so that one client cannot fill the queue or flood the API.

Three limits (settings, per API key name; an open server has no keys and no limits):

- ``quota_active_runs``      queued + running runs a key may have at once
- ``quota_runs_per_sweep``   runs one sweep may fan out to
- ``quota_posts_per_minute`` POST requests a key may make in any 60 seconds

Beyond one, the API answers 429 problem+json with ``Retry-After`` (seconds).

The rate limit is a sliding log in this process's memory: with several API processes each
allows the limit (run one API process, or divide the limit).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from fastapi import HTTPException
from sqlalchemy.orm import Session

from service.auth import Caller
from service.settings import Settings
from service.store import audit

# For the routes' documentation (/docs).
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
RATE_LIMIT_DOC = (
    "Over the API key's POST rate limit (quota_posts_per_minute, default 60 a minute; "
    "BNLAB_QUOTA_POSTS_PER_MINUTE): try again after `Retry-After` seconds."
)
RUN_QUOTA_DOC = (
    "Per API key (not on an open server), at most `quota_active_runs` queued + running runs "
    "(default 500; BNLAB_QUOTA_ACTIVE_RUNS) and `quota_posts_per_minute` POSTs a minute "
    "(default 60): beyond them a 429 with `Retry-After`."
)

WINDOW_S = 60.0
# When a run slot frees depends on training times; a client retrying sooner only asks again.
ACTIVE_RUNS_RETRY_S = 60


def too_many(detail: str, retry_after_s: float) -> HTTPException:
    """A 429 (rendered as problem+json) telling the client when to try again."""
    seconds = max(1, math.ceil(retry_after_s))
    return HTTPException(429, detail, headers={"Retry-After": str(seconds)})


class RateLimiter:
    """At most ``limit`` hits per key in any ``window_s`` seconds. ``clock`` (monotonic
    seconds) is injectable, so tests move time instead of sleeping."""

    def __init__(
        self, limit: int, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Count a hit for ``key``; returns None when allowed, otherwise the seconds until the
        oldest hit in the window expires (the hit is then not counted)."""
        now = self.clock()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.limit:
                return hits[0] + self.window_s - now
            hits.append(now)
            return None


def check_rate(limiter: RateLimiter, key_name: str) -> None:
    wait = limiter.hit(key_name)
    if wait is not None:
        raise too_many(
            f"the API key {key_name!r} made {limiter.limit} POST requests in the last "
            f"{limiter.window_s:g} s (quota_posts_per_minute); try again later",
            wait,
        )


def check_active_runs(key_name: str, active: int, adding: int, limit: int) -> None:
    """``adding`` more runs would take the key past ``limit`` queued + running runs."""
    if active + adding > limit:
        raise too_many(
            f"the API key {key_name!r} has {active} queued or running runs; {adding} more would "
            f"pass its quota of {limit} (quota_active_runs): wait for some to finish or "
            "cancel some",
            ACTIVE_RUNS_RETRY_S,
        )


def check_sweep_size(key_name: str, runs: int, limit: int) -> None:
    if runs > limit:
        raise too_many(
            f"the sweep expands to {runs} runs; the API key {key_name!r} may submit at most "
            f"{limit} per sweep (quota_runs_per_sweep): split the grid",
            ACTIVE_RUNS_RETRY_S,
        )


def enforce_run_quotas(
    session: Session, settings: Settings, caller: Caller | None, adding: int, *, sweep: bool
) -> None:
    """Before ``adding`` runs are created for ``caller`` (None: an open server, no quotas)."""
    if caller is None:
        return
    if sweep:
        check_sweep_size(caller.name, adding, settings.quota_runs_per_sweep)
    active = audit.active_runs(session, caller.name)
    check_active_runs(caller.name, active, adding, settings.quota_active_runs)
