"""GET /api/v1/sweeps (cursor pages, newest first, runs per status) and tags on a new sweep's
runs, through the real app (SQLite, lifespan running)."""

from __future__ import annotations

import pytest

from service import store

SWEEPS = "/api/v1/sweeps"


def make_sweep(client, name: str, seeds: int, **extra):  # noqa: ANN001, ANN201
    body = {"name": name, "base": {"steps": 10}, "grid": {"seed": list(range(seeds))}, **extra}
    response = client.post(SWEEPS, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_pages_newest_first_with_counts(client, app_session) -> None:  # noqa: ANN001
    made = [make_sweep(client, f"s{i}", seeds=i + 1) for i in range(5)]
    first = made[1]["runs"][0]["id"]
    assert store.claim_run(app_session, first, "w")
    assert store.finish_run(app_session, first, store.RunStatus.diverged, "loss blew up")

    items, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = client.get(SWEEPS, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        items += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [item["id"] for item in items] == [sweep["id"] for sweep in reversed(made)]
    by_name = {item["name"]: item for item in items}
    assert by_name["s4"]["run_count"] == 5 and by_name["s4"]["counts"] == {"queued": 5}
    assert by_name["s1"]["run_count"] == 2
    assert by_name["s1"]["counts"] == {"queued": 1, "diverged": 1}
    assert by_name["s0"]["grid"] == {"seed": [0]}
    assert by_name["s0"]["created_at"] == made[0]["created_at"]


def test_empty_list_and_bounds(client) -> None:  # noqa: ANN001
    assert client.get(SWEEPS).json() == {"items": [], "next_cursor": None}
    for params in ({"limit": 0}, {"limit": 201}):
        response = client.get(SWEEPS, params=params)
        assert response.status_code == 422 and response.json()["detail"].startswith("limit:")


@pytest.mark.parametrize("cursor", ["garbage", "bm90LWEtY3Vyc29y"])
def test_invalid_cursor_is_400(client, cursor: str) -> None:  # noqa: ANN001
    response = client.get(SWEEPS, params={"cursor": cursor})
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


def test_sweep_tags_go_on_every_run(client) -> None:  # noqa: ANN001
    sweep = make_sweep(client, "tagged", seeds=3, tags=["paper", "fig1"])
    assert all(run["tags"] == ["paper", "fig1"] for run in sweep["runs"])
    listed = client.get("/api/v1/runs", params={"tag": "paper"}).json()["items"]
    assert {run["id"] for run in listed} == {run["id"] for run in sweep["runs"]}
    bad = client.post(SWEEPS, json={"name": "b", "grid": {"seed": [0]}, "tags": ["a b"]})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("tags[0]:")
