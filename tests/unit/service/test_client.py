"""service.client: problem+json errors, cursor paging, metrics merging, SSE parsing and the
reconnect/poll logic of wait(), against httpx.MockTransport (no server).

The tests against the real FastAPI app are in test_client_app section at the bottom.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx2 as httpx
import pytest

from bncore.spec import JobSpec
from service.client import BnlabClient, BnlabError, RunEvent, parse_sse, series_to_rows
from service.executor import RecordingExecutor

Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kwargs) -> BnlabClient:
    return BnlabClient("http://bnlab.test", transport=httpx.MockTransport(handler), **kwargs)


def run_out(run_id: str = "r1", status: str = "running", **extra) -> dict:
    return {"id": run_id, "name": "run", "status": status, "spec": {"steps": 20}} | extra


def sse(*messages: tuple[str, dict, int | None]) -> bytes:
    chunks = [": keep-alive\n\n"]
    for event, data, event_id in messages:
        chunks.append(
            (f"id: {event_id}\n" if event_id is not None else "")
            + f"event: {event}\ndata: {json.dumps(data)}\n\n"
        )
    return "".join(chunks).encode()


def event_stream(body: bytes) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


# ----------------------------------------------------------------------------- errors


def test_problem_json_becomes_bnlab_error_with_fields() -> None:
    problem = {
        "type": "about:blank",
        "title": "Unprocessable Content",
        "status": 422,
        "detail": "optimizer.lr: Input should be less than or equal to 100",
        "errors": [{"loc": ["body", "optimizer", "lr"], "msg": "Input should be <= 100"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            422, json=problem, headers={"content-type": "application/problem+json"}
        )

    with pytest.raises(BnlabError) as caught, mock_client(handler) as client:
        client.submit({"optimizer": {"lr": 1000}})
    error = caught.value
    assert (error.status, error.title) == (422, "Unprocessable Content")
    assert "optimizer.lr" in error.detail
    assert "optimizer.lr: Input should be <= 100" in str(error)


def test_connection_refused_says_cannot_reach() -> None:
    with BnlabClient("http://127.0.0.1:1", timeout=2) as client, pytest.raises(BnlabError) as e:
        client.health()
    assert str(e.value).startswith("cannot reach bnlab at http://127.0.0.1:1")


def test_api_key_and_idempotency_key_are_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=run_out(status="queued"))

    with mock_client(handler, api_key="s3cret") as client:
        client.submit(JobSpec(dataset="digits", steps=5), idempotency_key="once")
    request = seen[0]
    assert request.headers["authorization"] == "Bearer s3cret"
    assert request.headers["idempotency-key"] == "once"
    assert json.loads(request.content)["dataset"] == "digits"


# ----------------------------------------------------------------------------- paging


def test_list_runs_follows_cursors_and_stops_at_limit() -> None:
    pages = {None: (["a", "b"], "c1"), "c1": (["c", "d"], "c2"), "c2": (["e"], None)}
    requested: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        requested.append(cursor)
        ids, next_cursor = pages[cursor]
        return httpx.Response(
            200, json={"items": [run_out(i) for i in ids], "next_cursor": next_cursor}
        )

    with mock_client(handler) as client:
        assert [r["id"] for r in client.list_runs()] == ["a", "b", "c", "d", "e"]
        requested.clear()
        assert [r["id"] for r in client.list_runs(limit=3)] == ["a", "b", "c"]
        assert requested == [None, "c1"]


def test_metrics_merges_pages_into_plain_lists_and_rows() -> None:
    pages = {
        None: ({"loss": ([1, 2], [0.9, 0.8]), "acc": ([2], [0.5])}, "p2"),
        "p2": ({"loss": ([3], [0.7]), "acc": ([4], [None])}, None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        series, next_cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(
            200,
            json={
                "run_id": "r1",
                "keys": {},
                "series": {
                    k: {"steps": s, "values": v, "total_points": len(s), "downsampled": False}
                    for k, (s, v) in series.items()
                },
                "next_cursor": next_cursor,
            },
        )

    with mock_client(handler) as client:
        series = client.metrics("r1")
        assert series["loss"] == {"steps": [1, 2, 3], "values": [0.9, 0.8, 0.7]}
        assert series["acc"] == {"steps": [2, 4], "values": [0.5, None]}
        assert client.metrics_table("r1") == [
            {"step": 1, "acc": None, "loss": 0.9},
            {"step": 2, "acc": 0.5, "loss": 0.8},
            {"step": 3, "acc": None, "loss": 0.7},
            {"step": 4, "acc": None, "loss": None},
        ]


def test_series_to_rows_empty() -> None:
    assert series_to_rows({}) == []


# ----------------------------------------------------------------------------- SSE


def test_parse_sse_framing() -> None:
    lines = [
        ": comment",
        "id: 3",
        "event: metrics",
        'data: {"step": 3,',
        'data:  "values": {}}',
        "",
        "data: plain",
        "",
        "event: cut-off",
        "data: never dispatched",
    ]
    messages = list(parse_sse(iter(lines)))
    assert [(m.event, m.id) for m in messages] == [("metrics", "3"), ("message", "3")]
    assert json.loads(messages[0].data) == {"step": 3, "values": {}}
    assert messages[1].data == "plain"


def test_wait_follows_stream_and_resumes_with_last_event_id() -> None:
    """The first connection drops after step 2 (no `end`); the client reconnects with
    Last-Event-ID: 2 and gets the rest."""
    last_event_ids: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            last_event_ids.append(request.headers.get("last-event-id"))
            if len(last_event_ids) == 1:
                return event_stream(
                    sse(
                        ("status", run_out(), None),
                        ("metrics", {"step": 1, "values": {"train_loss": 2.0}}, 1),
                        ("metrics", {"step": 2, "values": {"train_loss": 1.5}}, 2),
                    )
                )
            return event_stream(
                sse(
                    ("metrics", {"step": 3, "values": {"train_loss": 1.0}}, 3),
                    ("status", run_out(status="succeeded"), 3),
                    ("end", {}, 3),
                )
            )
        status = "running" if len(last_event_ids) < 2 else "succeeded"
        return httpx.Response(200, json=run_out(status=status))

    events: list[RunEvent] = []
    with mock_client(handler) as client:
        final = client.wait("r1", on_event=events.append, timeout=10)
    assert final["status"] == "succeeded"
    assert last_event_ids == [None, "2"]
    steps = [e.data["step"] for e in events if e.kind == "metrics"]
    assert steps == [1, 2, 3]
    assert events[-1].kind == "end"


def test_wait_resumes_after_a_read_error_mid_stream() -> None:
    calls: list[str | None] = []

    def broken_body() -> Iterator[bytes]:
        yield sse(("metrics", {"step": 1, "values": {}}, 1))
        raise httpx.ReadError("connection reset")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            calls.append(request.headers.get("last-event-id"))
            if len(calls) == 1:
                return httpx.Response(
                    200, content=broken_body(), headers={"content-type": "text/event-stream"}
                )
            return event_stream(sse(("end", {}, None)))
        return httpx.Response(200, json=run_out(status="running" if len(calls) < 2 else "failed"))

    with mock_client(handler) as client:
        assert client.wait("r1", timeout=10)["status"] == "failed"
    assert calls == [None, "1"]


def test_wait_survives_a_restarting_server() -> None:
    """Refused connections while waiting are retried; the stream resumes where it was."""
    attempts: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            attempts.append(request.headers.get("last-event-id"))
            if len(attempts) == 1:
                return event_stream(sse(("metrics", {"step": 5, "values": {}}, 5)))
            if len(attempts) == 2:
                raise httpx.ConnectError("connection refused", request=request)
            return event_stream(sse(("end", {}, None)))
        if len(attempts) == 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(
            200, json=run_out(status="succeeded" if len(attempts) > 2 else "running")
        )

    with mock_client(handler) as client:
        assert client.wait("r1", timeout=20)["status"] == "succeeded"
    assert attempts == [None, "5", "5"]


def test_wait_gives_up_clearly_when_the_server_is_gone() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with mock_client(handler) as client, pytest.raises(BnlabError, match="cannot reach"):
        client.wait("r1", timeout=20, max_reconnects=1)


def test_wait_falls_back_to_polling_without_an_event_stream() -> None:
    statuses = iter(["queued", "running", "diverged"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(404, json={"title": "Not Found", "detail": "Not Found"})
        return httpx.Response(200, json=run_out(status=next(statuses)))

    events: list[RunEvent] = []
    with mock_client(handler) as client:
        final = client.wait("r1", on_event=events.append, poll_interval=0.01, timeout=10)
    assert final["status"] == "diverged"
    assert [e.data["status"] for e in events] == ["queued", "running", "diverged"]
    assert {e.via for e in events} == {"poll"}


def test_wait_unknown_run_raises_404() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json={"title": "Not Found", "status": 404, "detail": "run nope not found"}
        )

    with mock_client(handler) as client, pytest.raises(BnlabError) as caught:
        client.wait("nope", timeout=5)
    assert caught.value.status == 404


def test_compare_needs_runs_or_sweep() -> None:
    client = mock_client(lambda r: httpx.Response(200, json={}))
    with pytest.raises(BnlabError, match="run ids or a sweep"):
        client.compare()


def test_compare_refuses_an_unknown_argument_before_any_request() -> None:
    def no_request(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    client = mock_client(no_request)
    with pytest.raises(TypeError, match="unknown compare argument.*sweeps"):
        client.compare(sweeps="abc")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unknown compare argument.*colour"):
        client.compare_plot(sweep="abc", colour="red")  # type: ignore[call-arg]


# ----------------------------------------------------------------------------- the real app

TINY_SPEC = {
    "name": "tiny",
    "dataset": "digits",
    "model": {"hidden": [8], "norm": "batchnorm"},
    "steps": 20,
    "eval_every": 10,
    "batch_size": 32,
    "device": "cpu",
}


def app_settings(tmp_path, **overrides):
    from service.settings import Settings

    values = {"database_url": f"sqlite:///{tmp_path / 'bnlab.db'}", "broker_url": None}
    return Settings(_env_file=None, **(values | overrides))


@pytest.fixture
def api(tmp_path):
    """(BnlabClient on the in-process app, the app, its recording executor)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    executor = RecordingExecutor()
    app = create_app(app_settings(tmp_path, max_metric_points=10), executor=executor)
    with TestClient(app) as http:
        yield BnlabClient(http=http), app, executor


