"""metric_chunks: finite_count (how many of the chunk's values are finite), so a write can
append points to a chunk in the database and keep its finite mean exact; on PostgreSQL the
steps and values arrays are stored uncompressed out of line (STORAGE EXTERNAL).

Why: a PostgreSQL write appends a batch to each series' newest chunk with one statement
(``steps || new``) instead of reading the chunk back and rewriting it from the client; the
mean of the merged chunk is (mean * finite_count + sum) / (finite_count + new finite), which
needs the count. Packed float64 training curves do not compress (pglz gives up on them after
trying), so every rewrite paid a failed compression attempt: EXTERNAL skips it.

Existing chunks get their count from their values, decoded as service.store.series packs them
(little-endian float64, NaN where no value), restated here so later changes cannot alter it.

Revision ID: e41b7a9c2d05
Revises: 8735742ff8de
Create Date: 2026-12-07 07:00:00.000000

"""

from typing import Sequence, Union

import numpy as np
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "e41b7a9c2d05"
down_revision: Union[str, Sequence[str], None] = "8735742ff8de"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

VALUES = np.dtype("<f8")
PAGE = 1000  # chunks read per query while filling the new column

chunks = sa.table(
    "metric_chunks",
    sa.column("series_id", sa.Integer),
    sa.column("first_step", sa.Integer),
    sa.column("values", sa.LargeBinary),
    sa.column("finite_count", sa.Integer),
)


def _set_storage(kind: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE metric_chunks ALTER COLUMN steps SET STORAGE {kind}, "
            f'ALTER COLUMN "values" SET STORAGE {kind}'
        )


def upgrade() -> None:
    op.add_column(
        "metric_chunks",
        sa.Column("finite_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    bind = op.get_bind()
    update = (
        chunks.update()
        .where(
            chunks.c.series_id == sa.bindparam("b_series"),
            chunks.c.first_step == sa.bindparam("b_first"),
        )
        .values(finite_count=sa.bindparam("b_finite"))
    )
    after = (-1, -(2**31))  # keyset pages over the primary key, so memory holds one page
    while True:
        rows = bind.execute(
            sa.select(chunks.c.series_id, chunks.c.first_step, chunks.c["values"])
            .where(sa.tuple_(chunks.c.series_id, chunks.c.first_step) > after)
            .order_by(chunks.c.series_id, chunks.c.first_step)
            .limit(PAGE)
        ).all()
        if not rows:
            break
        bind.execute(
            update,
            [
                {
                    "b_series": series_id,
                    "b_first": first_step,
                    "b_finite": int(np.isfinite(np.frombuffer(blob, dtype=VALUES)).sum()),
                }
                for series_id, first_step, blob in rows
            ],
        )
        after = (rows[-1][0], rows[-1][1])
    _set_storage("EXTERNAL")


def downgrade() -> None:
    _set_storage("EXTENDED")
    with op.batch_alter_table("metric_chunks", schema=None) as batch_op:
        batch_op.drop_column("finite_count")
