"""The app's startup is where a server migrates (settings.auto_migrate): a fresh database gets
the schema, and a database that cannot be migrated stops the start with a one-line reason."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from service.app import create_app
from service.db import engine_for
from service.settings import Settings


def embedded(url: str, **overrides: object) -> Settings:
    """Settings for an app with its real embedded executor (nothing queued: it runs nothing)."""
    return Settings(_env_file=None, database_url=url, broker_url=None, **overrides)


def test_startup_migrates_a_fresh_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    with TestClient(create_app(embedded(url))):
        tables = set(inspect(engine_for(url)).get_table_names())
    assert {"runs", "metric_series", "metric_chunks", "workers", "alembic_version"} <= tables


class IdleExecutor:
    """An executor that never touches the database (the embedded one reads queued runs on
    start, which an unmigrated database does not have)."""

    def submit(self, run_id: str) -> None: ...
    def start(self) -> None: ...
    def shutdown(self) -> None: ...
    def broker_ok(self) -> bool:
        return True

    def resubmit_due(self, queued: Sequence[str]) -> list[str]:
        return []


def test_no_migration_without_auto_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'untouched.db'}"
    with TestClient(create_app(embedded(url, auto_migrate=False), IdleExecutor())):
        assert "alembic_version" not in inspect(engine_for(url)).get_table_names()


def test_a_failed_migration_stops_the_start_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'bnlab.db'}"
    app = create_app(embedded(url))
    with pytest.raises(Exception), TestClient(app):  # noqa: B017, PT011 (whatever SQLite raises)
        pass
    assert "could not migrate the database sqlite:///" in caplog.text
