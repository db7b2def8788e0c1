"""Responses kept for repeats: over finished runs, and over live runs until their next write.

A finished run's metrics no longer change, so a repeated metrics query or comparison over
finished runs is answered from here instead of re-reading (and re-downsampling) thousands of
points: under load those reads were nearly all of the API's time. Keys include each run's
``last_step``, so a point that still arrives late (a reaped worker's last flush) makes a new
key rather than a stale answer; a deleted run's entries are unreachable (its 404 comes first)
and age out. Bounded LRU, per app (``app.state.finished_cache``), thread-safe.

``get_or_compute`` computes each missing key once: concurrent requests for a key being
computed wait for that result instead of each recomputing it (a comparison missed by twenty
requests at once was twenty 0.5 s computations fighting for the GIL, and seconds of latency
for every other request meanwhile).

A live run's metrics are kept separately (``app.state.live_cache``, smaller: its entries go
stale at every write), keyed by the run's per-key point counts: points are only ever added,
never changed or removed while a run is live, so equal counts mean the same points.

``etag`` and ``not_modified`` answer conditional requests: the metrics and compare routes make
an ETag from what their body depends on (the query and the points' versions, see
``store.metric_versions``) before computing anything, so a poller whose copy is current gets a
304 for the price of one small query.

``heavy_slot`` bounds how many requests compute (read and downsample thousands of points, run a
comparison) at once: beyond a couple, more threads computing under the GIL only make every
request slower, the cheap ones (a list, a cached answer) most of all.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from fastapi import Request

MISSING = object()


class FinishedCache:
    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._items.get(key, MISSING)
            if value is not MISSING:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value, else ``compute()`` stored under ``key``; one computation per key
        at a time (the others wait for it, then read it). If it raises, nothing is stored and
        each waiter computes for itself, so an error is never served from here."""
        value = self.get(key)
        if value is not MISSING:
            return value
        with self._lock:
            gate = self._computing.setdefault(key, threading.Lock())
        try:
            with gate:
                value = self.get(key)
                if value is MISSING:
                    value = compute()
                    self.put(key, value)
                return value
        finally:
            with self._lock:
                if self._computing.get(key) is gate and not gate.locked():
                    del self._computing[key]

    def __len__(self) -> int:
        return len(self._items)


def finished_cache(request: Request) -> FinishedCache:
    return request.app.state.finished_cache


def live_cache(request: Request) -> FinishedCache:
    return request.app.state.live_cache


HEAVY_SLOTS = 2


@contextlib.contextmanager
def heavy_slot(request: Request) -> Iterator[None]:
    """Hold one of the app's ``HEAVY_SLOTS`` for a computation (waiting, without the GIL,
    while they are all taken)."""
    with request.app.state.heavy_slots:
        yield


def etag(*parts: Any) -> str:
    """A strong ETag for a body that is a function of ``parts`` (reprs of plain values)."""
    return '"' + hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest() + '"'


def not_modified(request: Request, tag: str) -> bool:
    """Whether the request's If-None-Match names ``tag`` (or is ``*``); weak tags compare by
    their opaque part, as RFC 9110 says If-None-Match does."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    names = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in names or tag in names