def play_worker(app, run_id: str, points: list[tuple[str, int, float]], outcome: str) -> None:
    """What workers/execute.py does to a run, straight through the store."""
    from service import store

    with app.state.session_factory() as session:
        assert store.claim_run(session, run_id, "test-worker")
        store.add_metrics(session, run_id, points)
        store.finish_run(
            session,
            run_id,
            store.RunStatus(outcome),
            f"trainer {outcome}",
            summary={"best_test_acc": max(v for k, _, v in points if k == "test_acc")},
        )


def curve(reach: float, steps: int = 25) -> list[tuple[str, int, float]]:
    """train_loss every step; test_acc every 5 steps, rising by `reach` per evaluation."""
    points = [("train_loss", s, 2.0 / (s + 1)) for s in range(1, steps + 1)]
    points += [("test_acc", s, min(1.0, 0.1 + reach * s / 5)) for s in range(0, steps + 1, 5)]
    return points


def test_app_submit_get_list_cancel_delete(api) -> None:
    client, _app, executor = api
    run = client.submit(JobSpec.model_validate(TINY_SPEC), idempotency_key="k1")
    assert run["status"] == "queued" and executor.submitted == [run["id"]]
    assert client.submit(TINY_SPEC, idempotency_key="k1")["id"] == run["id"]
    other = client.submit(TINY_SPEC | {"name": "other"})
    assert client.get_run(run["id"])["name"] == "tiny"
    assert [r["id"] for r in client.list_runs(name="other")] == [other["id"]]
    assert {r["id"] for r in client.list_runs(status="queued")} == {run["id"], other["id"]}
    assert client.cancel(run["id"])["status"] == "cancelled"
    client.delete(run["id"])
    with pytest.raises(BnlabError) as caught:
        client.get_run(run["id"])
    assert caught.value.status == 404
    with pytest.raises(BnlabError) as caught:
        client.delete(other["id"])  # still queued
    assert caught.value.status == 409


