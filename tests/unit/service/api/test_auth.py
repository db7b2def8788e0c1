"""API keys: off by default; when configured, required for writes (and reads with
``auth_reads``); kept only as SHA-256 digests, compared in constant time, never logged or
echoed; missing (401 + WWW-Authenticate), wrong (403) and revoked keys are refused, and a
refused write writes nothing. Probes (/healthz, /readyz, /metrics) stay open."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service import auth
from service.app import create_app
from service.models import Run, Sweep
from service.settings import Settings, hash_key

RUNS = "/api/v1/runs"
PROBLEM = "application/problem+json"
KEY = "bnlab-test-key-7f3a9c"  # distinctive, so any leak into a log or body is found
OTHER_KEY = "bnlab-second-key-41d0"

WRITES = [
    ("POST", RUNS, {"steps": 10}),
    ("POST", "/api/v1/sweeps", {"name": "s", "grid": {"seed": [0, 1]}}),
    ("POST", f"{RUNS}/00000000-0000-0000-0000-000000000000/cancel", None),
    ("DELETE", f"{RUNS}/00000000-0000-0000-0000-000000000000", None),
]
READS = [
    RUNS,
    f"{RUNS}/00000000-0000-0000-0000-000000000000",
    f"{RUNS}/00000000-0000-0000-0000-000000000000/metrics",
    f"{RUNS}/00000000-0000-0000-0000-000000000000/events",
    "/api/v1/sweeps/00000000-0000-0000-0000-000000000000",
    "/api/v1/compare?runs=x",
    "/api/v1/compare/plot?runs=x",
    "/api/v1/workers",
]
PROBES = ["/healthz", "/readyz", "/metrics", "/openapi.json"]


def make_client(settings: Settings, executor, **overrides) -> Iterator[TestClient]:  # noqa: ANN001
    for name, value in overrides.items():
        setattr(settings, name, value)
    with TestClient(create_app(settings, executor=executor)) as client:
        yield client


@pytest.fixture
def keyed(settings, executor) -> Iterator[TestClient]:  # noqa: ANN001
    """Two keys configured, reads open."""
    yield from make_client(settings, executor, api_key_hashes=[hash_key(KEY), hash_key(OTHER_KEY)])


@pytest.fixture
def keyed_reads(settings, executor) -> Iterator[TestClient]:  # noqa: ANN001
    yield from make_client(settings, executor, api_key_hashes=[hash_key(KEY)], auth_reads=True)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def runs_in(client: TestClient) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Run)) + session.scalar(
            select(func.count()).select_from(Sweep)
        )


def assert_401(response) -> None:  # noqa: ANN001
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"] == "Bearer"
    assert "API key is required" in response.json()["detail"]


def assert_403(response) -> None:  # noqa: ANN001
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"] == "the API key is not valid"


# ----------------------------------------------------------------------------- off by default


def test_no_keys_by_default(client, settings) -> None:  # noqa: ANN001
    assert Settings(_env_file=None).api_key_hashes == []
    assert settings.api_key_hashes == [] and not settings.auth_reads
    assert client.post(RUNS, json={"steps": 10}).status_code == 201
    assert client.get(RUNS).status_code == 200
    # A key sent to an open server is simply ignored.
    assert client.post(RUNS, json={"steps": 10}, headers=bearer("anything")).status_code == 201


# ----------------------------------------------------------------------------- writes


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=lambda v: str(v)[:30])
def test_writes_without_a_key_are_401_and_write_nothing(keyed, method, path, body) -> None:  # noqa: ANN001
    before = runs_in(keyed)
    assert_401(keyed.request(method, path, json=body))
    for headers in ({"Authorization": "Bearer "}, {"Authorization": "Basic " + KEY}, {}):
        assert_401(keyed.request(method, path, json=body, headers=headers))
    assert runs_in(keyed) == before


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=lambda v: str(v)[:30])
def test_writes_with_a_wrong_key_are_403_and_write_nothing(keyed, method, path, body) -> None:  # noqa: ANN001
    before = runs_in(keyed)
    # (Surrounding whitespace is not part of a header value, so "KEY " is KEY.)
    for wrong in ("nope", KEY.upper(), KEY[:-1], KEY + "x", hash_key(KEY), "x" * 10_000):
        assert_403(keyed.request(method, path, json=body, headers=bearer(wrong)))
        assert_403(keyed.request(method, path, json=body, headers={"X-API-Key": wrong}))
    assert runs_in(keyed) == before


def test_writes_with_a_valid_key_succeed(keyed) -> None:  # noqa: ANN001
    ok = keyed.post(RUNS, json={"steps": 10}, headers=bearer(KEY))
    assert ok.status_code == 201
    run_id = ok.json()["id"]
    assert keyed.post(RUNS, json={"steps": 10}, headers={"X-API-Key": OTHER_KEY}).status_code == 201
    assert (
        keyed.post(RUNS, json={"steps": 10}, headers={"authorization": f"bearer {KEY}"}).status_code
        == 201
    )
    assert keyed.post(f"{RUNS}/{run_id}/cancel", headers=bearer(OTHER_KEY)).status_code == 202
    assert keyed.delete(f"{RUNS}/{run_id}", headers=bearer(KEY)).status_code == 204


def test_auth_comes_before_body_validation(keyed) -> None:  # noqa: ANN001
    """Without a key, an invalid spec is a 401: strangers learn nothing about the API's
    limits, and nothing is written."""
    before = runs_in(keyed)
    assert_401(keyed.post(RUNS, json={"steps": 10**9, "frobnicate": 1}))
    assert_403(keyed.post(RUNS, json={"steps": 10**9}, headers=bearer("nope")))
    assert runs_in(keyed) == before


def test_a_key_in_the_query_string_is_not_accepted(keyed) -> None:  # noqa: ANN001
    # URLs end up in access logs and browser history: keys travel in headers only.
    assert_401(keyed.post(f"{RUNS}?api_key={KEY}", json={"steps": 10}))


# ----------------------------------------------------------------------------- reads


def test_reads_are_open_unless_auth_reads(keyed) -> None:  # noqa: ANN001
    for path in READS:
        assert keyed.get(path, params={"timeout": 0.1}).status_code not in (401, 403), path


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_key_with_auth_reads(keyed_reads, path: str) -> None:  # noqa: ANN001
    assert_401(keyed_reads.get(path))
    assert_403(keyed_reads.get(path, headers=bearer("nope")))
    response = keyed_reads.get(path, params={"timeout": 0.1}, headers=bearer(KEY))
    assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize("path", PROBES)
def test_probes_stay_open(keyed_reads, path: str) -> None:  # noqa: ANN001
    assert keyed_reads.get(path).status_code == 200


# ----------------------------------------------------------------------------- revocation


def test_a_revoked_key_is_refused(settings, executor) -> None:  # noqa: ANN001
    """Keys are revoked by removing their digest from the configuration and restarting
    (settings are read once): the old key is refused, the remaining one still works."""
    both = [hash_key(KEY), hash_key(OTHER_KEY)]
    for client in make_client(settings, executor, api_key_hashes=both):
        assert client.post(RUNS, json={"steps": 10}, headers=bearer(KEY)).status_code == 201
    revoked = Settings(
        _env_file=None, database_url=settings.database_url, api_key_hashes=hash_key(OTHER_KEY)
    )
    for client in make_client(revoked, executor):
        before = runs_in(client)
        assert_403(client.post(RUNS, json={"steps": 10}, headers=bearer(KEY)))
        assert runs_in(client) == before
        assert client.post(RUNS, json={"steps": 10}, headers=bearer(OTHER_KEY)).status_code == 201


# ----------------------------------------------------------------------------- storage


def test_keys_are_configured_as_digests(monkeypatch) -> None:  # noqa: ANN001
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    assert hash_key(KEY) == digest and KEY not in digest
    monkeypatch.setenv("BNLAB_API_KEY_HASHES", f" {digest.upper()} , {hash_key(OTHER_KEY)},")
    settings = Settings(_env_file=None)
    assert settings.api_key_hashes == [digest, hash_key(OTHER_KEY)]  # trimmed, lower-cased
    assert KEY not in settings.model_dump_json() and KEY not in repr(settings)


def test_keys_are_compared_in_constant_time(monkeypatch) -> None:  # noqa: ANN001
    """Every configured digest is compared, with hmac.compare_digest, whether or not an
    earlier one matched, and always digest against digest (equal lengths whatever was sent)."""
    calls: list[tuple[str, str]] = []
    real = auth.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    hashes = [hash_key(KEY), hash_key("b"), hash_key("c")]
    keys = auth.parse_entries(hashes, "test")
    for presented, expected in ((KEY, 0), ("c", 2), ("wrong", None), ("x" * 5000, None)):
        calls.clear()
        matched = auth.match_key(presented, keys)
        assert matched is (None if expected is None else keys[expected])
        assert len(calls) == len(hashes)
        assert all(a == hash_key(presented) and len(b) == 64 for a, b in calls)


# ----------------------------------------------------------------------------- never logged


def test_keys_are_never_logged_or_echoed(settings, executor, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    for client in make_client(settings, executor, api_key_hashes=[hash_key(KEY)], auth_reads=True):
        responses = [
            client.post(RUNS, json={"steps": 10}, headers=bearer(KEY)),
            client.post(RUNS, json={"steps": 10**9}, headers=bearer(KEY)),
            client.post(RUNS, json={"steps": 10}, headers={"X-API-Key": KEY + "-wrong"}),
            client.get(RUNS, headers=bearer(KEY + "-wrong")),
            client.get(RUNS, headers=bearer(KEY)),
            client.get(f"{RUNS}/nope", headers=bearer(KEY)),
            client.put(RUNS, headers=bearer(KEY)),
            client.get("/metrics"),
        ]
        seen += [r.text + str(r.headers) for r in responses]
        run_id = responses[0].json()["id"]
        seen.append(client.get(f"{RUNS}/{run_id}", headers=bearer(KEY)).text)
    seen.append(caplog.text)
    seen += [record.getMessage() + repr(record.args) for record in caplog.records]
    for text in seen:
        assert KEY not in text
