"""Health, readiness, Prometheus, /workers, API-key auth and the OpenAPI document."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from service import store
from service.app import create_app
from service.models import Worker, utcnow
from service.settings import hash_key

RUNS = "/api/v1/runs"


def test_healthz_and_readyz(client, executor) -> None:  # noqa: ANN001
    assert client.get("/healthz").json() == {"status": "ok", "database": None, "broker": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] and ready.json()["broker"]

    executor.broker_up = False
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.headers["content-type"] == "application/problem+json"
    assert down.json()["detail"] == "broker unavailable"


def test_prometheus_exposition(client) -> None:  # noqa: ANN001
    run = client.post(RUNS, json={"steps": 10}).json()
    client.get(f"{RUNS}/{run['id']}")
    client.get(f"{RUNS}/does-not-exist")
    text = client.get("/metrics").text
    assert 'bnlab_http_requests_total{method="POST",route="/api/v1/runs",status="201"} 1.0' in text
    assert 'route="/api/v1/runs/{run_id}",status="404"' in text  # the template, not the id
    assert "bnlab_http_request_duration_seconds_bucket" in text
    assert 'bnlab_runs{status="queued"} 1.0' in text
    assert "bnlab_queue_depth 1.0" in text
    assert "bnlab_database_up 1.0" in text
    assert run["id"] not in text


def test_workers_alive_by_heartbeat(client, app_session) -> None:  # noqa: ANN001
    store.worker_seen(app_session, "fresh", device="cpu", current_run_id=None)
    app_session.add(
        Worker(name="stale", device="cuda:0", last_heartbeat=utcnow() - timedelta(hours=1))
    )
    app_session.commit()
    client.post(RUNS, json={"steps": 10})
    body = client.get("/api/v1/workers").json()
    assert {w["name"]: w["alive"] for w in body["workers"]} == {"fresh": True, "stale": False}
    assert body["queue_depth"] == 1


# ----------------------------------------------------------------------------- auth

KEY = "s3cret-key"


@pytest.fixture
def auth_app(settings, executor):  # noqa: ANN001, ANN201
    settings.api_key_hashes = [hash_key(KEY)]
    return create_app(settings, executor=executor)


def test_writes_need_a_key(auth_app, caplog) -> None:  # noqa: ANN001
    with TestClient(auth_app) as client, caplog.at_level(logging.DEBUG):
        missing = client.post(RUNS, json={"steps": 10})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.headers["content-type"] == "application/problem+json"
        wrong = client.post(RUNS, json={"steps": 10}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        ok = client.post(RUNS, json={"steps": 10}, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 201
        also_ok = client.post(RUNS, json={"steps": 10}, headers={"X-API-Key": KEY})
        assert also_ok.status_code == 201
        run_id = ok.json()["id"]
        assert client.post(f"{RUNS}/{run_id}/cancel").status_code == 401
        assert client.get(RUNS).status_code == 200  # reads are open by default
        assert client.get("/readyz").status_code == 200  # probes never need a key
    assert KEY not in caplog.text


def test_reads_need_a_key_with_auth_reads(settings, executor) -> None:  # noqa: ANN001
    settings.api_key_hashes = [hash_key(KEY)]
    settings.auth_reads = True
    with TestClient(create_app(settings, executor=executor)) as client:
        assert client.get(RUNS).status_code == 401
        assert client.get(RUNS, headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.get(RUNS, headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/healthz").status_code == 200


# ----------------------------------------------------------------------------- OpenAPI


def test_openapi_documents_routes_and_examples(client) -> None:  # noqa: ANN001
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/runs",
        "/api/v1/runs/{run_id}",
        "/api/v1/runs/{run_id}/cancel",
        "/api/v1/runs/{run_id}/metrics",
        "/api/v1/runs/{run_id}/events",
        "/api/v1/sweeps",
        "/api/v1/sweeps/{sweep_id}",
        "/api/v1/sweeps/{sweep_id}/events",
        "/api/v1/compare",
        "/api/v1/compare/plot",
        "/api/v1/workers",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    post = paths["/api/v1/runs"]["post"]
    assert post["summary"] and post["tags"] == ["runs"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    job_spec = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert job_spec["examples"][0]["model"]["norm"] == "batchnorm"
    sweep_body = paths["/api/v1/sweeps"]["post"]["requestBody"]["content"]["application/json"]
    assert "bn-vs-none" in sweep_body["examples"]
    assert "422" in post["responses"] and "application/problem+json" in str(post["responses"])
