"""POST/GET/cancel/DELETE /api/v1/runs through the real app (SQLite, lifespan running)."""

from __future__ import annotations

import logging

import pytest

from service import store
from service.app import maintain

RUNS = "/api/v1/runs"


def submit(client, **spec):  # noqa: ANN001, ANN201
    response = client.post(RUNS, json={"steps": 10, **spec})
    assert response.status_code == 201, response.text
    return response.json()


def finish(session, run_id: str, status=store.RunStatus.succeeded) -> None:  # noqa: ANN001
    assert store.claim_run(session, run_id, "test-worker")
    assert store.finish_run(session, run_id, status, "done (test)")


def test_create_get_and_submit(client, executor, caplog) -> None:  # noqa: ANN001
    with caplog.at_level(logging.INFO, logger="bnlab.api"):
        response = client.post(RUNS, json={"name": "bn", "steps": 50, "optimizer": {"lr": 0.25}})
    assert response.status_code == 201
    run = response.json()
    assert response.headers["location"] == f"{RUNS}/{run['id']}"
    assert run["status"] == "queued" and run["spec"]["steps"] == 50
    assert run["created_at"].endswith("Z") or run["created_at"].endswith("+00:00")
    assert executor.submitted == [run["id"]]
    assert f"run {run['id']} created (norm=batchnorm, lr=0.25)" in caplog.text

    got = client.get(f"{RUNS}/{run['id']}")
    assert got.status_code == 200 and got.json()["id"] == run["id"]


def test_idempotency_key_returns_the_same_run(client, executor) -> None:  # noqa: ANN001
    headers = {"Idempotency-Key": "abc-123"}
    first = client.post(RUNS, json={"steps": 10}, headers=headers)
    again = client.post(RUNS, json={"steps": 10}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert executor.submitted == [first.json()["id"]]  # submitted once
    other = client.post(RUNS, json={"steps": 11}, headers=headers)
    assert other.status_code == 409 and "different spec" in other.json()["detail"]
    too_long = client.post(RUNS, json={"steps": 10}, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and "idempotency-key" in too_long.json()["detail"]


def test_pagination_visits_every_run_once(client) -> None:  # noqa: ANN001
    created = {submit(client, name=f"r{i}")["id"] for i in range(7)}
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(RUNS, params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 7 and set(seen) == created


def test_list_filters(client, app_session) -> None:  # noqa: ANN001
    a = submit(client, name="alpha")
    submit(client, name="beta")
    finish(app_session, a["id"])
    assert [r["id"] for r in client.get(RUNS, params={"status": "succeeded"}).json()["items"]] == [
        a["id"]
    ]
    assert len(client.get(RUNS, params={"name": "beta"}).json()["items"]) == 1
    bad = client.get(RUNS, params={"status": "exploded"})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("status:")


@pytest.mark.parametrize("cursor", ["garbage", "bm90LWEtY3Vyc29y", "%%%"])
def test_invalid_cursor_is_400(client, cursor: str) -> None:  # noqa: ANN001
    response = client.get(RUNS, params={"cursor": cursor})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert "cursor" in response.json()["detail"]


def test_unknown_run_is_404_naming_the_id(client) -> None:  # noqa: ANN001
    for method, path in [
        ("GET", f"{RUNS}/nope"),
        ("POST", f"{RUNS}/nope/cancel"),
        ("DELETE", f"{RUNS}/nope"),
        ("GET", f"{RUNS}/nope/metrics"),
        ("GET", f"{RUNS}/nope/events"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["detail"] == "run nope not found"


def test_cancel_queued_running_and_finished(client, app_session) -> None:  # noqa: ANN001
    queued = submit(client)
    response = client.post(f"{RUNS}/{queued['id']}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert client.post(f"{RUNS}/{queued['id']}/cancel").status_code == 202  # idempotent

    running = submit(client)
    assert store.claim_run(app_session, running["id"], "w1")
    response = client.post(f"{RUNS}/{running['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"]

    done = submit(client)
    finish(app_session, done["id"])
    response = client.post(f"{RUNS}/{done['id']}/cancel")
    assert response.status_code == 409 and "already finished" in response.json()["detail"]


def test_delete_only_finished_runs(client, app_session) -> None:  # noqa: ANN001
    run = submit(client)
    response = client.delete(f"{RUNS}/{run['id']}")
    assert response.status_code == 409 and "cancel it" in response.json()["detail"]
    finish(app_session, run["id"])
    store.add_metrics(app_session, run["id"], [("train_loss", 1, 2.0)])
    assert client.delete(f"{RUNS}/{run['id']}").status_code == 204
    assert client.get(f"{RUNS}/{run['id']}").status_code == 404
    assert store.get_metrics(app_session, run["id"]) == {}


def test_broker_down_keeps_run_queued_and_maintenance_resubmits(app, client, executor) -> None:  # noqa: ANN001
    executor.fail_submit = True
    run = submit(client)
    assert run["status"] == "queued"
    assert run["status_reason"] == store.SUBMIT_FAILED
    executor.fail_submit = False
    maintain(app)
    assert executor.submitted == [run["id"]]
    assert client.get(f"{RUNS}/{run['id']}").json()["status_reason"] == store.WAITING


def test_maintenance_requeues_stale_runs(app, client, executor, app_session) -> None:  # noqa: ANN001
    run = submit(client)
    executor.submitted.clear()
    assert store.claim_run(app_session, run["id"], "gone-worker")
    app.state.settings.heartbeat_timeout_s = 0.0  # every heartbeat is stale now
    maintain(app)
    assert client.get(f"{RUNS}/{run['id']}").json()["status"] == "queued"
    assert executor.submitted == [run["id"]]


def test_lifespan_starts_and_stops_the_executor(app, executor) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    with TestClient(app):
        assert executor.started and not executor.stopped
    assert executor.stopped


def test_maintenance_loop_runs_in_the_background(settings, executor) -> None:  # noqa: ANN001
    import time

    from fastapi.testclient import TestClient

    from service.app import create_app

    settings.heartbeat_timeout_s = 0.2  # a pass every 0.05 s
    executor.fail_submit = True
    with TestClient(create_app(settings, executor=executor)) as client:
        run = submit(client)
        assert run["status_reason"] == store.SUBMIT_FAILED
        executor.fail_submit = False
        deadline = time.monotonic() + 10
        while not executor.submitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert executor.submitted == [run["id"]]
