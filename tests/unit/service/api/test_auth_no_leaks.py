"""No key material leaves the server: neither the keys clients send nor the digests the server
keeps appear in any response (bodies, headers, problem details, the audit trail, the OpenAPI
schema, /metrics) or any log record, whatever the outcome: accepted, wrong key, missing
scope, another key's run, over a quota. Key *names* may appear: they are labels."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.auth import ApiKey, Scope, hash_key
from service.cli import app as cli_app
from service.cli import server
from service.quotas import RateLimiter
from service.settings import Settings

KEYS = {
    "reader": ("bnlab_reader-7c1e0f-secret", Scope.read),
    "alice": ("bnlab_alice-52bd9a-secret", Scope.submit),
    "boss": ("bnlab_boss-e8a4c3-secret", Scope.admin),
}
RUNS = "/api/v1/runs"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def secrets_in(text: str) -> list[str]:
    """Every key, every digest (and the digests' first halves) found in ``text``."""
    found = []
    for key, _scope in KEYS.values():
        digest = hash_key(key)
        found += [s for s in (key, digest, digest[:32], digest.upper()) if s in text]
    return found


def test_no_key_material_in_responses_logs_or_metrics(settings, executor, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    settings.api_key_hashes = [
        ApiKey(name, frozenset({scope}), hash_key(key)).entry()
        for name, (key, scope) in KEYS.items()
    ]
    settings.auth_reads = True
    settings.quota_active_runs = 2
    seen: list[str] = []
    with TestClient(create_app(settings, executor=executor)) as client:
        client.app.state.rate_limiter = RateLimiter(5, clock=lambda: 0.0)
        run_id = client.post(RUNS, json={"steps": 10}, headers=bearer("alice")).json()["id"]
        bosses = client.post(RUNS, json={"steps": 10}, headers=bearer("boss")).json()["id"]
        responses = [
            client.post(RUNS, json={"steps": 10}, headers=bearer("reader")),  # lacks scope
            client.post(RUNS, json={"steps": 10}, headers={"X-API-Key": KEYS["alice"][0] + "x"}),
            client.post(RUNS, json={"steps": 10**9}, headers=bearer("alice")),  # 422
            client.post(f"{RUNS}/{bosses}/cancel", headers=bearer("alice")),  # another's run
            client.post(f"{RUNS}/{run_id}/cancel", headers=bearer("alice")),
            client.post(RUNS, json={"steps": 10}, headers=bearer("alice")),
            client.post(RUNS, json={"steps": 10}, headers=bearer("alice")),  # over a quota
            client.get(f"{RUNS}/{run_id}", headers=bearer("reader")),
            client.get(RUNS, headers=bearer("reader")),
            client.get("/api/v1/audit", headers=bearer("boss")),
            client.get("/api/v1/audit", headers=bearer("alice")),
            client.get("/api/v1/workers", headers=bearer("reader")),
            client.get("/metrics"),
            client.get("/openapi.json"),
            client.get("/api/v1/vocab"),
        ]
        assert {r.status_code for r in responses} >= {200, 202, 403, 422, 429}
        seen += [r.text + str(r.headers) for r in responses]
    seen += [caplog.text] + [r.getMessage() + repr(r.args) for r in caplog.records]
    for text in seen:
        assert secrets_in(text) == [], text[:300]


def test_serve_logs_a_key_count_not_the_keys(monkeypatch) -> None:  # noqa: ANN001
    import uvicorn

    entries = [ApiKey(n, frozenset({s}), hash_key(k)).entry() for n, (k, s) in KEYS.items()]
    configured = Settings(
        _env_file=None, database_url="sqlite:///unused.db", api_key_hashes=entries
    )
    monkeypatch.setattr(server, "get_settings", lambda: configured)
    monkeypatch.setattr(server, "check_database", lambda url: None)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "3 API key(s)" in result.output
    assert secrets_in(result.output) == []
