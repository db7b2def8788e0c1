"""The store's guards on the real PostgreSQL (the same checks as the SQLite unit tests in
tests/unit/service/store/test_store_guards.py), and the NUL character PostgreSQL refuses in
text, which SQLite stores and the unit tests can only simulate.

Each of these failed to notice a mutation somewhere: a re-sent metric batch (the duplicate-safe
``ON CONFLICT DO NOTHING``), a stale worker racing the owner to finish (the worker guard), the
retry limit at its boundary.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from service import store
from service.db import make_engine
from service.settings import Settings
from tests.conftest import RecordingExecutor
from tests.unit.service.store.test_store_guards import (
    check_cancel_leaves_finished_runs_alone,
    check_concurrent_duplicate_batches,
    check_distinct_workers_race_to_finish,
    check_resent_batch_changes_nothing,
    check_retry_limit_at_its_boundary,
    check_stale_heartbeat_keeps_nothing_alive,
    check_stale_worker_cannot_finish,
)

RUNS = "/api/v1/runs"


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


def test_resent_batch_changes_nothing(engine: Engine) -> None:
    check_resent_batch_changes_nothing(engine)


def test_concurrent_duplicate_batches(engine: Engine) -> None:
    check_concurrent_duplicate_batches(engine)


def test_stale_worker_cannot_finish(engine: Engine) -> None:
    check_stale_worker_cannot_finish(engine)


def test_distinct_workers_race_to_finish(engine: Engine) -> None:
    check_distinct_workers_race_to_finish(engine)


def test_stale_heartbeat_keeps_nothing_alive(engine: Engine) -> None:
    check_stale_heartbeat_keeps_nothing_alive(engine)


def test_cancel_leaves_finished_runs_alone(engine: Engine) -> None:
    check_cancel_leaves_finished_runs_alone(engine)


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_retry_limit_at_its_boundary(engine: Engine, max_attempts: int) -> None:
    with Session(engine, expire_on_commit=False) as session:
        check_retry_limit_at_its_boundary(session, max_attempts)


# ----------------------------------------------------------------------------- NUL characters


def test_postgres_refuses_nul_in_text(engine: Engine) -> None:
    """The fact the API's mapping rests on: the driver raises DataError, and the session
    works again after a rollback."""
    with Session(engine, expire_on_commit=False) as session:
        with pytest.raises(DataError, match="NUL"):
            store.list_runs(session, name="a\x00b")
        session.rollback()
        runs, _ = store.list_runs(session, name="no such run")
        assert runs == []


def test_nul_in_a_query_is_400_on_postgres(int_settings: Settings) -> None:
    """The real app on the real database (no Celery needed: the executor only records):
    a NUL in a filter is the client's error, a problem+json 400 without the SQL, and the
    pooled connection that saw the error serves the next request."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    app = create_app(int_settings, executor=RecordingExecutor())
    with TestClient(app) as client:
        response = client.get(RUNS, params={"name": "a\x00b"})
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == 400
        assert "cannot be stored or compared" in body["detail"] and "NUL" in body["detail"]
        assert "SELECT" not in response.text and "Traceback" not in response.text
        for _ in range(3):  # more requests than the one connection that failed
            assert client.get(RUNS, params={"name": "plain"}).status_code == 200
