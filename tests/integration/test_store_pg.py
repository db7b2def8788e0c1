"""The store on PostgreSQL against the reference checks of the SQLite unit tests:
get_metrics (chunks read in binary; tests/unit/service/store/test_store_metrics.py), the
chunked series (round trip, re-sends, fencing, delete after; test_store_series.py), the
migrations of existing points (test_store_migration_series.py) and of existing runs' specs to
spec columns (test_store_migration_spec_columns.py: JSON path expressions), and the run
filters and sweep pages (row-value cursors, JSONB tag containment;
tests/unit/service/store/test_store_queries.py): the same rows, in the same order."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service import store
from service.db import make_engine
from service.store.raw import Raw
from tests.unit.service.store import (
    test_store_migration_finite_count,
    test_store_migration_series,
    test_store_migration_spec_columns,
)
from tests.unit.service.store.test_store_metrics import check_get_metrics
from tests.unit.service.store.test_store_queries import (
    check_run_filters,
    check_same_instant_pages,
    check_sweep_pages,
)
from tests.unit.service.store.test_store_series import (
    check_chunk_summaries,
    check_delete_after,
    check_fencing,
    check_new_and_stored_points,
    check_resends_change_nothing,
    check_round_trip,
)


@pytest.fixture
def session(pg_url: str) -> Iterator[Session]:
    engine = make_engine(pg_url)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


def test_get_metrics_matches_a_reference_filter(session: Session) -> None:
    check_get_metrics(session)


def test_driver_errors_are_sqlalchemy_errors(session: Session) -> None:
    """The binary read raises what any other query raises, so the API maps it alike."""
    with pytest.raises(DBAPIError):
        Raw(session).fetchall("SELECT 1/0")
    session.rollback()
    assert store.get_metrics(session, "no-such-run") == {}


def test_run_filters_match_a_reference_filter(session: Session) -> None:
    check_run_filters(session)


def test_sweep_pages_newest_first_with_counts(session: Session) -> None:
    check_sweep_pages(session)


def test_runs_created_in_one_instant_page_by_id(session: Session) -> None:
    check_same_instant_pages(session)


@pytest.mark.parametrize(
    "check",
    [
        check_round_trip,
        check_resends_change_nothing,
        check_fencing,
        check_chunk_summaries,
        check_new_and_stored_points,
        check_delete_after,
    ],
)
def test_series_store(session: Session, check) -> None:  # noqa: ANN001
    check(session)


@pytest.mark.parametrize(
    "migration",
    [
        test_store_migration_series,
        test_store_migration_spec_columns,
        test_store_migration_finite_count,
    ],
)
def test_migration_converts_existing_rows(pg_admin_url: str, migration) -> None:  # noqa: ANN001
    import psycopg

    name = f"bnlab_migration_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        migration.check_migration(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