def test_app_invalid_spec_names_the_field(api) -> None:
    client, _, _ = api
    with pytest.raises(BnlabError) as caught:
        client.submit(TINY_SPEC | {"batch_size": 1})
    assert caught.value.status == 422
    assert "batch_size" in str(caught.value)


def test_app_wait_streams_a_finished_run_and_metrics_pages(api) -> None:
    client, app, _ = api
    run = client.submit(TINY_SPEC)
    play_worker(app, run["id"], curve(0.2), "succeeded")

    events: list[RunEvent] = []
    final = client.wait(run["id"], on_event=events.append, timeout=30)
    assert final["status"] == "succeeded"
    metric_steps = [e.data["step"] for e in events if e.kind == "metrics"]
    assert metric_steps == list(range(26))
    assert events[-1].kind == "end"

    series = client.metrics(run["id"])  # 25 points per key, server pages of 10
    assert series["train_loss"]["steps"] == list(range(1, 26))
    assert series["test_acc"]["steps"] == [0, 5, 10, 15, 20, 25]
    small = client.metrics(run["id"], keys=["train_loss"], max_points=5)
    assert list(small) == ["train_loss"] and len(small["train_loss"]["steps"]) <= 5
    rows = client.metrics_table(run["id"])
    assert rows[0] == {"step": 0, "test_acc": pytest.approx(0.1), "train_loss": None}


