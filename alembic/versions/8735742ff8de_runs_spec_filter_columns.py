"""runs: the spec fields the list filters on as columns of their own (spec_dataset, spec_arch,
spec_activation, spec_norm, spec_optimizer, spec_lr, spec_batch_size, spec_seed), and
(column, created_at, id) indexes for them, for status and for name (these two replace the
single-column ix_runs_status and ix_runs_name), so a filtered newest-first page is an index
range instead of a JSON scan of every run (issue 14: 100k runs, a page < 20 ms).

Existing runs are filled from their stored spec by the same JSON path expressions the filters
used until now (JSON_EXTRACT on SQLite, #>> on PostgreSQL), so every filter keeps returning
the runs it returned before; a field the spec lacks stays null, as it matched nothing before.
The paths are restated here, frozen, so a later change to service.models.SPEC_FILTERS cannot
change what this migration writes.

Revision ID: 8735742ff8de
Revises: c7d12e0f5a31
Create Date: 2026-12-03 10:00:00.000000

"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8735742ff8de"
down_revision: Union[str, Sequence[str], None] = "c7d12e0f5a31"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# column → (path in the spec, its type)
SPEC_COLUMNS = {
    "spec_dataset": (("dataset",), sa.String(length=64)),
    "spec_arch": (("model", "arch"), sa.String(length=64)),
    "spec_activation": (("model", "activation"), sa.String(length=64)),
    "spec_norm": (("model", "norm"), sa.String(length=64)),
    "spec_optimizer": (("optimizer", "name"), sa.String(length=64)),
    "spec_lr": (("optimizer", "lr"), sa.Float()),
    "spec_batch_size": (("batch_size",), sa.Integer()),
    "spec_seed": (("seed",), sa.Integer()),
}
NEWEST_FIRST = ["status", "name", *SPEC_COLUMNS]  # each indexed as (column, created_at, id)
OLD_INDEXES = {"ix_runs_status": "status", "ix_runs_name": "name"}

runs = sa.table(
    "runs",
    sa.column("spec", sa.JSON),
    *(sa.column(column, kind) for column, (_, kind) in SPEC_COLUMNS.items()),
)


def _from_spec(path: tuple[str, ...], kind: sa.types.TypeEngine) -> sa.ColumnElement:
    value = runs.c.spec[path]
    if isinstance(kind, sa.String):
        return value.as_string()
    return value.as_float() if isinstance(kind, sa.Float) else value.as_integer()


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for column, (_, kind) in SPEC_COLUMNS.items():
            batch_op.add_column(sa.Column(column, kind, nullable=True))
    op.execute(
        runs.update().values(
            {column: _from_spec(path, kind) for column, (path, kind) in SPEC_COLUMNS.items()}
        )
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for index in OLD_INDEXES:
            batch_op.drop_index(index)
        for column in NEWEST_FIRST:
            batch_op.create_index(
                f"ix_runs_{column}_created_id", [column, "created_at", "id"], unique=False
            )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        for column in NEWEST_FIRST:
            batch_op.drop_index(f"ix_runs_{column}_created_id")
        for index, column in OLD_INDEXES.items():
            batch_op.create_index(index, [column], unique=False)
        for column in reversed(SPEC_COLUMNS):
            batch_op.drop_column(column)
