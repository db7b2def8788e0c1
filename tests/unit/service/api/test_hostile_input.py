"""Hostile and bad input: every request below gets a clear 4xx problem naming what is wrong,
and nothing is written (rows in runs, sweeps and metric_points are counted before and after;
nothing reaches the executor).

Covered: specs that would exhaust a worker (width, depth, steps, batch, parameter count, sweep
size), non-finite numbers, unknown fields, wrong types, oversized and undecodable bodies,
unknown ids, invalid cursors and out-of-range steps, and data paths that leave the data
directory (refused by the spec at submit time; symlinks by the trainer, tested in
test_data.py).
"""

from __future__ import annotations

import base64
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DataError

from bncore.spec import MAX_PARAMETERS, JobSpec
from service import store
from service.models import MetricPoint, Run, Sweep

RUNS = "/api/v1/runs"
SWEEPS = "/api/v1/sweeps"
PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}


def counts(app) -> tuple[int, int, int]:  # noqa: ANN001
    with app.state.session_factory() as session:
        return tuple(
            session.scalar(select(func.count()).select_from(table))
            for table in (Run, Sweep, MetricPoint)
        )


@pytest.fixture
def seeded(client, app):  # noqa: ANN001, ANN201
    """One run with a few metric points, so "nothing written" is checked against a non-empty
    database (and reads have something to find)."""
    run_id = client.post(RUNS, json={"name": "seed", "steps": 10}).json()["id"]
    with app.state.session_factory() as session:
        store.add_metrics(session, run_id, [("loss", s, 1.0 / (s + 1)) for s in range(5)])
    return run_id


