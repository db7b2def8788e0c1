"""Errors are problem+json: 422 naming field and bound, malformed JSON, 413, 503 DB down."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

RUNS = "/api/v1/runs"
PROBLEM = "application/problem+json"


def problem_of(response) -> dict:  # noqa: ANN001
    assert response.headers["content-type"] == PROBLEM, response.text
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == response.status_code
    return body


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"steps": 10_000_000}, "steps", "Input should be less than or equal to 200000"),
        ({"batch_size": 1}, "batch_size", "Input should be greater than or equal to 2"),
        ({"optimizer": {"lr": "Infinity"}}, "optimizer.lr", "Input should be a finite number"),
        ({"model": {"hidden": [0]}}, "model.hidden[0]", "greater than or equal to 1"),
        ({"frobnicate": 1}, "frobnicate", "Extra inputs are not permitted"),
        ({"model": {"norm": "layernorm"}}, "model.norm", "Input should be 'none'"),
        ({"replicas": 9}, "replicas", "Input should be less than or equal to 8"),
        ({"replicas": 0}, "replicas", "Input should be greater than or equal to 1"),
        (
            {"batch_size": 60, "replicas": 8},
            "replicas",
            "batch_size 60 must be divisible by replicas 8",
        ),
    ],
)
def test_422_names_field_and_bound(client, body: dict, field: str, message: str) -> None:  # noqa: ANN001
    response = client.post(RUNS, json=body)
    assert response.status_code == 422
    problem = problem_of(response)
    assert problem["detail"].startswith(f"{field}: ")
    assert message in problem["detail"]
    assert any(message in err["msg"] for err in problem["errors"])
    assert problem["errors"][0]["loc"][0] == "body"


def test_json_overflowing_float_is_not_finite(client) -> None:  # noqa: ANN001
    # JSON cannot carry inf; 1e400 is how a client ends up sending it.
    response = client.post(
        RUNS, content=b'{"optimizer": {"lr": 1e400}}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert problem_of(response)["detail"] == "optimizer.lr: Input should be a finite number"


def test_spec_level_error_is_readable(client) -> None:  # noqa: ANN001
    response = client.post(RUNS, json={"dataset": "npz"})
    assert response.status_code == 422
    assert "data_path is required" in problem_of(response)["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (  # ghost batches of one example have no batch statistics
            {"batch_size": 8, "replicas": 8, "model": {"norm": "batchnorm"}},
            "batch_size 8 / replicas 8 leaves 1 example",
        ),
        (
            {"replicas": 2, "device": "cpu", "model": {"norm": "torch_sync_batchnorm"}},
            "torch_sync_batchnorm (torch.nn.SyncBatchNorm) runs on GPUs only",
        ),
    ],
)
def test_replicas_that_cannot_run_are_422_saying_why(client, body: dict, message: str) -> None:  # noqa: ANN001
    response = client.post(RUNS, json=body)
    assert response.status_code == 422
    assert message in problem_of(response)["detail"]


@pytest.mark.parametrize("raw", [b'{"steps": ', b"not json", b'{"steps": 10,}'])
def test_malformed_json_is_400(client, raw: bytes) -> None:  # noqa: ANN001
    response = client.post(RUNS, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert problem_of(response)["detail"].startswith("malformed JSON body")


def test_body_too_large_by_content_length(client, settings) -> None:  # noqa: ANN001
    body = b'{"name": "' + b"x" * settings.max_body_bytes + b'"}'
    response = client.post(RUNS, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert str(settings.max_body_bytes) in problem_of(response)["detail"]


def test_body_too_large_when_streamed_without_length(client, settings) -> None:  # noqa: ANN001
    def chunks():  # noqa: ANN202 (a generator body is sent chunked, with no Content-Length)
        yield b'{"name": "'
        for _ in range(settings.max_body_bytes // 1000 + 2):
            yield b"x" * 1000
        yield b'"}'

    response = client.post(RUNS, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    problem_of(response)


def test_small_streamed_body_still_works(client) -> None:  # noqa: ANN001
    def chunks():  # noqa: ANN202
        yield b'{"steps": '
        yield b"12}"

    response = client.post(RUNS, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 201 and response.json()["spec"]["steps"] == 12


def test_unknown_route_and_method_are_problems(client) -> None:  # noqa: ANN001
    assert problem_of(client.get("/api/v1/nothing"))["status"] == 404
    assert problem_of(client.put(RUNS))["status"] == 405


def test_database_down_is_503_without_a_trace(tmp_path: Path, executor, caplog) -> None:  # noqa: ANN001
    folder = tmp_path / "db"
    folder.mkdir()
    settings = Settings(_env_file=None, database_url=f"sqlite:///{folder}/bnlab.db")
    app = create_app(settings, executor=executor)
    with TestClient(app) as client:
        assert client.post(RUNS, json={"steps": 10}).status_code == 201
        app.state.engine.dispose()  # drop pooled connections to the file we remove
        shutil.rmtree(folder)
        for response in (client.get(RUNS), client.post(RUNS, json={"steps": 10})):
            assert response.status_code == 503
            problem = problem_of(response)
            assert problem["detail"] == "database unavailable"
            assert "Traceback" not in response.text and "sqlite" not in response.text.lower()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and problem_of(ready)["detail"] == "database unavailable"
    assert "Traceback" not in caplog.text
