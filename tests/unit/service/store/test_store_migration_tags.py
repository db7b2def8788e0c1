"""Migration 3f9c2a7d1e64 on a database that already holds runs: they get no tags and no
note, the new columns work, and the migration goes down and up again."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from service import store
from service.migrate import alembic_config

BEFORE = "b538ff4aa898"


def test_existing_runs_get_empty_tags(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = alembic_config(url)
    command.upgrade(config, BEFORE)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO runs (id, name, spec, status, created_at, attempt, cancel_requested)"
                " VALUES ('old-run', 'old', '{}', 'succeeded', '2026-01-01 00:00:00', 1, 0)"
            )
        )
    command.upgrade(config, "head")
    with Session(engine) as session:
        run = store.get_run(session, "old-run")
        assert (run.tags, run.note) == ([], None)
        store.annotate_run(session, "old-run", tags=["kept"], note="from before")
        assert [r.id for r in store.list_runs(session, tags=["kept"])[0]] == ["old-run"]
    command.downgrade(config, BEFORE)
    command.upgrade(config, "head")
    with Session(engine) as session:
        assert store.get_run(session, "old-run").tags == []
    engine.dispose()
