"""GET /api/v1/runs filters, PATCH /api/v1/runs/{id} (tags, note) and tags at creation,
through the real app (SQLite, lifespan running). What each filter selects is checked in depth
against a reference in tests/unit/service/store/test_store_queries.py; here, the HTTP side."""

from __future__ import annotations

import pytest

RUNS = "/api/v1/runs"


def submit(client, params=None, **spec):  # noqa: ANN001, ANN201
    response = client.post(RUNS, json={"steps": 10, **spec}, params=params)
    assert response.status_code == 201, response.text
    return response.json()


def ids(client, **params) -> list[str]:  # noqa: ANN001
    response = client.get(RUNS, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_spec_filters(client) -> None:  # noqa: ANN001
    bn = submit(client, model={"norm": "batchnorm"}, optimizer={"lr": 0.5}, seed=1)
    plain = submit(client, model={"norm": "none"}, optimizer={"lr": 0.5}, dataset="digits")
    slow = submit(client, model={"norm": "none", "activation": "relu"}, optimizer={"lr": 0.1})
    assert ids(client, norm="batchnorm") == [bn["id"]]
    assert ids(client, norm="none", lr="0.5") == [plain["id"]]
    assert ids(client, lr="0.5") == [plain["id"], bn["id"]]  # newest first
    assert ids(client, dataset="digits") == [plain["id"]]
    assert ids(client, activation="relu", optimizer="sgd", arch="mlp") == [slow["id"]]
    assert ids(client, seed=1, batch_size=60) == [bn["id"]]
    assert ids(client, seed=2) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"norm": "layernorm"}, "norm"),
        ({"lr": "0"}, "lr"),
        ({"lr": "101"}, "lr"),
        ({"batch_size": "1"}, "batch_size"),
        ({"seed": "-1"}, "seed"),
        ({"id_prefix": "abc"}, "id_prefix"),
        ({"id_prefix": "zzzz"}, "id_prefix"),
        ({"tag": "two words"}, "tag[0]"),
        ({"limit": "201"}, "limit"),
        ({"nrom": "batchnorm"}, "nrom"),  # a typo is an error, not every run
    ],
)
def test_bad_filters_are_422_naming_the_field(client, params, field: str) -> None:  # noqa: ANN001
    response = client.get(RUNS, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].startswith(f"{field}:"), response.json()["detail"]


def test_tags_at_creation_and_the_tag_filter(client) -> None:  # noqa: ANN001
    both = submit(client, params=[("tag", "baseline"), ("tag", "fig1"), ("tag", "fig1")])
    assert both["tags"] == ["baseline", "fig1"] and both["note"] is None
    one = submit(client, params={"tag": "fig1"})
    untagged = submit(client)
    assert untagged["tags"] == []
    assert ids(client, tag="fig1") == [one["id"], both["id"]]
    assert ids(client) == [untagged["id"], one["id"], both["id"]]
    response = client.get(RUNS, params=[("tag", "fig1"), ("tag", "baseline")])
    assert [item["id"] for item in response.json()["items"]] == [both["id"]]
    bad = client.post(RUNS, json={"steps": 10}, params={"tag": "x" * 41})
    assert bad.status_code == 422 and bad.json()["detail"].startswith("tag[0]:")


def test_patch_tags_and_note(client, app_session) -> None:  # noqa: ANN001
    from service import store

    run = submit(client, params={"tag": "old"})
    url = f"{RUNS}/{run['id']}"
    response = client.patch(url, json={"note": "Diverged at step 40; LR too high"})
    assert response.status_code == 200
    assert response.json()["tags"] == ["old"]  # left as it was
    assert response.json()["note"] == "Diverged at step 40; LR too high"
    response = client.patch(url, json={"tags": ["lr-high", "redo"]})
    assert response.json()["tags"] == ["lr-high", "redo"]
    assert response.json()["note"] == "Diverged at step 40; LR too high"  # left as it was
    assert client.get(url).json()["tags"] == ["lr-high", "redo"]
    assert ids(client, q="lr too") == [run["id"]]
    assert ids(client, tag="redo") == [run["id"]]
    assert ids(client, tag="old") == []

    assert store.claim_run(app_session, run["id"], "w")
    assert store.finish_run(app_session, run["id"], store.RunStatus.succeeded, "done")
    cleared = client.patch(url, json={"tags": None, "note": ""}).json()  # finished runs too
    assert (cleared["tags"], cleared["note"], cleared["status"]) == ([], None, "succeeded")
    assert client.patch(url, json={}).json()["tags"] == []


@pytest.mark.parametrize(
    ("body", "field", "bound"),
    [
        ({"tags": ["a"] * 17}, "tags", "at most 16"),
        ({"tags": ["x" * 41]}, "tags[0]", "at most 40"),
        ({"tags": ["ok", "no spaces"]}, "tags[1]", "pattern"),
        ({"tags": [""]}, "tags[0]", "at least 1"),
        ({"note": "n" * 2001}, "note", "at most 2000"),
        ({"note": "a\x00b"}, "note", "pattern"),
        ({"notes": "typo"}, "notes", "not permitted"),
    ],
)
def test_patch_out_of_bounds_is_422_naming_field_and_bound(client, body, field, bound) -> None:  # noqa: ANN001
    run = submit(client)
    response = client.patch(f"{RUNS}/{run['id']}", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"{field}:") and bound in detail, detail
    assert client.get(f"{RUNS}/{run['id']}").json()["tags"] == []  # nothing written


def test_patch_unknown_run_is_404(client) -> None:  # noqa: ANN001
    response = client.patch(f"{RUNS}/nope", json={"note": "x"})
    assert response.status_code == 404 and response.json()["detail"] == "run nope not found"


def test_short_id_prefix_finds_the_run(client) -> None:  # noqa: ANN001
    runs = [submit(client) for _ in range(3)]
    target = runs[1]["id"]
    assert ids(client, id_prefix=target[:8]) == [target]
    assert ids(client, id_prefix=target[:8].upper()) == [target]
    assert ids(client, id_prefix=target) == [target]
