"""What keeps event streams (service/api/events.py) from starving the API (issue 12, F4).

* ``StreamSlots``: at most ``max_streams`` open streams in all and ``max_streams_per_client``
  per client address; beyond that a new stream is answered 503 with Retry-After (clients
  reconnect later, resuming with Last-Event-ID, so no event is lost).
* ``SharedReads``: the reads a stream's poll makes, shared for one poll interval between
  streams that ask the same question (every stream on one sweep asks for the same run rows and,
  when they follow closely, the same metric slices): 200 streams on a sweep cost about one
  poll per interval instead of 200;
* the poll threads: at most POLL_THREADS stream polls run at once, in worker threads apart
  from the pool that serves every other route (with 200 streams sharing that pool, a plain
  GET waited behind 200 polls: 30 s in tests/integration/test_sweep_streams.py).

Both live on the app (``for_app``); a stream takes a slot before it starts and gives it back
in its generator's ``finally``, whichever way it ends (finished, client gone, shutdown).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import anyio
from fastapi import HTTPException, Request

from service.settings import Settings

T = TypeVar("T")
RETRY_AFTER_S = 5
POLL_THREADS = 8  # stream polls in flight at once (anyio's pool for routes has 40)


class StreamSlots:
    """Counts open streams, in all and per client address."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, client: str) -> None:
        """Take a slot for ``client`` or raise the 503 that says when to come back."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                why = f"{self.total} event streams are open, the server's limit"
            elif self._open[client] >= self.per_client:
                why = f"this client has {self.per_client} event streams open, the limit"
            else:
                self._open[client] += 1
                return
        raise HTTPException(
            503,
            f"{why}; retry in {RETRY_AFTER_S} s (resume with Last-Event-ID)",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    def give_back(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if self._open[client] <= 0:
                del self._open[client]

    def open_count(self) -> int:
        with self._lock:
            return sum(self._open.values())


class SharedReads:
    """Single-flight reads cached for ``ttl_s``: concurrent callers with one key wait for one
    read; later callers within ``ttl_s`` get its result. Errors are not cached."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.clock = ttl_s, clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, Any]] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, read: Callable[[], T], not_before: float = 0.0) -> T:
        """``read()``'s result for ``key``, made at most ``ttl_s`` ago and not before
        ``not_before`` (a stream never sees data older than its own start)."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            now = self.clock()
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and now - entry[0] < self.ttl_s and entry[0] >= not_before:
                    return entry[1]
            started = self.clock()
            value = read()
            with self._lock:
                self._entries[key] = (started, value)
                self._forget_old(now)
            return value

    def _forget_old(self, now: float) -> None:
        stale = [k for k, (at, _) in self._entries.items() if now - at >= self.ttl_s * 4]
        for key in stale:
            del self._entries[key]
            self._key_locks.pop(key, None)


class StreamState:
    """An app's stream slots, shared reads, and the worker threads stream polls run in: at
    most POLL_THREADS at once, apart from the thread pool that serves every other route, so
    a crowd of streams waits for itself rather than ahead of other requests."""

    def __init__(self, settings: Settings, poll_interval_s: float) -> None:
        self.slots = StreamSlots(settings.max_streams, settings.max_streams_per_client)
        self.reads = SharedReads(ttl_s=poll_interval_s * 0.9)
        self.poll_threads = anyio.CapacityLimiter(POLL_THREADS)


_create_lock = threading.Lock()


def for_app(request: Request, poll_interval_s: float) -> StreamState:
    """The app's stream state, made on first use."""
    state = getattr(request.app.state, "streams", None)
    if state is None:
        with _create_lock:
            state = getattr(request.app.state, "streams", None)
            if state is None:
                state = StreamState(request.app.state.settings, poll_interval_s)
                request.app.state.streams = state
    return state


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"