def assert_refused(response, status: int, *needles: str) -> dict:  # noqa: ANN001
    """A problem+json of ``status`` whose detail contains every needle."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    assert "Traceback" not in response.text
    return body


# ----------------------------------------------------------------------------- specs

HUGE = [
    ({"steps": 10**9}, "steps", "less than or equal to 200000"),
    ({"batch_size": 10**6}, "batch_size", "less than or equal to 8192"),
    ({"model": {"hidden": [10**6]}}, "model.hidden[0]", "less than or equal to 4096"),
    ({"model": {"hidden": [8] * 17}}, "model.hidden", "at most 16 items"),
    ({"model": {"hidden": [8] * 10_000}}, "model.hidden", "at most 16 items"),
    ({"model": {"hidden": [4096] * 16}}, "body", f"more than the limit of {MAX_PARAMETERS:,}"),
    (
        {"model": {"arch": "cnn", "hidden": [4096] * 4}, "dataset": "digits"},
        "body",
        "parameters",
    ),
    ({"train_size": 10**9}, "train_size", "less than or equal to"),
    ({"synthetic_features": 10**6, "dataset": "synthetic"}, "synthetic_features", "4096"),
    ({"eval_every": 10**9}, "eval_every", "less than or equal"),
    ({"seed": 2**40}, "seed", "less than or equal"),
    ({"optimizer": {"lr": 1e6}}, "optimizer.lr", "less than or equal to 100"),
    ({"divergence_factor": 1e300}, "divergence_factor", "less than or equal"),
    ({"name": "x" * 10_000}, "name", "at most 200 characters"),
]
NON_FINITE = [
    (b'{"optimizer": {"lr": 1e400}}', "optimizer.lr"),
    (b'{"optimizer": {"lr": -1e400}}', "optimizer.lr"),
    (b'{"optimizer": {"lr": "NaN"}}', "optimizer.lr"),
    (b'{"optimizer": {"lr": "nan"}}', "optimizer.lr"),
    (b'{"optimizer": {"lr": NaN}}', "optimizer.lr"),
    (b'{"optimizer": {"momentum": "Infinity"}}', "optimizer.momentum"),
    (b'{"model": {"bn_eps": "-inf"}}', "model.bn_eps"),
    (b'{"divergence_factor": Infinity}', "divergence_factor"),
]
UNKNOWN_AND_WRONG = [
    ({"frobnicate": 1}, "frobnicate", "Extra inputs are not permitted"),
    ({"model": {"layers": 3}}, "model.layers", "Extra inputs are not permitted"),
    ({"optimizer": {"nesterov": True}}, "optimizer.nesterov", "Extra inputs are not permitted"),
    ({"steps": "many"}, "steps", "valid integer"),
    ({"steps": 10.5}, "steps", "fractional part"),
    ({"steps": None}, "steps", "valid integer"),
    ({"steps": [10]}, "steps", "valid integer"),
    ({"model": {"hidden": "100,100"}}, "model.hidden", "valid list"),
    ({"model": {"hidden": [[100]]}}, "model.hidden[0]", "valid integer"),
    ({"model": []}, "model", "valid dictionary"),
    ({"model": {"norm": "layernorm"}}, "model.norm", "'none', 'batchnorm'"),
    ({"dataset": "/etc/passwd"}, "dataset", "Input should be"),
    ({"device": "tpu"}, "device", "Input should be"),
    ({"name": ""}, "name", "at least 1 character"),
    ({"name": 42}, "name", "valid string"),
]
DATA_PATHS = [
    ("../secret.npz", "'..'"),
    ("sub/../../secret.npz", "'..'"),
    ("..\\secret.npz", "'..'"),
    ("sub/..", "'..'"),
    ("/etc/passwd", "absolute"),
    ("\\\\server\\share\\x.npz", "absolute"),
    ("C:\\data\\x.npz", "absolute"),
    ("x.npz\x00.png", "NUL"),
]


@pytest.mark.parametrize(("body", "field", "message"), HUGE, ids=lambda v: str(v)[:40])
def test_specs_that_would_exhaust_a_worker_are_refused(
    client, app, executor, seeded, body, field, message
) -> None:  # noqa: ANN001
    before = counts(app)
    problem = assert_refused(client.post(RUNS, json=body), 422, message)
    assert problem["detail"].startswith(f"{field}: ")
    assert counts(app) == before and executor.submitted == [seeded]


@pytest.mark.parametrize(("raw", "field"), NON_FINITE)
def test_non_finite_numbers_are_refused(client, app, seeded, raw: bytes, field: str) -> None:  # noqa: ANN001
    before = counts(app)
    response = client.post(RUNS, content=raw, headers=JSON)
    assert_refused(response, 422, f"{field}: Input should be a finite number")
    assert counts(app) == before


@pytest.mark.parametrize(("body", "field", "message"), UNKNOWN_AND_WRONG, ids=str)
def test_unknown_fields_and_wrong_types_are_refused(
    client, app, seeded, body, field, message
) -> None:  # noqa: ANN001
    before = counts(app)
    assert_refused(client.post(RUNS, json=body), 422, f"{field}: ", message)
    assert counts(app) == before


@pytest.mark.parametrize(("path", "reason"), DATA_PATHS, ids=repr)
def test_data_paths_leaving_the_data_dir_are_refused(
    client, app, seeded, path: str, reason: str
) -> None:  # noqa: ANN001
    before = counts(app)
    body = {"dataset": "npz", "data_path": path}
    problem = assert_refused(client.post(RUNS, json=body), 422, "data_path", reason)
    assert problem["errors"][0]["loc"] == ["body", "data_path"]
    # A sweep cannot smuggle one in through its grid either.
    grid = {"name": "s", "base": {"dataset": "npz", "data_path": "ok.npz"}, "grid": {}}
    grid["grid"] = {"data_path": ["fine.npz", path]}
    assert_refused(client.post(SWEEPS, json=grid), 422, "combination 1", "data_path")
    assert counts(app) == before


def test_relative_data_paths_inside_the_dir_are_accepted(client) -> None:  # noqa: ANN001
    for path in ("x.npz", "sub/dir/x.npz", "a..b.npz", "./x.npz"):
        response = client.post(RUNS, json={"dataset": "npz", "data_path": path})
        assert response.status_code == 201, response.text


def test_a_body_that_is_not_a_spec_object_is_refused(client, app, seeded) -> None:  # noqa: ANN001
    before = counts(app)
    for raw in (b"[1, 2]", b"null", b'"spec"', b"42"):
        assert_refused(client.post(RUNS, content=raw, headers=JSON), 422, "body: ")
    # No body at all, and a JSON body without a JSON content type.
    assert_refused(client.post(RUNS), 422, "body: Field required")
    text = {"content-type": "text/plain"}
    assert_refused(client.post(RUNS, content=b'{"steps": 5}', headers=text), 422, "body: ")
    assert counts(app) == before


# ----------------------------------------------------------------------------- bodies

MALFORMED = [
    (b'{"steps": ', "malformed JSON body at position"),
    (b'{"steps": 10,}', "malformed JSON body at position"),
    (b"{'steps': 10}", "malformed JSON body at position"),
    (b'{"name": "\xff\xfe"}', "not valid UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"steps": ' + b"9" * 5000 + b"}", "too many digits"),
]


@pytest.mark.parametrize(("raw", "reason"), MALFORMED, ids=lambda v: repr(v)[:30])
@pytest.mark.parametrize("route", [RUNS, SWEEPS])
def test_malformed_json_is_400_naming_the_problem(
    client, app, seeded, route: str, raw: bytes, reason: str
) -> None:  # noqa: ANN001
    before = counts(app)
    problem = assert_refused(client.post(route, content=raw, headers=JSON), 400, reason)
    assert problem["title"] == "Malformed JSON"
    assert counts(app) == before


def test_oversized_bodies_are_413_and_write_nothing(client, app, settings, seeded) -> None:  # noqa: ANN001
    before = counts(app)
    limit = settings.max_body_bytes
    big = b'{"name": "' + b"x" * limit + b'"}'
    for route in (RUNS, SWEEPS):
        assert_refused(client.post(route, content=big, headers=JSON), 413, str(limit))

    def chunks():  # noqa: ANN202 (no Content-Length: the limit counts what arrives)
        yield b'{"name": "s", "grid": {"seed": ['
        for _ in range(limit // 10_000 + 1):
            yield b"1," * 5_000
        yield b"1]}}"

    assert_refused(client.post(SWEEPS, content=chunks(), headers=JSON), 413, str(limit))
    # A lying Content-Length is no way around it either.
    response = client.post(RUNS, content=big, headers={**JSON, "content-length": "not a number"})
    assert response.status_code in (400, 413)
    assert counts(app) == before


# ----------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"seed": list(range(1001))}, "more than 1000 runs"),
        ({"seed": list(range(40)), "optimizer.lr": [0.1] * 40}, "more than 1000 runs"),
        ({f"seed{i}": [0, 1] for i in range(33)}, "at most 32 items"),
        ({"seed": []}, "has no values"),
        ({"model.nonsense": [1]}, "is not a spec field"),
        ({"seed.x": [1]}, "has no sub-fields"),
        ({"__class__": [1]}, "is not a spec field"),
        ({"model.hidden": [[8] * 17]}, "combination 0"),
        ({"steps": [10, 10**9]}, "combination 1 (steps=1000000000): steps: "),
        ({"optimizer.lr": [0.1, "NaN"]}, "combination 1"),
        ({"model.hidden": [[100], [4096] * 16]}, "more than the limit"),
    ],
    ids=lambda v: str(v)[:30],
)
def test_bad_sweeps_write_nothing(client, app, executor, seeded, grid, message) -> None:  # noqa: ANN001
    before = counts(app)
    assert_refused(client.post(SWEEPS, json={"name": "bad", "grid": grid}), 422, message)
    assert counts(app) == before and executor.submitted == [seeded]


# ----------------------------------------------------------------------------- ids, cursors


def test_unknown_ids_are_404_naming_the_id(client, app, seeded) -> None:  # noqa: ANN001
    before = counts(app)
    ghost = str(uuid.uuid4())
    for method, path in [
        ("GET", f"{RUNS}/{ghost}"),
        ("DELETE", f"{RUNS}/{ghost}"),
        ("POST", f"{RUNS}/{ghost}/cancel"),
        ("GET", f"{RUNS}/{ghost}/metrics"),
        ("GET", f"{RUNS}/{ghost}/events"),
        ("GET", f"{SWEEPS}/{ghost}"),
        ("GET", f"/api/v1/compare?runs={seeded},{ghost}"),
        ("GET", f"/api/v1/compare?sweep={ghost}"),
    ]:
        assert_refused(client.request(method, path), 404, ghost)
    # Ids that are not ids at all: odd characters are simply not found (an encoded path is
    # decoded first and then matches no route), overlong ones are 422.
    for odd in ("..%2F..%2Fetc%2Fpasswd", "%27%20OR%201%3D1--", "%E2%98%83", "%00"):
        assert_refused(client.get(f"{RUNS}/{odd}"), 404)
    assert_refused(client.get(f"{RUNS}/{'x' * 65}"), 422, "run_id: ", "at most 64")
    assert counts(app) == before


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "%%%",
        _b64("no separator"),
        _b64("not-a-date|run"),
        "\u2603",
        "x" * 500,
    ],
)
def test_invalid_run_cursors_are_400(client, seeded, cursor: str) -> None:  # noqa: ANN001
    assert_refused(client.get(RUNS, params={"cursor": cursor}), 400, "cursor: ")


def test_invalid_metric_cursors_and_steps(client, seeded) -> None:  # noqa: ANN001
    metrics = f"{RUNS}/{seeded}/metrics"
    for cursor in ("garbage", _b64("step:x"), _b64("page:3"), _b64("step:-5"), _b64("step:1e9")):
        assert_refused(client.get(metrics, params={"cursor": cursor}), 400, "cursor: ")
    huge = str(2**70)  # overflowed the database driver: a 500 before steps were bounded
    assert_refused(client.get(metrics, params={"cursor": _b64(f"step:{huge}")}), 400, "cursor")
    assert_refused(client.get(metrics, params={"step_min": huge}), 422, "step_min: ")
    assert_refused(client.get(metrics, params={"step_max": 2**31}), 422, "step_max: ")
    assert_refused(client.get(metrics, params={"step_min": -1}), 422, "step_min: ")
    assert_refused(client.get(metrics, params={"step_min": 5, "step_max": 1}), 400, "step_min")
    assert_refused(client.get(metrics, params={"keys": "loss;DROP TABLE"}), 400, "keys: ")
    assert_refused(
        client.get(metrics, params={"keys": ",".join(f"k{i}" for i in range(65))}),
        400,
        "at most 64",
    )
    assert_refused(client.get(metrics, params={"max_points": 2}), 422, "max_points: ")
    assert_refused(client.get(metrics, params={"limit": 0}), 422, "limit: ")
    # The store still answers normally afterwards.
    assert client.get(metrics).json()["series"]["loss"]["total_points"] == 5


def test_event_stream_resume_points_are_bounded(client, seeded) -> None:  # noqa: ANN001
    events = f"{RUNS}/{seeded}/events"
    assert_refused(client.get(events, params={"after": 2**40}), 422, "after: ")
    for bad in ("9" * 30, "-5", "step 3"):
        response = client.get(events, headers={"Last-Event-ID": bad})
        assert_refused(response, 400, "Last-Event-ID")


def test_compare_refuses_bad_queries(client, seeded) -> None:  # noqa: ANN001
    compare = "/api/v1/compare"
    assert_refused(client.get(compare), 400, "exactly one of runs")
    assert_refused(client.get(compare, params={"runs": seeded, "sweep": "s"}), 400, "exactly one")
    assert_refused(client.get(compare, params={"runs": ",,,"}), 400, "no run ids")
    many = ",".join(str(uuid.uuid4()) for _ in range(1001))
    assert_refused(client.get(compare, params={"runs": many}), 400, "at most 1000")
    assert_refused(client.get(compare, params={"runs": seeded, "target": "nan"}), 422, "target")
    assert_refused(client.get(compare, params={"runs": seeded, "target": "1e400"}), 422, "target")
    assert_refused(client.get(compare, params={"runs": seeded, "points": 10**9}), 422, "points")
    assert_refused(client.get(compare, params={"runs": seeded, "metric": "a b"}), 422, "metric")
    response = client.get(compare, params={"runs": seeded, "baseline": "other"})
    assert_refused(response, 400, "other")


def test_values_the_database_refuses_are_400(client, app, monkeypatch) -> None:  # noqa: ANN001
    """PostgreSQL refuses a NUL in any text parameter with a DataError (SQLite stores it, so
    this is simulated here); that is the client's input, not a 500."""

    def refuse(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        orig = Exception("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        raise DataError("SELECT …", {}, orig)

    monkeypatch.setattr(store, "list_runs", refuse)
    response = client.get(RUNS, params={"name": "a\x00b"})
    assert_refused(response, 400, "cannot be stored or compared", "NUL")
    assert "SELECT" not in response.text


# ----------------------------------------------------------------------------- no stale answers


def test_finished_runs_are_cached_but_never_stale(client, app, monkeypatch) -> None:  # noqa: ANN001
    """Metrics and comparisons over finished runs are kept (service.api.cache); a point that
    still lands after the finish (a reaped worker's last flush) is not hidden by the cache."""
    ids = []
    with app.state.session_factory() as session:
        for norm in ("none", "batchnorm"):
            run, _ = store.create_run(session, JobSpec(name=norm, model={"norm": norm}))
            store.claim_run(session, run.id, "w")
            points = [(k, s, 0.5) for s in range(0, 300, 10) for k in ("loss", "test_acc")]
            store.add_metrics(session, run.id, points)
            store.finish_run(session, run.id, store.RunStatus.failed, "worker lost")
            ids.append(run.id)
    reads = []
    real = store.get_metric_arrays  # what every metrics read goes through
    monkeypatch.setattr(
        store, "get_metric_arrays", lambda *a, **k: reads.append(1) or real(*a, **k)
    )
    metrics = f"{RUNS}/{ids[0]}/metrics"
    compare = f"/api/v1/compare?runs={','.join(ids)}&baseline={ids[0]}"

    first = client.get(metrics, params={"max_points": 10}).json()
    assert first["series"]["loss"]["total_points"] == 30
    assert client.get(compare).json()["runs"][0]["budget"] == 3000
    reads.clear()
    assert client.get(metrics, params={"max_points": 10}).json() == first
    client.get(compare)
    assert reads == []  # both answered from the cache

    with app.state.session_factory() as session:
        store.add_metrics(session, ids[0], [("loss", 5000, 0.1), ("test_acc", 5000, 0.9)])
    late = client.get(metrics, params={"max_points": 10}).json()
    assert (
        late["series"]["loss"]["total_points"] == 31 and late["series"]["loss"]["steps"][-1] == 5000
    )
    assert client.get(compare).json()["runs"][0]["budget"] == 5000
