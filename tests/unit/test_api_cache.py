"""service.api.cache: a missing key is computed once, however many requests want it at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.api.cache import MISSING, FinishedCache


def test_concurrent_misses_compute_once() -> None:
    cache = FinishedCache()
    calls = []

    def compute() -> str:
        calls.append(threading.get_ident())
        time.sleep(0.2)  # long enough for every request to arrive while it runs
        return "value"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cache.get_or_compute("k", compute), range(8)))
    assert results == ["value"] * 8
    assert len(calls) == 1
    assert cache.get("k") == "value"
    assert cache._computing == {}  # no gate left behind


def test_an_error_is_not_cached_and_each_waiter_retries() -> None:
    cache = FinishedCache()
    calls = []

    def fail() -> str:
        calls.append(1)
        time.sleep(0.05)
        raise ValueError("boom")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get_or_compute, "k", fail) for _ in range(4)]
    for future in futures:
        with pytest.raises(ValueError, match="boom"):
            future.result()
    assert len(calls) == 4  # never an error served from the cache
    assert cache.get("k") is MISSING
    assert cache.get_or_compute("k", lambda: 1) == 1


def test_distinct_keys_do_not_wait_for_each_other() -> None:
    cache = FinishedCache()
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "slow"

    with ThreadPoolExecutor(2) as pool:
        pending = pool.submit(cache.get_or_compute, "a", slow)
        assert cache.get_or_compute("b", lambda: "fast") == "fast"
        release.set()
        assert pending.result() == "slow"
