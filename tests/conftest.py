"""Shared, service-free fixtures: settings on a SQLite file in tmp_path, a session on it, and
the real app (lifespan running) with an executor that only records what it is given.

Integration fixtures (PostgreSQL, Redis, Celery) live in tests/integration/conftest.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from service.executor import RecordingExecutor
from service.settings import Settings


def sqlite_settings(path: Path, **overrides: object) -> Settings:
    """Settings on a SQLite file, ignoring any .env or BNLAB_* of the machine running tests."""
    return Settings(_env_file=None, database_url=f"sqlite:///{path}", **overrides)


@pytest.fixture(scope="session", autouse=True)
def bncore_operator_built() -> None:
    """Build bncore's C++ batch-norm operator once, before any test, in this process.

    The first batch-norm call on a machine compiles it (about 40 s on 2 idle cores) into a
    cache that every later process loads. Trainer subprocesses started by the tests would
    otherwise take that minute inside a run whose test waits with a deadline."""
    import logging

    from bncore import _native

    logging.getLogger("bncore").info("bncore C++ operator: %s", _native.module())


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per test session; tests get copies (the app's own
    upgrade on start is then a quick no-op)."""
    from service import migrate

    path = tmp_path_factory.mktemp("template") / "bnlab.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def settings(tmp_path: Path, migrated_sqlite: Path) -> Settings:
    path = tmp_path / "bnlab.db"
    shutil.copyfile(migrated_sqlite, path)
    return sqlite_settings(path)


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    """A session on a fresh, migrated SQLite database."""
    from service.db import make_engine

    engine = make_engine(settings.database_url)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()


@pytest.fixture
def executor() -> RecordingExecutor:
    return RecordingExecutor()


@pytest.fixture
def app(settings: Settings, executor: RecordingExecutor):  # noqa: ANN201
    from service.app import create_app

    return create_app(settings, executor=executor)


@pytest.fixture
def client(app) -> Iterator:  # noqa: ANN001
    """A TestClient with the lifespan running (migrations, executor start, maintenance)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def app_session(client, app) -> Iterator[Session]:  # noqa: ANN001
    """A session on the app's own (migrated) database, to arrange state behind the API."""
    with app.state.session_factory() as session:
        yield session