def test_app_sweep_and_compare(api) -> None:
    client, app, _ = api
    sweep = client.sweep("bn-vs-none", TINY_SPEC, {"model.norm": ["none", "batchnorm"]})
    none_run, bn_run = sorted(sweep["runs"], key=lambda r: r["spec"]["model"]["norm"] != "none")
    play_worker(app, none_run["id"], curve(0.1), "succeeded")
    play_worker(app, bn_run["id"], curve(0.4), "succeeded")

    result = client.compare(sweep=sweep["id"])
    assert result["baseline_id"] == none_run["id"]
    speedups = {r["id"]: r["speedup"] for r in result["runs"]}
    assert speedups[none_run["id"]] == pytest.approx(1.0)
    assert speedups[bn_run["id"]] > 1
    table = client.compare(run_ids=[none_run["id"], bn_run["id"]], fmt="csv")
    assert table.startswith("row_type,")
    svg = client.compare_plot(sweep=sweep["id"], fmt="svg")
    assert b"<svg" in svg[:2000]


def test_app_wait_times_out_on_a_run_that_never_starts(api) -> None:
    client, _, _ = api
    run = client.submit(TINY_SPEC)
    with pytest.raises(BnlabError, match="timed out waiting"):
        client.wait(run["id"], timeout=1.0)


def test_app_health(api) -> None:
    client, _, _ = api
    client.health()
    client.ready()


