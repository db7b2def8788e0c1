"""Migration e41b7a9c2d05 on a database that already holds chunks: each chunk's finite_count
is the number of finite values it holds (missing and infinite ones are not), writes that
append to those chunks keep their summaries right, and the migration goes down and up again.
The same check runs on PostgreSQL in tests/integration/test_store_pg.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.orm import Session

from service import store
from service.migrate import alembic_config
from service.models import MetricChunk

BEFORE = "8735742ff8de"
# (first step, values) of the old chunks of one series: NaN is how a missing value is stored.
OLD_CHUNKS = [
    (0, [0.5, math.nan, 1.5, math.inf]),
    (4, [math.nan, math.nan]),
    (6, [2.0, -1.0, 3.0]),
]


def check_migration(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, BEFORE)
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO runs (id, name, spec, status, created_at, attempt,"
                " cancel_requested, tags) VALUES ('run-a', 'old', '{}', 'succeeded',"
                " '2026-01-01 00:00:00', 1, false, '[]')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO metric_series (id, run_id, key, revision) VALUES (7, 'run-a', 'k', 0)"
            )
        )
        for first, values in OLD_CHUNKS:
            steps = np.arange(first, first + len(values))
            array = np.asarray(values, dtype="<f8")
            finite = array[np.isfinite(array)]
            connection.execute(
                text(
                    "INSERT INTO metric_chunks (series_id, first_step, last_step, count, steps,"
                    ' "values", min_value, max_value, mean_value) VALUES (7, :first, :last,'
                    " :count, :steps, :values, :lo, :hi, :mean)"
                ),
                {
                    "first": first,
                    "last": int(steps[-1]),
                    "count": len(values),
                    "steps": steps.astype("<i4").tobytes(),
                    "values": array.tobytes(),
                    "lo": float(finite.min()) if len(finite) else None,
                    "hi": float(finite.max()) if len(finite) else None,
                    "mean": float(finite.mean()) if len(finite) else None,
                },
            )
    command.upgrade(config, "head")
    with Session(engine) as session:
        counts = {c.first_step: c.finite_count for c in session.query(MetricChunk)}
        assert counts == {0: 2, 4: 0, 6: 3}
        # The newest chunk takes the next points; its summary covers old and new ones.
        assert store.add_metrics(session, "run-a", [("k", 9, 10.0), ("k", 10, None)]) == 2
        newest = session.get(MetricChunk, (7, 6))
        assert (newest.count, newest.finite_count, newest.last_step) == (5, 4, 10)
        assert (newest.min_value, newest.max_value) == (-1.0, 10.0)
        assert newest.mean_value == pytest.approx((2.0 - 1.0 + 3.0 + 10.0) / 4, rel=1e-12)
    command.downgrade(config, BEFORE)
    assert "finite_count" not in {c["name"] for c in inspect(engine).get_columns("metric_chunks")}
    command.upgrade(config, "head")
    with Session(engine) as session:
        counts = {c.first_step: c.finite_count for c in session.query(MetricChunk)}
        assert counts == {0: 2, 4: 0, 6: 4}
    engine.dispose()


def test_existing_chunks_get_their_finite_counts(tmp_path: Path) -> None:
    check_migration(f"sqlite:///{tmp_path / 'old.db'}")
