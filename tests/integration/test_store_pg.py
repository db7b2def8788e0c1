"""store.get_metrics on PostgreSQL (arrays read in binary) against the reference filter of
tests/unit/service/store/test_store_metrics.py: the same points, in the same order, as on
SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service import store
from service.db import make_engine
from tests.unit.service.store.test_store_metrics import check_get_metrics


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
