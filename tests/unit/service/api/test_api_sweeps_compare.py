"""POST/GET /sweeps (fan-out, validation per combination) and /compare (JSON, CSV, plots) on
runs with hand-written metrics."""

from __future__ import annotations

import csv
import io

import pytest

from service import store

SWEEPS = "/api/v1/sweeps"
COMPARE = "/api/v1/compare"


def test_sweep_fans_out_and_submits(client, executor) -> None:  # noqa: ANN001
    body = {
        "name": "grid",
        "base": {"steps": 100, "eval_every": 10},
        "grid": {"model.norm": ["none", "batchnorm"], "optimizer.lr": [0.1, 0.5], "seed": [0, 1]},
    }
    response = client.post(SWEEPS, json=body)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert len(sweep["runs"]) == 8 and sweep["counts"] == {"queued": 8}
    assert sorted(executor.submitted) == sorted(r["id"] for r in sweep["runs"])
    specs = [r["spec"] for r in sweep["runs"]]
    assert {(s["model"]["norm"], s["optimizer"]["lr"], s["seed"]) for s in specs} == {
        (n, lr, seed) for n in ("none", "batchnorm") for lr in (0.1, 0.5) for seed in (0, 1)
    }
    assert all(s["steps"] == 100 for s in specs)
    assert sweep["runs"][0]["name"].startswith("grid[norm=")
    assert all(r["sweep_id"] == sweep["id"] for r in sweep["runs"])

    again = client.get(f"{SWEEPS}/{sweep['id']}").json()
    assert again["id"] == sweep["id"] and len(again["runs"]) == 8
    listed = client.get("/api/v1/runs", params={"sweep_id": sweep["id"], "limit": 200}).json()
    assert len(listed["items"]) == 8


def test_sweep_422_names_the_failing_combination(client, executor) -> None:  # noqa: ANN001
    body = {"name": "bad", "grid": {"optimizer.lr": [0.1, 500.0], "seed": [0]}}
    response = client.post(SWEEPS, json=body)
    assert response.status_code == 422
    problem = response.json()
    assert "optimizer.lr=500.0" in problem["detail"]
    assert "optimizer.lr: Input should be less than or equal to 100" in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "grid", 1, "optimizer", "lr"]
    assert executor.submitted == []  # nothing stored, nothing submitted
    assert client.get("/api/v1/runs").json()["items"] == []


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"model.colour": ["red"]}, "grid key 'model.colour' is not a spec field"),
        ({"steps.x": [1]}, "'steps' has no sub-fields"),
        ({"seed": []}, "grid 'seed' has no values"),
        ({"seed": list(range(1001))}, "more than 1000 runs"),
        ({"seed": list(range(40)), "optimizer.lr": [0.1] * 30}, "more than 1000 runs"),
    ],
)
def test_sweep_grid_validation(client, grid: dict, message: str) -> None:  # noqa: ANN001
    response = client.post(SWEEPS, json={"name": "g", "grid": grid})
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_unknown_sweep_is_404(client) -> None:  # noqa: ANN001
    response = client.get(f"{SWEEPS}/nope")
    assert response.status_code == 404 and response.json()["detail"] == "sweep nope not found"


# ----------------------------------------------------------------------------- compare


@pytest.fixture
def two_runs(client, app_session) -> list[str]:  # noqa: ANN001
    """A no-norm baseline reaching 0.8 at step 400, batchnorm reaching it at step 100."""
    ids = []
    for norm, reach in (("none", 400), ("batchnorm", 100)):
        run = client.post(
            "/api/v1/runs", json={"steps": 500, "eval_every": 50, "model": {"norm": norm}}
        ).json()
        points = [("test_acc", s, min(0.8, 0.8 * s / reach)) for s in range(0, 501, 50)]
        points += [("train_loss", s, 2.0 / (1 + s)) for s in range(1, 501)]
        store.add_metrics(app_session, run["id"], points)
        assert store.claim_run(app_session, run["id"], "w")
        assert store.finish_run(app_session, run["id"], store.RunStatus.succeeded, "done")
        ids.append(run["id"])
    return ids


def test_compare_json(client, two_runs) -> None:  # noqa: ANN001
    response = client.get(COMPARE, params={"runs": ",".join(two_runs), "points": 20})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["baseline_id"] == two_runs[0] and body["target"] == pytest.approx(0.8)
    by_id = {r["id"]: r for r in body["runs"]}
    assert by_id[two_runs[0]]["steps_to_target"] == 400
    assert by_id[two_runs[1]]["steps_to_target"] == 100
    assert by_id[two_runs[1]]["speedup"] == pytest.approx(4.0)
    assert len(by_id[two_runs[1]]["curves"]["train_loss"]) <= 20


def test_compare_csv_and_plots(client, two_runs) -> None:  # noqa: ANN001
    query = {"runs": ",".join(two_runs)}
    response = client.get(COMPARE, params=query | {"format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["row_type"] for r in rows] == ["run", "run", "arm", "arm"]

    png = client.get(f"{COMPARE}/plot", params=query)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    svg = client.get(f"{COMPARE}/plot", params=query | {"format": "svg"})
    assert svg.headers["content-type"].startswith("image/svg+xml") and b"<svg" in svg.content


def test_compare_by_sweep(client, app_session) -> None:  # noqa: ANN001
    sweep = client.post(SWEEPS, json={"name": "s", "grid": {"seed": [0, 1]}}).json()
    for run in sweep["runs"]:
        store.add_metrics(app_session, run["id"], [("test_acc", 0, 0.1), ("test_acc", 100, 0.5)])
    body = client.get(COMPARE, params={"sweep": sweep["id"]}).json()
    assert len(body["runs"]) == 2 and len(body["arms"]) == 1


def test_compare_errors(client, two_runs) -> None:  # noqa: ANN001
    for params, status, text in [
        ({}, 400, "exactly one of runs"),
        ({"runs": two_runs[0], "sweep": "x"}, 400, "exactly one of runs"),
        ({"runs": f"{two_runs[0]},missing"}, 404, "run missing not found"),
        ({"sweep": "missing"}, 404, "sweep missing not found"),
        ({"runs": two_runs[0], "baseline": "other"}, 400, "baseline"),
        ({"runs": two_runs[0], "points": 2}, 422, "points"),
        ({"runs": two_runs[0], "format": "xml"}, 422, "format"),
    ]:
        response = client.get(COMPARE, params=params)
        assert response.status_code == status, (params, response.text)
        assert text in response.json()["detail"], params
