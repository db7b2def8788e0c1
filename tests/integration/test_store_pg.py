"""The store on PostgreSQL against the reference checks of the SQLite unit tests:
get_metrics (arrays read in binary; tests/unit/service/store/test_store_metrics.py) and the
run filters and sweep pages (JSON path expressions, JSONB tag containment;
tests/unit/service/store/test_store_queries.py): the same rows, in the same order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service import store
from service.db import make_engine
from tests.unit.service.store.test_store_metrics import check_get_metrics
from tests.unit.service.store.test_store_queries import check_run_filters, check_sweep_pages


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
        store._raw_binary(session, "SELECT 1/0", {})
    session.rollback()
    assert store.get_metrics(session, "no-such-run") == {}


def test_run_filters_match_a_reference_filter(session: Session) -> None:
    check_run_filters(session)


def test_sweep_pages_newest_first_with_counts(session: Session) -> None:
    check_sweep_pages(session)
