"""Bounds on event streams (service/api/streams.py, issue 12 F4): slots per client and in all
(503 with Retry-After beyond them, as problem+json) and reads shared between streams."""

from __future__ import annotations

import threading

import pytest
from fastapi import HTTPException

from service.api.streams import RETRY_AFTER_S, SharedReads, StreamSlots, for_app
from tests.waiting import wait_until


def test_slots_bound_each_client_and_the_total() -> None:
    slots = StreamSlots(total=3, per_client=2)
    slots.take("a")
    slots.take("a")
    with pytest.raises(HTTPException) as per_client:
        slots.take("a")
    assert per_client.value.status_code == 503
    assert per_client.value.headers == {"Retry-After": str(RETRY_AFTER_S)}
    assert "this client has 2 event streams open" in per_client.value.detail
    slots.take("b")
    with pytest.raises(HTTPException) as total:
        slots.take("c")
    assert "3 event streams are open" in total.value.detail
    slots.give_back("a")
    slots.take("c")
    assert slots.open_count() == 3


def test_a_stream_beyond_the_bound_is_answered_503_and_a_finished_one_frees_its_slot(
    client, app, finished_run_id: str
) -> None:  # noqa: ANN001
    url = f"/api/v1/runs/{finished_run_id}/events"
    assert client.get(url).status_code == 200  # runs to its end event, then frees the slot
    streams = for_app_of(app)
    assert streams.slots.open_count() == 0
    for _ in range(app.state.settings.max_streams_per_client):
        streams.slots.take("testclient")
    response = client.get(url)
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(RETRY_AFTER_S)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "Last-Event-ID" in response.json()["detail"]


def for_app_of(app):  # noqa: ANN001, ANN201
    class _Request:  # what for_app reads of a request
        def __init__(self, app) -> None:  # noqa: ANN001
            self.app = app

    return for_app(_Request(app), 0.5)  # type: ignore[arg-type]


@pytest.fixture
def finished_run_id(client, app_session) -> str:  # noqa: ANN001
    from service import store

    response = client.post("/api/v1/runs", json={"name": "s", "steps": 10})
    run_id = response.json()["id"]
    token = store.claim_run(app_session, run_id, "w@h:1:ab")
    store.add_metrics(app_session, run_id, [("train_loss", 1, 0.5)])
    assert store.finish_run(app_session, run_id, store.RunStatus.succeeded, "done", token=token)
    return run_id


def test_concurrent_reads_of_one_key_are_made_once() -> None:
    reads = SharedReads(ttl_s=60)
    calls: list[int] = []
    gate = threading.Event()

    def slow_read() -> str:
        calls.append(1)
        gate.wait(5)
        return "rows"

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(reads.get("k", slow_read)))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: calls, 10, "the first read to start", step=0.01)
    gate.set()
    for thread in threads:
        thread.join()
    assert results == ["rows"] * 20 and len(calls) == 1


def test_a_read_older_than_the_stream_or_the_ttl_is_made_again() -> None:
    now = [0.0]
    reads = SharedReads(ttl_s=1.0, clock=lambda: now[0])
    counter = iter(range(100))
    assert reads.get("k", lambda: next(counter)) == 0
    now[0] = 0.5
    assert reads.get("k", lambda: next(counter)) == 0  # shared
    assert reads.get("k", lambda: next(counter), not_before=0.2) == 1  # a stream opened later
    now[0] = 2.0
    assert reads.get("k", lambda: next(counter)) == 2  # expired
