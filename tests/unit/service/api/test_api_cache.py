"""service.api.cache: a missing key is computed once, however many requests want it at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.api.cache import MISSING, FinishedCache


def all_missed(cache: FinishedCache, threads: int) -> threading.Event:
    """An event set once ``threads`` distinct threads have found the key missing in ``cache``:
    each of them is then past the cache look-up and committed to the per-key gate (waiting on
    it, or computing). A computation that waits for it runs while every request is in."""
    missed: set[int] = set()
    lock = threading.Lock()
    event = threading.Event()
    real_get = cache.get

    def get(key: object) -> object:
        value = real_get(key)
        if value is MISSING:
            with lock:
                missed.add(threading.get_ident())
                if len(missed) >= threads:
                    event.set()
        return value

    cache.get = get  # type: ignore[method-assign]  # get_or_compute looks it up on self
    return event


def test_concurrent_misses_compute_once() -> None:
    cache = FinishedCache()
    everyone_in = all_missed(cache, 8)
    calls = []

    def compute() -> str:
        calls.append(threading.get_ident())
        assert everyone_in.wait(30), "not every request reached the cache"
        return "value"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: cache.get_or_compute("k", compute), range(8)))
    assert results == ["value"] * 8
    assert len(calls) == 1
    assert cache.get("k") == "value"
    assert cache._computing == {}  # no gate left behind


def test_an_error_is_not_cached_and_each_waiter_retries() -> None:
    cache = FinishedCache()
    everyone_in = all_missed(cache, 4)
    calls = []

    def fail() -> str:
        calls.append(1)
        assert everyone_in.wait(30), "not every request reached the cache"
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


def test_live_runs_are_cached_until_their_next_write(client, app, monkeypatch) -> None:  # noqa: ANN001
    """A live run's metrics are kept until points are added, even a point at a step already
    seen (an evaluation written after the training metrics of its step): last_step alone
    would not notice that one."""
    from bncore.spec import JobSpec
    from service import store

    with app.state.session_factory() as session:
        run, _ = store.create_run(session, JobSpec(name="live"))
        store.claim_run(session, run.id, "w")
        store.add_metrics(session, run.id, [("loss", s, 1.0 / s) for s in range(1, 301)])
    reads = []
    real = store.get_metric_arrays
    monkeypatch.setattr(
        store, "get_metric_arrays", lambda *a, **k: reads.append(1) or real(*a, **k)
    )
    url = f"/api/v1/runs/{run.id}/metrics"
    first = client.get(url, params={"max_points": 10}).json()
    assert client.get(url, params={"max_points": 10}).json() == first
    assert len(reads) == 1  # the repeat came from memory

    with app.state.session_factory() as session:  # same last_step, a new key
        store.add_metrics(session, run.id, [("test_acc", 300, 0.9)])
    later = client.get(url, params={"max_points": 10}).json()
    assert later["series"]["test_acc"]["values"] == [0.9]
    assert later["keys"]["test_acc"] == {"count": 1, "first_step": 300, "last_step": 300}
    assert len(reads) == 2