@pytest.mark.slow
def test_real_embedded_run_finishes(tmp_path) -> None:
    """The whole path: API → LocalExecutor → workers.execute → python -m bncore.train."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(app_settings(tmp_path, heartbeat_interval_s=1.0))
    with TestClient(app) as http:
        client = BnlabClient(http=http)
        run = client.submit(TINY_SPEC)
        steps: list[int] = []

        def on_event(event: RunEvent) -> None:
            if event.kind == "metrics":
                steps.append(event.data["step"])

        final = client.wait(run["id"], on_event=on_event, timeout=240)
    assert final["status"] == "succeeded", final
    assert steps[-1] == 20 and final["summary"]["best_test_acc"] > 0


# ----------------------------------------------------------------------------- run id prefixes


def test_resolve_run_id_asks_the_server_for_the_prefix() -> None:
    """A prefix of 4+ characters: one GET /runs?id_prefix=, no scan of every run; a shorter
    one (the server refuses those) is matched over the pages of all runs."""
    full = "6f1c2a9b-0000-4000-8000-000000000001"
    other = "6a000000-0000-4000-8000-000000000002"
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        prefix = request.url.params.get("id_prefix", "")
        items = [run_out(i) for i in (full, other) if i.startswith(prefix)]
        return httpx.Response(200, json={"items": items, "next_cursor": None})

    with mock_client(handler) as client:
        assert client.resolve_run_id(full) == full and not seen  # a full id passes through
        assert client.resolve_run_id("6F1C2A9B") == full
        with pytest.raises(BnlabError, match="no run id starts with 'abcd'") as caught:
            client.resolve_run_id("abcd")
        assert caught.value.status == 404
        assert client.resolve_run_id("6f1") == full
        with pytest.raises(BnlabError, match="several runs start with '6'") as caught:
            client.resolve_run_id("6")
        assert (
            caught.value.status == 400 and full in str(caught.value) and other in str(caught.value)
        )
    assert seen == [
        {"id_prefix": "6f1c2a9b", "limit": "5"},
        {"id_prefix": "abcd", "limit": "5"},
        {"limit": "200"},
        {"limit": "200"},
    ]


def test_resolve_run_id_scans_when_a_server_ignores_the_filter() -> None:
    full = "6f1c2a9b-0000-4000-8000-000000000001"
    other = "0d3e77c4-0000-4000-8000-000000000002"

    def handler(request: httpx.Request) -> httpx.Response:  # no id_prefix filter here
        return httpx.Response(200, json={"items": [run_out(other), run_out(full)]})

    with mock_client(handler) as client:
        assert client.resolve_run_id("6f1c2a9b") == full


def test_resolve_run_id_rejects_what_is_not_an_id() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request for a malformed id")

    with mock_client(handler) as client:
        for text in ("", "xyz", "6f1c 2a", "../runs"):
            with pytest.raises(BnlabError, match="is not a run id") as caught:
                client.resolve_run_id(text)
            assert caught.value.status == 400


def test_app_resolve_run_id_by_the_server_and_by_scan(api) -> None:
    """8-character prefixes go through the server's id_prefix filter, 1-character ones are
    matched over the pages (the server takes 4 characters at least)."""
    client, _, _ = api
    ids = [client.submit(TINY_SPEC)["id"] for _ in range(17)]  # two share a first digit
    for run_id in ids:
        assert client.resolve_run_id(run_id[:8]) == run_id
        assert client.resolve_run_id(run_id) == run_id
    shared = next(i[0] for i in ids if sum(j[0] == i[0] for j in ids) > 1)
    with pytest.raises(BnlabError, match=f"several runs start with '{shared}'") as caught:
        client.resolve_run_id(shared)
    assert caught.value.status == 400
    assert sum(i in str(caught.value) for i in ids if i.startswith(shared)) >= 2
    unused = next(p for p in ("0000", "1111", "2222") if not any(i.startswith(p) for i in ids))
    with pytest.raises(BnlabError, match="no run id starts with") as caught:
        client.resolve_run_id(unused)
    assert caught.value.status == 404
