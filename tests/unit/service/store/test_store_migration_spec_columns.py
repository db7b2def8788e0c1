"""Migration 8735742ff8de on a database that already holds runs: each run's spec_* columns are
filled from its stored spec (null where an old spec lacks the field), every spec filter then
returns the runs that the JSON path filters of before the migration returned, newest first,
and the migration goes down and up again. The same check runs on PostgreSQL in
tests/integration/test_store_pg.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from bncore.spec import JobSpec
from service import store
from service.migrate import alembic_config
from service.models import spec_filter_values

BEFORE = "c7d12e0f5a31"

# The spec filters as they were before the migration: (path in the spec, how it compared).
JSON_FILTERS = {
    "dataset": (("dataset",), "string"),
    "arch": (("model", "arch"), "string"),
    "activation": (("model", "activation"), "string"),
    "norm": (("model", "norm"), "string"),
    "optimizer": (("optimizer", "name"), "string"),
    "lr": (("optimizer", "lr"), "float"),
    "batch_size": (("batch_size",), "integer"),
    "seed": (("seed",), "integer"),
}
CASES: list[dict[str, Any]] = [
    {"norm": "none"},
    {"norm": "batchnorm", "seed": 1},
    {"lr": 0.1},
    {"seed": 3},
    {"dataset": "digits", "batch_size": 30},
    {"arch": "mlp"},  # a default: every full spec has it
    {"optimizer": "adam", "activation": "relu"},
    {"lr": 0.3},  # nothing
]

runs_before = sa.table(
    "runs",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("status", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("attempt", sa.Integer),
    sa.column("cancel_requested", sa.Boolean),
    sa.column("tags", sa.JSON),
)


def old_specs() -> list[dict[str, Any]]:
    """Specs as JobSpec stored them (defaults included), and two from an older schema: one
    with no fields at all and one lacking most."""
    specs = []
    for i in range(12):
        spec = JobSpec(
            dataset=("mnist1d", "digits")[i % 2],
            model={
                "norm": ("none", "batchnorm")[i % 3 == 0],
                "activation": ("relu", "tanh")[i % 3 == 2],
            },
            optimizer={"name": ("sgd", "adam")[i % 4 == 1], "lr": (0.1, 0.5)[i % 3 == 1]},
            batch_size=(30, 60)[i % 4 == 2],
            seed=i % 4,
        )
        specs.append(spec.model_dump(mode="json"))
    return specs + [{}, {"model": {"norm": "none"}, "seed": 3}]


def json_filter_ids(connection: sa.Connection, filters: dict[str, Any]) -> list[str]:
    """The ids the spec filters of before the migration returned, newest first."""
    query = sa.select(runs_before.c.id).order_by(
        runs_before.c.created_at.desc(), runs_before.c.id.desc()
    )
    for field, value in filters.items():
        path, kind = JSON_FILTERS[field]
        query = query.where(getattr(runs_before.c.spec[path], f"as_{kind}")() == value)
    return list(connection.scalars(query))


def all_pages(session: Session, filters: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        runs, cursor = store.list_runs(session, spec=filters, limit=3, cursor=cursor)
        ids += [run.id for run in runs]
        if cursor is None:
            return ids


def check_migration(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, BEFORE)
    engine = create_engine(url)
    specs = old_specs()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {
            "id": f"old-{i:02d}",
            "name": "old",
            "spec": spec,
            "status": "succeeded",
            # Two runs per second: pages must also order and continue within one created_at.
            "created_at": start + timedelta(seconds=i // 2),
            "attempt": 1,
            "cancel_requested": False,
            "tags": [],
        }
        for i, spec in enumerate(specs)
    ]
    with engine.begin() as connection:
        connection.execute(runs_before.insert(), rows)
        before = {str(case): json_filter_ids(connection, case) for case in CASES}
    assert all(before[str(case)] for case in CASES[:-1]), before  # only the last one is empty

    command.upgrade(config, "head")
    with Session(engine) as session:
        for row in rows:
            run = store.get_run(session, row["id"])
            columns = {column: getattr(run, column) for column in spec_filter_values({})}
            assert columns == spec_filter_values(row["spec"]), row
        assert store.get_run(session, "old-12").spec_norm is None  # the spec was {}
        partial = store.get_run(session, "old-13")
        assert (partial.spec_norm, partial.spec_seed, partial.spec_lr) == ("none", 3, None)
        for case in CASES:
            assert all_pages(session, case) == before[str(case)], case

    command.downgrade(config, BEFORE)
    command.upgrade(config, "head")
    with Session(engine) as session:
        assert all_pages(session, CASES[0]) == before[str(CASES[0])]
    engine.dispose()


def test_existing_runs_get_their_spec_columns(tmp_path: Path) -> None:
    check_migration(f"sqlite:///{tmp_path / 'old.db'}")
