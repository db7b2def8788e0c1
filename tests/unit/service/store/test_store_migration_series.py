"""Migration 7c41d2e8a0f5 on a database that already holds points (one row per point): every
point reads back the same from the chunked series, writes go on from there, and the migration
goes down (points unpacked to rows again, unchanged) and up again. The same check runs on
PostgreSQL in tests/integration/test_store_pg.py."""

from __future__ import annotations

import random
from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from service import store
from service.migrate import alembic_config

BEFORE = "3f9c2a7d1e64"
RUNS = ("run-a", "run-b")


def old_points() -> list[tuple[str, str, int, float | None]]:
    """Two runs: a long dense key with a missing value, a sparse key, a one-point key."""
    rng = random.Random(3)
    points = []
    for run in RUNS:
        points += [(run, "train_loss", s, rng.random()) for s in range(2500)]
        points += [(run, "test_acc", s, rng.random()) for s in range(0, 2500, 250)]
    points[10] = ("run-a", "train_loss", 10, None)
    points.append(("run-b", "lr", 0, 0.1))
    return points


def check_migration(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, BEFORE)
    engine = create_engine(url)
    points = old_points()
    with engine.begin() as connection:
        for run in RUNS:
            connection.execute(
                text(
                    "INSERT INTO runs (id, name, spec, status, created_at, attempt,"
                    " cancel_requested, tags) VALUES (:id, 'old', '{}', 'succeeded',"
                    " '2026-01-01 00:00:00', 1, false, '[]')"
                ),
                {"id": run},
            )
        connection.execute(
            text("INSERT INTO metric_points (run_id, key, step, value) VALUES (:r, :k, :s, :v)"),
            [{"r": r, "k": k, "s": s, "v": v} for r, k, s, v in points],
        )
    command.upgrade(config, "head")
    expected: dict[str, dict[str, list]] = {run: {} for run in RUNS}
    for run, key, step, value in sorted(points):
        expected[run].setdefault(key, []).append((step, value))
    with Session(engine) as session:
        for run in RUNS:
            assert store.get_metrics(session, run) == expected[run]
        assert store.add_metrics(session, "run-a", [("train_loss", 2499, 0.0)]) == 0
        assert store.add_metrics(session, "run-a", [("train_loss", 2500, 0.5)]) == 1
        assert store.delete_metrics_after(session, "run-a", 2499) == 1
    command.downgrade(config, BEFORE)
    with engine.connect() as connection:
        rows = connection.execute(
            text("SELECT run_id, key, step, value FROM metric_points ORDER BY run_id, key, step")
        ).all()
    assert [tuple(r) for r in rows] == sorted(points)
    command.upgrade(config, "head")
    with Session(engine) as session:
        assert store.get_metrics(session, "run-b") == expected["run-b"]
    engine.dispose()


def test_existing_points_become_series(tmp_path: Path) -> None:
    check_migration(f"sqlite:///{tmp_path / 'old.db'}")
