"""Scopes on every route, table-driven over the OpenAPI schema: each operation is tried with
no key, a ``read`` key, a ``submit`` key and an ``admin`` key. The table names the scope each
operation needs, and must cover exactly the operations the schema has (a new route without
an entry fails here). Then: ``created_by`` on runs and sweeps, cancel/delete of one's own run
(submit) and of another key's (admin), and the audit trail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service import store
from service.app import create_app
from service.auth import ApiKey, Scope, hash_key
from service.models import Run
from service.settings import Settings

KEYS = {"reader": Scope.read, "submitter": Scope.submit, "boss": Scope.admin}
RUN_ID, SWEEP_ID = "{run_id}", "{sweep_id}"
PUBLIC = "public"  # no key needed, whatever the settings

# (method, path) → the scope it needs; PUBLIC: open probes and the shared vocabulary.
NEEDS: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/v1/vocab"): PUBLIC,
    ("GET", "/api/v1/runs"): Scope.read,
    ("GET", "/api/v1/runs/{run_id}"): Scope.read,
    ("GET", "/api/v1/runs/{run_id}/metrics"): Scope.read,
    ("GET", "/api/v1/runs/{run_id}/checkpoint"): Scope.read,
    ("GET", "/api/v1/runs/{run_id}/events"): Scope.read,
    ("GET", "/api/v1/sweeps"): Scope.read,
    ("GET", "/api/v1/sweeps/{sweep_id}"): Scope.read,
    ("GET", "/api/v1/sweeps/{sweep_id}/events"): Scope.read,
    ("GET", "/api/v1/compare"): Scope.read,
    ("GET", "/api/v1/compare/plot"): Scope.read,
    ("GET", "/api/v1/workers"): Scope.read,
    ("POST", "/api/v1/runs"): Scope.submit,
    ("PATCH", "/api/v1/runs/{run_id}"): Scope.submit,
    ("POST", "/api/v1/runs/{run_id}/cancel"): Scope.submit,
    ("DELETE", "/api/v1/runs/{run_id}"): Scope.submit,
    ("POST", "/api/v1/sweeps"): Scope.submit,
    ("GET", "/api/v1/audit"): Scope.admin,
}
# Routes whose run (a fresh queued one) has nothing to return yet: past the key check they
# answer 404 with their own reason instead of 2xx.
PAST_AUTH_NOT_FOUND = {("GET", "/api/v1/runs/{run_id}/checkpoint")}
BODIES = {
    ("POST", "/api/v1/runs"): {"steps": 10},
    ("POST", "/api/v1/sweeps"): {"name": "s", "grid": {"seed": [0, 1]}},
    ("PATCH", "/api/v1/runs/{run_id}"): {"note": "checked"},
}
RANK = [Scope.read, Scope.submit, Scope.admin]


def entry(name: str, scope: Scope) -> str:
    return ApiKey(name, frozenset({scope}), hash_key(f"key-of-{name}")).entry()


def bearer(name: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer key-of-{name}"} if name else {}


def make_app(settings: Settings, executor, auth_reads: bool) -> Iterator[TestClient]:  # noqa: ANN001
    settings.api_key_hashes = [entry(name, scope) for name, scope in KEYS.items()]
    settings.auth_reads = auth_reads
    with TestClient(create_app(settings, executor=executor)) as client:
        yield client


@pytest.fixture
def client(settings, executor) -> Iterator[TestClient]:  # noqa: ANN001
    yield from make_app(settings, executor, auth_reads=True)


@pytest.fixture
def open_reads(settings, executor) -> Iterator[TestClient]:  # noqa: ANN001
    yield from make_app(settings, executor, auth_reads=False)


def operations(client: TestClient) -> set[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def a_run(client: TestClient, owner: str | None, *, finished: bool = False) -> str:
    """A run submitted by ``owner`` (finished: cancelled, so that it can be deleted)."""
    response = client.post("/api/v1/runs", json={"steps": 10}, headers=bearer(owner))
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    if finished:
        assert client.post(f"/api/v1/runs/{run_id}/cancel", headers=bearer(owner)).is_success
    return run_id


def request(client: TestClient, method: str, path: str, key: str | None):  # noqa: ANN201
    """The operation, filled with real ids (a run of the submit key, a sweep) so that a request
    that passes auth succeeds."""
    run_id = a_run(client, "submitter", finished=method == "DELETE")
    url = path.replace(RUN_ID, run_id)
    if SWEEP_ID in url:
        sweep = client.post(
            "/api/v1/sweeps", json=BODIES["POST", "/api/v1/sweeps"], headers=bearer("boss")
        )
        url = url.replace(SWEEP_ID, sweep.json()["id"])
    params: dict[str, object] = {"timeout": 0.1} if url.endswith("/events") else {}
    if "/compare" in url:
        params = {"runs": run_id, "baseline": run_id}
    return client.request(
        method, url, json=BODIES.get((method, path)), params=params, headers=bearer(key)
    )


def expected(needs: str, key: str | None, auth_reads: bool) -> int:
    """401, 403 or 200 (any 2xx)."""
    if needs == PUBLIC or (needs == Scope.read and not auth_reads):
        return 200
    if key is None:
        return 401
    return 200 if RANK.index(KEYS[key]) >= RANK.index(Scope(needs)) else 403


def test_the_table_covers_every_operation(client: TestClient) -> None:
    assert operations(client) == set(NEEDS)


@pytest.mark.parametrize("auth_reads", [True, False], ids=["auth_reads", "open_reads"])
@pytest.mark.parametrize("key", [None, *KEYS], ids=lambda k: f"key={k}")
@pytest.mark.parametrize(("method", "path"), sorted(NEEDS), ids=str)
def test_scopes_on_every_route(settings, executor, auth_reads, key, method, path) -> None:  # noqa: ANN001
    for client in make_app(settings, executor, auth_reads):
        response = request(client, method, path, key)
        want = expected(NEEDS[method, path], key, auth_reads)
        if want == 200 and (method, path) in PAST_AUTH_NOT_FOUND:
            # Authorized; the run has no final model yet, so the route itself answers 404.
            assert response.status_code == 404 and "no final model" in response.text
        elif want == 200:
            assert response.is_success, (response.status_code, response.text)
        else:
            assert response.status_code == want, response.text
            assert response.headers["content-type"] == "application/problem+json"
            if want == 401:
                assert response.headers["www-authenticate"] == "Bearer"


def test_a_scope_refusal_names_the_key_and_the_scope(client: TestClient) -> None:
    response = client.post("/api/v1/runs", json={"steps": 10}, headers=bearer("reader"))
    assert response.status_code == 403
    assert response.json()["detail"] == "the API key 'reader' lacks the submit scope"


# ----------------------------------------------------------------------------- created_by


def created_by(client: TestClient, run_id: str) -> str | None:
    with client.app.state.session_factory() as session:
        return session.get(Run, run_id).created_by


def test_runs_and_sweeps_record_the_key_name(client: TestClient) -> None:
    assert created_by(client, a_run(client, "submitter")) == "submitter"
    sweep = client.post(
        "/api/v1/sweeps", json={"name": "s", "grid": {"seed": [0, 1]}}, headers=bearer("boss")
    )
    assert {created_by(client, run["id"]) for run in sweep.json()["runs"]} == {"boss"}


def test_an_open_server_records_no_creator(settings, executor) -> None:  # noqa: ANN001
    with TestClient(create_app(settings, executor=executor)) as client:
        assert created_by(client, a_run(client, None)) is None


def test_bare_digests_still_work_with_every_scope(settings, executor) -> None:  # noqa: ANN001
    settings.api_key_hashes = [hash_key("legacy").upper()]
    with TestClient(create_app(settings, executor=executor)) as client:
        response = client.post("/api/v1/runs", json={"steps": 10}, headers={"X-API-Key": "legacy"})
        assert response.status_code == 201
        run_id = response.json()["id"]
        assert created_by(client, run_id) == f"key-{hash_key('legacy')[:8]}"
        assert client.get("/api/v1/audit", headers={"X-API-Key": "legacy"}).status_code == 200


# ----------------------------------------------------------------------------- own and others'


@pytest.mark.parametrize("action", ["cancel", "delete"])
def test_own_runs_need_submit_and_others_need_admin(settings, executor, action: str) -> None:  # noqa: ANN001
    settings.api_key_hashes = [
        entry("alice", Scope.submit),
        entry("bob", Scope.submit),
        entry("boss", Scope.admin),
    ]

    def act(client: TestClient, run_id: str, who: str):  # noqa: ANN202
        if action == "cancel":
            return client.post(f"/api/v1/runs/{run_id}/cancel", headers=bearer(who))
        return client.delete(f"/api/v1/runs/{run_id}", headers=bearer(who))

    with TestClient(create_app(settings, executor=executor)) as client:
        finished = action == "delete"
        alices, other = (
            a_run(client, "alice", finished=finished),
            a_run(client, "bob", finished=finished),
        )
        refused = act(client, other, "alice")
        assert refused.status_code == 403
        assert "another key's run needs the admin scope" in refused.json()["detail"]
        assert act(client, alices, "alice").is_success
        assert act(client, other, "boss").is_success
        with client.app.state.session_factory() as session:
            unowned = store.create_run(session, store_spec())[0].id  # from before keys
            if finished:
                store.request_cancel(session, unowned)
        assert act(client, unowned, "alice").status_code == 403
        assert act(client, unowned, "boss").is_success


def store_spec():  # noqa: ANN201
    from bncore.spec import JobSpec

    return JobSpec.model_validate({"steps": 10})


# ----------------------------------------------------------------------------- audit trail


def test_cancel_and_delete_are_in_the_audit_trail(client: TestClient) -> None:
    run_id = a_run(client, "submitter")
    assert client.post(f"/api/v1/runs/{run_id}/cancel", headers=bearer("submitter")).is_success
    assert client.delete(f"/api/v1/runs/{run_id}", headers=bearer("boss")).status_code == 204
    page = client.get("/api/v1/audit", headers=bearer("boss")).json()
    mine = [event for event in page["items"] if event["run_id"] == run_id]
    assert [(e["action"], e["key_name"], e["detail"]) for e in mine] == [
        ("delete", "boss", "was cancelled"),
        ("cancel", "submitter", "was queued"),
    ]
    assert mine[0]["id"] > mine[1]["id"] and page["next_before"] is None
    assert all(event["at"].endswith(("Z", "+00:00")) for event in mine)  # UTC, as everywhere
    only_boss = client.get("/api/v1/audit", params={"key_name": "boss"}, headers=bearer("boss"))
    assert {event["key_name"] for event in only_boss.json()["items"]} == {"boss"}
    assert client.get("/api/v1/audit", headers=bearer("submitter")).status_code == 403


def test_the_audit_trail_pages_back(client: TestClient) -> None:
    for _ in range(3):
        a_run(client, "submitter", finished=True)
    first = client.get("/api/v1/audit", params={"limit": 2}, headers=bearer("boss")).json()
    assert len(first["items"]) == 2 and first["next_before"] == first["items"][-1]["id"]
    rest = client.get(
        "/api/v1/audit", params={"before": first["next_before"]}, headers=bearer("boss")
    ).json()
    assert len(rest["items"]) == 1 and rest["items"][0]["id"] < first["next_before"]


def test_the_audit_trail_is_open_on_an_open_server(settings, executor) -> None:  # noqa: ANN001
    with TestClient(create_app(settings, executor=executor)) as client:
        run_id = a_run(client, None, finished=True)
        (event,) = client.get("/api/v1/audit").json()["items"]
        assert (event["run_id"], event["key_name"]) == (run_id, None)
