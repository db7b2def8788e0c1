"""GET /sweeps/{id}/events: every run's status and metric points in one Server-Sent Events
stream, resumable exactly once with Last-Event-ID (a cursor of the last step sent per run).
Points are written with store.add_metrics, as a worker would."""

from __future__ import annotations

import threading
import time

import pytest

from bncore.spec import JobSpec
from service import store
from service.api import events
from service.api.streams import SharedReads, StreamState
from service.api.sweep_cursor import CursorMismatch, decode_sweep_cursor, encode_sweep_cursor
from service.client import BnlabClient, RunEvent
from tests.sse import read_events
from tests.waiting import wait_until

SWEEPS = "/api/v1/sweeps"
LENGTHS = [30, 0, 45, 12]  # dense steps per run: one run has no points at all


def stream(client, sweep_id: str, params: dict | None = None, **headers: str) -> list[dict]:  # noqa: ANN001
    return read_events(client, f"{SWEEPS}/{sweep_id}/events", params, **headers)


def points(received: list[dict]) -> list[tuple[str, int]]:
    return [(e["data"]["run_id"], e["data"]["step"]) for e in received if e["event"] == "metrics"]


def make_sweep(client, n: int = 4) -> dict:  # noqa: ANN001
    body = {"name": "sse", "base": {"steps": 100}, "grid": {"seed": list(range(n))}}
    response = client.post(SWEEPS, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def finish(session, run_id: str, status=store.RunStatus.succeeded) -> None:  # noqa: ANN001
    assert store.claim_run(session, run_id, "w")
    assert store.finish_run(session, run_id, status, "done")


@pytest.fixture
def finished_sweep(client, app_session) -> tuple[str, list[str], set[tuple[str, int]]]:  # noqa: ANN001
    """A finished sweep of four runs with hand-written points: (id, run ids, every point)."""
    sweep = make_sweep(client)
    run_ids = [run["id"] for run in sweep["runs"]]
    expected = set()
    for run_id, length in zip(run_ids, LENGTHS, strict=True):
        dense = [("train_loss", s, 1.0 / s) for s in range(1, length + 1)]
        sparse = [("test_acc", s, s / 100) for s in range(0, length + 1, 10)] if length else []
        store.add_metrics(app_session, run_id, dense + sparse)
        expected |= {(run_id, s) for s in range(1, length + 1)}
        expected |= {(run_id, s) for s in range(0, length + 1, 10)} if length else set()
        status = store.RunStatus.failed if length == 12 else store.RunStatus.succeeded
        finish(app_session, run_id, status)
    return sweep["id"], run_ids, expected


def test_streams_every_point_once_and_ends(client, finished_sweep) -> None:  # noqa: ANN001
    sweep_id, run_ids, expected = finished_sweep
    received = stream(client, sweep_id)
    kinds = [e["event"] for e in received]
    assert kinds[:4] == ["status"] * 4 and kinds[-1] == "end" and kinds.count("end") == 1
    assert {e["data"]["id"] for e in received[:4]} == set(run_ids)
    got = points(received)
    assert len(got) == len(set(got)) and set(got) == expected
    first = next(e for e in received if e["event"] == "metrics")
    assert first["data"] == {
        "run_id": run_ids[0],
        "step": 0,
        "values": {"test_acc": 0.0},
    }
    step_10 = [e for e in received if e["event"] == "metrics" and e["data"]["step"] == 10]
    assert step_10[0]["data"]["values"] == {"train_loss": 0.1, "test_acc": 0.1}  # one event
    end = received[-1]["data"]
    assert end["sweep_id"] == sweep_id and end["counts"] == {"succeeded": 3, "failed": 1}
    assert end["last_steps"] == dict(zip(run_ids, [30, -1, 45, 12], strict=True))
    assert all("id" not in e for e in received if e["event"] in ("status", "end"))


def test_reconnecting_mid_stream_delivers_the_rest_exactly_once(client, finished_sweep) -> None:  # noqa: ANN001
    sweep_id, _, expected = finished_sweep
    full = [e for e in stream(client, sweep_id) if e["event"] == "metrics"]
    # Cut after the first event, mid-run, at the last point of a run, and after the last one.
    cut_points = [0, 17, 30, len(full) // 2, len(full) - 1]  # 30: run 0 done (steps 0..30)
    for cut in cut_points:
        resumed = stream(client, sweep_id, **{"Last-Event-ID": full[cut]["id"]})
        before = points([{"event": "metrics", "data": e["data"]} for e in full[: cut + 1]])
        after = points(resumed)
        assert len(after) == len(set(after)), cut  # no duplicates
        assert not set(before) & set(after), cut  # nothing sent twice across the reconnect
        assert set(before) | set(after) == expected, cut  # no gaps
        assert resumed[-1]["event"] == "end"
    # ?after= is the same as Last-Event-ID (for clients that cannot set headers).
    by_query = stream(client, sweep_id, params={"after": full[17]["id"]})
    by_header = stream(client, sweep_id, **{"Last-Event-ID": full[17]["id"]})
    assert points(by_query) == points(by_header)


def test_a_backlog_streams_in_slices(client, finished_sweep, monkeypatch) -> None:  # noqa: ANN001
    sweep_id, _, expected = finished_sweep
    monkeypatch.setattr(events, "BATCH_STEPS", 7)
    got = points(stream(client, sweep_id))
    assert len(got) == len(set(got)) and set(got) == expected


def test_malformed_last_event_id_is_400(client, finished_sweep) -> None:  # noqa: ANN001
    sweep_id, run_ids, _ = finished_sweep
    good = encode_sweep_cursor(run_ids, {})
    fingerprint = good.split(".")[0]
    for bad in (
        "abc",
        "12",
        "zzzzzzzz.0*4",  # not a fingerprint
        f"{fingerprint}.0*3",  # three runs, the sweep has four
        f"{fingerprint}.0,0,0,0,0",
        f"{fingerprint}.0*0",
        f"{fingerprint}.-1*4",
        f"{fingerprint}.zzzzzzz*4",  # a step beyond the bound
        f"{fingerprint}.0*4,",
        f"{fingerprint}." + "0," * 5000,
    ):
        response = client.get(f"{SWEEPS}/{sweep_id}/events", headers={"Last-Event-ID": bad})
        assert response.status_code == 400, bad
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "Last-Event-ID" in response.json()["detail"]
    # A well-formed id of another sweep's stream is a conflict, not a resume point.
    other = make_sweep(client, 4)
    foreign = encode_sweep_cursor([r["id"] for r in other["runs"]], {})
    response = client.get(f"{SWEEPS}/{sweep_id}/events", headers={"Last-Event-ID": foreign})
    assert response.status_code == 409 and "another sweep" in response.json()["detail"]


def test_unknown_sweep_is_404(client) -> None:  # noqa: ANN001
    response = client.get(f"{SWEEPS}/nope/events")
    assert response.status_code == 404 and response.json()["detail"] == "sweep nope not found"
    assert response.headers["content-type"].startswith("application/problem+json")


def test_cursor_round_trip_and_compression() -> None:
    run_ids = [f"r{i}" for i in range(10)]
    sent = {"r0": 249, "r1": 249, "r2": 249, "r3": 5}
    cursor = encode_sweep_cursor(run_ids, sent)
    assert cursor.endswith(".6y*3,6,0*6")  # 250 = "6y" in base 36, then 6 runs at nothing
    assert decode_sweep_cursor(cursor, run_ids) == {r: sent.get(r, -1) for r in run_ids}
    with pytest.raises(CursorMismatch):
        decode_sweep_cursor(cursor, run_ids[::-1])


def test_a_live_sweep_holds_back_newest_steps_and_times_out(client, app_session) -> None:  # noqa: ANN001
    sweep = make_sweep(client, 2)
    live, other = (run["id"] for run in sweep["runs"])
    assert store.claim_run(app_session, live, "w")
    store.add_metrics(app_session, live, [("train_loss", 1, 2.0), ("train_loss", 2, 1.5)])
    received = stream(client, sweep["id"], params={"timeout": 0.2})
    assert points(received) == [(live, 1)]  # step 2 may still be incomplete
    assert "end" not in [e["event"] for e in received]
    assert {e["data"]["id"] for e in received if e["event"] == "status"} == {live, other}


def test_a_deleted_run_makes_old_ids_a_conflict(client, app_session, finished_sweep) -> None:  # noqa: ANN001
    sweep_id, run_ids, _ = finished_sweep
    old = [e for e in stream(client, sweep_id) if e["event"] == "metrics"][5]["id"]
    assert client.delete(f"/api/v1/runs/{run_ids[1]}").status_code == 204
    response = client.get(f"{SWEEPS}/{sweep_id}/events", headers={"Last-Event-ID": old})
    assert response.status_code == 409
    assert stream(client, sweep_id)[-1]["data"]["counts"] == {"succeeded": 2, "failed": 1}


def counted_sweep_reads(monkeypatch, gate: threading.Event | None = None) -> list[str]:  # noqa: ANN001
    """Every read of a sweep's rows from now on (``events._sweep_rows``: the opening read and
    the polls), by sweep id; each waits for ``gate`` if one is given."""
    calls: list[str] = []
    sweep_rows = events._sweep_rows

    def counted(session, sweep_id: str) -> list:  # noqa: ANN001
        calls.append(sweep_id)
        if gate is not None:
            gate.wait(5)
        return sweep_rows(session, sweep_id)

    monkeypatch.setattr(events, "_sweep_rows", counted)
    return calls


def add_run(app, sweep_id: str) -> str:  # noqa: ANN001
    with app.state.session_factory() as session:
        run, _ = store.create_run(session, JobSpec(name="late", steps=10), sweep_id=sweep_id)
        return run.id


def test_streams_opening_together_read_the_sweep_once(client, app, monkeypatch) -> None:  # noqa: ANN001
    """20 streams opening at once read the sweep's run ids once (they read them once each);
    a stream that opens after a run was added is not given the list from before it."""
    sweep = make_sweep(client, 3)
    gate = threading.Event()
    calls = counted_sweep_reads(monkeypatch, gate)
    factory, reads = app.state.session_factory, SharedReads(ttl_s=60)  # nothing expires
    opened = time.monotonic()
    results: list[list[str] | None] = []

    def open_stream() -> None:
        results.append(events._sweep_run_ids(factory, sweep["id"], reads, opened))

    threads = [threading.Thread(target=open_stream) for _ in range(20)]
    for thread in threads:
        thread.start()
    wait_until(lambda: calls, 10, "the first read to start", step=0.01)
    gate.set()
    for thread in threads:
        thread.join()
    run_ids = results[0]
    assert run_ids is not None and sorted(run_ids) == sorted(r["id"] for r in sweep["runs"])
    assert results == [run_ids] * 20 and len(calls) == 1

    added = add_run(app, sweep["id"])
    # A stream opened before the run was added may share the read, as its polls would…
    assert events._sweep_run_ids(factory, sweep["id"], reads, opened) == run_ids
    # …one opened after it reads again and finds it (last: the newest run).
    later = time.monotonic()
    assert events._sweep_run_ids(factory, sweep["id"], reads, later) == [*run_ids, added]
    assert len(calls) == 2


def test_a_stream_shares_its_opening_read_and_a_later_one_sees_an_added_run(
    client, app, monkeypatch
) -> None:  # noqa: ANN001
    """Through the route: a stream's opening read of the sweep serves its polls too, and a
    stream opened after a run was added has that run (and its cursor no longer resumes an id
    made before), however fresh the shared reads still are."""
    sweep = make_sweep(client, 3)
    streams = StreamState(app.state.settings, events.POLL_INTERVAL_S)
    streams.reads = SharedReads(ttl_s=60)  # nothing expires: only the opening time decides
    app.state.streams = streams
    calls = counted_sweep_reads(monkeypatch)

    def statuses(**headers: str) -> list[str]:  # the runs in the stream's (cursor's) order
        received = stream(client, sweep["id"], params={"timeout": 0.2}, **headers)
        return [e["data"]["id"] for e in received if e["event"] == "status"]

    run_ids = statuses()
    assert sorted(run_ids) == sorted(r["id"] for r in sweep["runs"])
    assert len(calls) == 1  # the opening read; both polls of the stream shared it
    before = encode_sweep_cursor(run_ids, {})
    assert statuses(**{"Last-Event-ID": before}) == run_ids and len(calls) == 2

    added = add_run(app, sweep["id"])
    url = f"{SWEEPS}/{sweep['id']}/events"
    response = client.get(url, params={"timeout": 0.2}, headers={"Last-Event-ID": before})
    assert response.status_code == 409  # made for the list without the added run
    assert statuses() == [*run_ids, added] and len(calls) == 4


def test_an_open_stream_sees_a_run_added_to_the_sweep(client, app, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(events, "POLL_INTERVAL_S", 0.02)
    sweep = make_sweep(client, 2)
    run_ids = [run["id"] for run in sweep["runs"]]
    calls = counted_sweep_reads(monkeypatch)
    added: list[str] = []

    def worker() -> None:  # once the stream has its run ids: add a run, finish them all
        wait_until(lambda: len(calls) >= 2, 10, "the stream to poll", step=0.01)
        added.append(add_run(app, sweep["id"]))
        with app.state.session_factory() as session:
            for run_id in [*run_ids, added[0]]:
                finish(session, run_id)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        received = stream(client, sweep["id"], params={"timeout": 20})
    finally:
        thread.join()
    assert added[0] in {e["data"]["id"] for e in received if e["event"] == "status"}
    # The stream ends only once every run it knows of has finished: the added one included.
    assert received[-1]["event"] == "end"
    assert set(received[-1]["data"]["last_steps"]) == {*run_ids, added[0]}


def test_client_watch_sweep_follows_live_runs_to_the_end(client, app, monkeypatch) -> None:  # noqa: ANN001
    """Two runs trained meanwhile, a step's keys written separately; the client gets each step
    once, complete, and the final SweepOut."""
    monkeypatch.setattr(events, "POLL_INTERVAL_S", 0.02)
    sweep = make_sweep(client, 2)
    run_ids = [run["id"] for run in sweep["runs"]]

    def worker() -> None:
        with app.state.session_factory() as session:
            for run_id in run_ids:
                assert store.claim_run(session, run_id, "w")
            for step in range(1, 6):
                for run_id in run_ids:
                    store.add_metrics(session, run_id, [("train_loss", step, 1.0 / step)])
                time.sleep(0.02)
                for run_id in run_ids:
                    store.add_metrics(session, run_id, [("test_acc", step, step / 10)])
            for run_id in run_ids:
                store.finish_run(session, run_id, store.RunStatus.succeeded, "done")

    seen: list[RunEvent] = []
    thread = threading.Thread(target=worker)
    thread.start()
    try:
        final = BnlabClient(http=client).watch_sweep(sweep["id"], seen.append, timeout=20)
    finally:
        thread.join()
    assert final["counts"] == {"succeeded": 2}
    metrics = [e for e in seen if e.kind == "metrics"]
    got = [(e.data["run_id"], e.data["step"]) for e in metrics]
    assert sorted(got) == sorted((r, s) for r in run_ids for s in range(1, 6))
    assert all(set(e.data["values"]) == {"train_loss", "test_acc"} for e in metrics)
    assert seen[-1].kind == "end" and {e.via for e in seen} == {"stream"}


def test_openapi_documents_the_sweep_stream(client) -> None:  # noqa: ANN001
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/sweeps/{sweep_id}/events"]
    get = operation["get"]
    assert get["summary"] and "Last-Event-ID" in get["description"]
    assert "text/event-stream" in get["responses"]["200"]["content"]
    assert {"400", "404", "409"} <= set(get["responses"])


def test_client_watch_sweep_polls_a_server_without_the_stream() -> None:
    """An older server (404 "Not Found" from the router, not "sweep … not found"): polling."""
    import httpx2 as httpx

    statuses = iter([("queued", "queued"), ("running", "queued"), ("succeeded", "failed")])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"title": "Not Found", "detail": "Not Found"})
        a, b = next(statuses)
        runs = [{"id": "a", "status": a}, {"id": "b", "status": b}]
        return httpx.Response(200, json={"id": "s1", "runs": runs, "counts": {}})

    seen: list[RunEvent] = []
    transport = httpx.MockTransport(handler)
    with BnlabClient("http://bnlab.test", transport=transport) as bn:
        final = bn.watch_sweep("s1", seen.append, timeout=10, poll_interval=0.01)
    assert [r["status"] for r in final["runs"]] == ["succeeded", "failed"]
    # Only changes are reported: b stays queued on the second poll.
    assert [(e.data["id"], e.data["status"]) for e in seen] == [
        ("a", "queued"),
        ("b", "queued"),
        ("a", "running"),
        ("a", "succeeded"),
        ("b", "failed"),
    ]


def test_cli_follow_sweep_uses_the_stream(client, finished_sweep, monkeypatch) -> None:  # noqa: ANN001
    from service import cli

    sweep_id, _, _ = finished_sweep
    bn = BnlabClient(http=client)
    calls: list[str] = []
    watch = bn.watch_sweep
    monkeypatch.setattr(bn, "watch_sweep", lambda *a, **k: calls.append(a[0]) or watch(*a, **k))
    assert cli.follow_sweep(bn, sweep_id) == cli.EXIT_FAILED  # one run failed
    assert calls == [sweep_id]
