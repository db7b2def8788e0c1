"""Per-key quotas and rate limits: beyond one, a 429 problem+json with Retry-After, and the
request changes nothing; the key recovers when time passes (an injected clock, no sleeps) or
its runs finish. Each key has its own budget; an open server has none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.app import create_app
from service.auth import ApiKey, Scope, hash_key
from service.models import Run
from service.quotas import RateLimiter

RUNS, SWEEPS = "/api/v1/runs", "/api/v1/sweeps"
PROBLEM = "application/problem+json"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer key-of-{name}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def keyed_app(settings, executor, clock: FakeClock, **quotas: int) -> Iterator[TestClient]:  # noqa: ANN001
    settings.api_key_hashes = [
        ApiKey(name, frozenset({Scope.submit}), hash_key(f"key-of-{name}")).entry()
        for name in ("alice", "bob")
    ]
    for name, value in quotas.items():
        setattr(settings, name, value)
    with TestClient(create_app(settings, executor=executor)) as client:
        client.app.state.rate_limiter = RateLimiter(settings.quota_posts_per_minute, clock=clock)
        yield client


def run_count(client: TestClient) -> int:
    with client.app.state.session_factory() as session:
        return session.scalar(select(func.count()).select_from(Run))


def assert_429(response, retry_after: int, *words: str) -> None:  # noqa: ANN001
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == str(retry_after)
    assert response.json()["status"] == 429
    for word in words:
        assert word in response.json()["detail"]


def test_posts_per_minute_then_recovery(settings, executor, clock) -> None:  # noqa: ANN001
    for client in keyed_app(settings, executor, clock, quota_posts_per_minute=3):
        for _ in range(3):
            assert client.post(RUNS, json={"steps": 10}, headers=bearer("alice")).status_code == 201
            clock.now += 10  # hits at 1000, 1010, 1020
        before = run_count(client)
        refused = client.post(RUNS, json={"steps": 10}, headers=bearer("alice"))
        assert_429(refused, 30, "'alice'", "3 POST requests", "quota_posts_per_minute")
        assert run_count(client) == before  # a refused POST writes nothing
        # Other keys have their own budget; reads are not limited.
        assert client.post(RUNS, json={"steps": 10}, headers=bearer("bob")).status_code == 201
        assert client.get(RUNS, headers=bearer("alice")).status_code == 200
        clock.now += 29  # 1059: the hit at 1000 is still in the window
        assert_429(client.post(RUNS, json={"steps": 10}, headers=bearer("alice")), 1)
        clock.now += 1  # 1060: it has left the window
        assert client.post(RUNS, json={"steps": 10}, headers=bearer("alice")).status_code == 201


def test_the_rate_limit_counts_every_post(settings, executor, clock) -> None:  # noqa: ANN001
    for client in keyed_app(settings, executor, clock, quota_posts_per_minute=2):
        run_id = client.post(RUNS, json={"steps": 10}, headers=bearer("alice")).json()["id"]
        assert client.post(f"{RUNS}/{run_id}/cancel", headers=bearer("alice")).status_code == 202
        assert_429(client.post(f"{RUNS}/{run_id}/cancel", headers=bearer("alice")), 60)
        body = {"name": "s", "grid": {"seed": [0]}}
        assert_429(client.post(SWEEPS, json=body, headers=bearer("alice")), 60)


def test_active_runs_quota_then_recovery(settings, executor, clock) -> None:  # noqa: ANN001
    for client in keyed_app(settings, executor, clock, quota_active_runs=2):
        ids = [
            client.post(RUNS, json={"steps": 10}, headers=bearer("alice")).json()["id"]
            for _ in range(2)
        ]
        before = run_count(client)
        refused = client.post(RUNS, json={"steps": 10}, headers=bearer("alice"))
        assert_429(refused, 60, "'alice' has 2 queued or running runs", "quota_active_runs")
        sweep = {"name": "s", "grid": {"seed": [0]}}
        assert_429(client.post(SWEEPS, json=sweep, headers=bearer("alice")), 60)
        assert run_count(client) == before
        assert client.post(RUNS, json={"steps": 10}, headers=bearer("bob")).status_code == 201
        # A finished (here: cancelled) run frees its slot.
        assert client.post(f"{RUNS}/{ids[0]}/cancel", headers=bearer("alice")).status_code == 202
        assert client.post(RUNS, json={"steps": 10}, headers=bearer("alice")).status_code == 201


def test_a_sweep_counts_all_its_runs(settings, executor, clock) -> None:  # noqa: ANN001
    for client in keyed_app(settings, executor, clock, quota_active_runs=5):
        client.post(RUNS, json={"steps": 10}, headers=bearer("alice"))
        body = {"name": "s", "grid": {"seed": [0, 1, 2, 3, 4]}}
        refused = client.post(SWEEPS, json=body, headers=bearer("alice"))
        assert_429(refused, 60, "has 1 queued or running runs; 5 more would pass its quota of 5")
        body["grid"]["seed"] = [0, 1, 2, 3]
        assert client.post(SWEEPS, json=body, headers=bearer("alice")).status_code == 201


def test_runs_per_sweep_quota(settings, executor, clock) -> None:  # noqa: ANN001
    for client in keyed_app(settings, executor, clock, quota_runs_per_sweep=3):
        body = {"name": "s", "grid": {"seed": [0, 1, 2, 3]}}
        assert_429(
            client.post(SWEEPS, json=body, headers=bearer("alice")),
            60,
            "expands to 4 runs",
            "at most 3 per sweep (quota_runs_per_sweep)",
        )
        assert run_count(client) == 0
        body["grid"]["seed"] = [0, 1, 2]
        assert client.post(SWEEPS, json=body, headers=bearer("alice")).status_code == 201


def test_an_open_server_has_no_quotas(settings, executor, clock) -> None:  # noqa: ANN001
    settings.quota_posts_per_minute = 1
    settings.quota_active_runs = 1
    with TestClient(create_app(settings, executor=executor)) as client:
        for _ in range(3):
            assert client.post(RUNS, json={"steps": 10}).status_code == 201


def test_the_limits_are_in_the_docs(settings, executor, clock) -> None:  # noqa: ANN001
    for client in keyed_app(settings, executor, clock):
        paths = client.get("/openapi.json").json()["paths"]
        for path, method in ((RUNS, "post"), (SWEEPS, "post"), (RUNS + "/{run_id}/cancel", "post")):
            response = paths[path][method]["responses"]["429"]
            assert "Retry-After" in response["headers"]
            assert "quota_posts_per_minute" in response["description"]
        assert "quota_active_runs" in paths[RUNS]["post"]["description"]
        assert "quota_runs_per_sweep" in paths[SWEEPS]["post"]["description"]


def test_the_rate_limiter_slides(clock) -> None:  # noqa: ANN001
    limiter = RateLimiter(2, window_s=60, clock=clock)
    assert limiter.hit("k") is None
    clock.now += 50
    assert limiter.hit("k") is None
    assert limiter.hit("k") == pytest.approx(10)  # refused hits are not counted
    clock.now += 10
    assert limiter.hit("k") is None
    assert limiter.hit("k") == pytest.approx(50)
