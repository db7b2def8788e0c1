"""GET /runs/{id}/metrics (paging by step, downsampling) and the SSE stream (resume exactly
once with Last-Event-ID). Points are written with store.add_metrics, as a worker would."""

from __future__ import annotations

import pytest

from service import store
from service.api.paging import page_series
from tests.sse import parse_sse, read_events

RUNS = "/api/v1/runs"


@pytest.fixture
def run_id(client) -> str:  # noqa: ANN001
    return client.post(RUNS, json={"steps": 1000}).json()["id"]


def write_points(session, run_id: str) -> None:  # noqa: ANN001
    """A dense key (every step 1..250) and a sparse one (every 50th step, 0..250)."""
    dense = [("train_loss", s, 1.0 / s) for s in range(1, 251)]
    sparse = [("test_acc", s, s / 250) for s in range(0, 251, 50)]
    store.add_metrics(session, run_id, dense + sparse)


def finish(session, run_id: str) -> None:  # noqa: ANN001
    assert store.claim_run(session, run_id, "w")
    assert store.finish_run(session, run_id, store.RunStatus.succeeded, "done")


def test_paging_reaches_every_point_once(client, app_session, run_id) -> None:  # noqa: ANN001
    write_points(app_session, run_id)
    got: dict[str, list[int]] = {"train_loss": [], "test_acc": []}
    cursor, pages = None, 0
    while True:
        params = {"limit": 40} | ({"cursor": cursor} if cursor else {})
        body = client.get(f"{RUNS}/{run_id}/metrics", params=params).json()
        pages += 1
        for key, series in body["series"].items():
            assert len(series["steps"]) <= 40
            assert series["downsampled"] is False
            got[key] += series["steps"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert got["train_loss"] == list(range(1, 251))
    assert got["test_acc"] == list(range(0, 251, 50))
    assert pages == 7  # 250 dense points / 40 per page
    assert body["keys"]["train_loss"] == {"count": 250, "first_step": 1, "last_step": 250}
    assert body["series"]["train_loss"]["total_points"] == 250


def test_keys_and_step_range(client, app_session, run_id) -> None:  # noqa: ANN001
    write_points(app_session, run_id)
    body = client.get(
        f"{RUNS}/{run_id}/metrics",
        params={"keys": "test_acc,grad_norm", "step_min": 50, "step_max": 150},
    ).json()
    assert set(body["series"]) == {"test_acc", "grad_norm"}
    assert body["series"]["test_acc"]["steps"] == [50, 100, 150]
    assert body["series"]["grad_norm"] == {
        "steps": [],
        "values": [],
        "total_points": 0,
        "downsampled": False,
    }
    assert body["next_cursor"] is None


def test_downsampling_keeps_shape_and_says_so(client, app_session, run_id) -> None:  # noqa: ANN001
    write_points(app_session, run_id)
    store.add_metrics(app_session, run_id, [("train_loss", 251, 9.0)])  # a spike at the end
    body = client.get(f"{RUNS}/{run_id}/metrics", params={"max_points": 20}).json()
    loss = body["series"]["train_loss"]
    assert loss["downsampled"] is True and loss["total_points"] == 251
    assert len(loss["steps"]) <= 20
    assert loss["steps"][0] == 1 and loss["steps"][-1] == 251
    assert max(loss["values"]) == 9.0 and min(loss["values"]) == pytest.approx(1 / 250)
    assert body["series"]["test_acc"]["downsampled"] is False  # 6 points fit
    assert body["next_cursor"] is None


def test_downsampling_keeps_extremes_across_chunks(client, app_session, run_id) -> None:  # noqa: ANN001
    """A long series (several stored chunks) with a missing value: the first, last, minimum
    and maximum points come back exactly, and the missing value is marked."""
    values = [0.5 + 0.1 * ((s * 7919) % 13) / 13 for s in range(5000)]
    values[1234], values[2777], values[100] = -3.0, 7.0, None
    store.add_metrics(app_session, run_id, [("loss", s, v) for s, v in enumerate(values)])
    body = client.get(f"{RUNS}/{run_id}/metrics", params={"max_points": 50}).json()
    loss = body["series"]["loss"]
    assert (loss["downsampled"], loss["total_points"]) == (True, 5000)
    kept = dict(zip(loss["steps"], loss["values"], strict=True))
    assert len(kept) <= 50
    assert kept[0] == values[0] and kept[4999] == values[4999]
    assert kept[1234] == -3.0 and kept[2777] == 7.0 and kept[100] is None
    assert all(values[s] == v for s, v in kept.items())  # exact values, not approximations


def test_metrics_bad_requests(client, run_id) -> None:  # noqa: ANN001
    url = f"{RUNS}/{run_id}/metrics"
    for params, status, text in [
        ({"cursor": "nonsense"}, 400, "cursor"),
        ({"cursor": "c3RlcDp4"}, 400, "cursor"),  # "step:x"
        ({"max_points": 2}, 422, "max_points: Input should be greater than or equal to 4"),
        ({"max_points": 10, "cursor": "c3RlcDox"}, 400, "cursor"),
        ({"step_min": 5, "step_max": 1}, 400, "step_min"),
        ({"keys": "a b"}, 400, "keys"),
    ]:
        response = client.get(url, params=params)
        assert response.status_code == status, params
        assert text in response.json()["detail"], params


def test_page_series_cuts_all_keys_at_one_step() -> None:
    series = {"dense": [(s, 0.0) for s in range(1, 12)], "sparse": [(0, 0.0), (50, 1.0)]}
    page, boundary = page_series(series, 10)
    assert boundary == 10
    assert [s for s, _ in page["dense"]] == list(range(1, 11))
    assert [s for s, _ in page["sparse"]] == [0]  # step 50 comes on a later page


# ----------------------------------------------------------------------------- SSE


def stream(client, run_id: str, params: dict | None = None, **headers: str) -> list[dict]:  # noqa: ANN001
    return read_events(client, f"{RUNS}/{run_id}/events", params, **headers)


def test_sse_delivers_each_point_once_across_a_reconnect(client, app_session, run_id) -> None:  # noqa: ANN001
    write_points(app_session, run_id)
    finish(app_session, run_id)
    first = stream(client, run_id)
    assert first[0]["event"] == "status" and first[0]["data"]["status"] == "succeeded"
    assert first[-1]["event"] == "end"
    metrics = [e for e in first if e["event"] == "metrics"]
    assert [int(e["id"]) for e in metrics] == list(range(0, 251))
    assert metrics[50]["data"] == {"step": 50, "values": {"train_loss": 1 / 50, "test_acc": 0.2}}

    # A client that saw steps up to 120 reconnects: it gets 121.. and nothing twice.
    resumed = stream(client, run_id, **{"Last-Event-ID": "120"})
    steps = [int(e["id"]) for e in resumed if e["event"] == "metrics"]
    assert steps == list(range(121, 251))
    assert resumed[-1]["event"] == "end" and resumed[-1]["data"]["last_step"] == 250


def test_sse_holds_back_the_newest_step_of_a_live_run(client, app_session, run_id) -> None:  # noqa: ANN001
    store.add_metrics(app_session, run_id, [("train_loss", 1, 2.0), ("train_loss", 2, 1.5)])
    events = stream(client, run_id, params={"timeout": 0.2})
    assert [e["event"] for e in events] == ["status", "metrics"]  # step 2 may be incomplete
    assert events[1]["id"] == "1"


def test_sse_bad_last_event_id(client, run_id) -> None:  # noqa: ANN001
    response = client.get(f"{RUNS}/{run_id}/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 400 and "Last-Event-ID" in response.json()["detail"]


def test_sse_follows_a_live_run_to_its_end(client, app, run_id, monkeypatch) -> None:  # noqa: ANN001
    import threading
    import time

    from service.api import events

    monkeypatch.setattr(events, "POLL_INTERVAL_S", 0.02)

    def worker() -> None:  # what a worker does: claim, write steps (train, then eval), finish
        with app.state.session_factory() as session:
            assert store.claim_run(session, run_id, "w")
            for step in range(1, 6):
                store.add_metrics(session, run_id, [("train_loss", step, 1.0 / step)])
                time.sleep(0.03)
                store.add_metrics(session, run_id, [("test_acc", step, step / 10)])
            store.finish_run(session, run_id, store.RunStatus.succeeded, "done")

    thread = threading.Thread(target=worker)
    with client.stream("GET", f"{RUNS}/{run_id}/events", params={"timeout": 20}) as response:
        thread.start()
        events_seen = parse_sse(response.read().decode())
    thread.join()
    metrics = [e for e in events_seen if e["event"] == "metrics"]
    assert [int(e["id"]) for e in metrics] == [1, 2, 3, 4, 5]
    # Each step arrives complete, even though its two keys were written separately.
    assert all(set(e["data"]["values"]) == {"train_loss", "test_acc"} for e in metrics)
    statuses = [e["data"]["status"] for e in events_seen if e["event"] == "status"]
    assert statuses[-1] == "succeeded" and events_seen[-1]["event"] == "end"
