"""metrics as series of packed chunks (metric_series, metric_chunks) instead of one row per
point (metric_points)

Existing points are converted: one series per (run, key), its points in step order cut into
chunks of 1024, steps int32 and values float64 (NULL as NaN), little-endian, with the chunk's
step range, count and finite min/max/mean. The packing is restated here, frozen, so a later
change to service.store.series cannot change what this migration writes. Downgrade unpacks.

Revision ID: 7c41d2e8a0f5
Revises: c4d8e2f1a7b3
Create Date: 2026-12-02 11:10:00.000000

"""
from typing import Sequence, Union

import numpy as np
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '7c41d2e8a0f5'
down_revision: Union[str, Sequence[str], None] = 'c4d8e2f1a7b3'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

CHUNK_POINTS = 1024
STEPS, VALUES = np.dtype('<i4'), np.dtype('<f8')

points = sa.table(
    'metric_points',
    sa.column('run_id', sa.String),
    sa.column('key', sa.String),
    sa.column('step', sa.Integer),
    sa.column('value', sa.Float),
)
series = sa.table(
    'metric_series', sa.column('id', sa.Integer), sa.column('run_id', sa.String),
    sa.column('key', sa.String), sa.column('revision', sa.Integer),
)
chunks = sa.table(
    'metric_chunks',
    *(sa.column(c, sa.Integer) for c in ('series_id', 'first_step', 'last_step', 'count')),
    sa.column('steps', sa.LargeBinary), sa.column('values', sa.LargeBinary),
    *(sa.column(c, sa.Float) for c in ('min_value', 'max_value', 'mean_value')),
)


def _pack(series_id: int, steps: list, values: list) -> list[dict]:
    rows = []
    for i in range(0, len(steps), CHUNK_POINTS):
        s = np.asarray(steps[i:i + CHUNK_POINTS], dtype=np.int64)
        v = np.asarray(values[i:i + CHUNK_POINTS], dtype=np.float64)  # None -> NaN
        finite = v[np.isfinite(v)]
        has = len(finite) > 0
        rows.append({
            'series_id': series_id, 'first_step': int(s[0]), 'last_step': int(s[-1]),
            'count': len(s), 'steps': s.astype(STEPS).tobytes(),
            'values': v.astype(VALUES).tobytes(),
            'min_value': float(finite.min()) if has else None,
            'max_value': float(finite.max()) if has else None,
            'mean_value': float(finite.mean()) if has else None,
        })
    return rows


def upgrade() -> None:
    op.create_table(
        'metric_series',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('run_id', sa.String(length=36), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('revision', sa.Integer(), server_default=sa.text('0'), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('run_id', 'key', name='uq_metric_series_run_key'),
    )
    op.create_table(
        'metric_chunks',
        sa.Column('series_id', sa.Integer(), nullable=False),
        sa.Column('first_step', sa.Integer(), nullable=False),
        sa.Column('last_step', sa.Integer(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('steps', sa.LargeBinary(), nullable=False),
        sa.Column('values', sa.LargeBinary(), nullable=False),
        sa.Column('min_value', sa.Float(), nullable=True),
        sa.Column('max_value', sa.Float(), nullable=True),
        sa.Column('mean_value', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['series_id'], ['metric_series.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('series_id', 'first_step'),
    )
    op.create_index(
        'ix_metric_chunks_series_last', 'metric_chunks', ['series_id', 'last_step'], unique=False
    )
    bind = op.get_bind()
    bind.execute(
        sa.insert(series).from_select(
            ['run_id', 'key', 'revision'],
            sa.select(points.c.run_id, points.c.key, sa.literal(0)).distinct(),
        )
    )
    ids = {(r, k): i for i, r, k in bind.execute(sa.select(series.c.id, series.c.run_id, series.c.key))}
    # One series at a time, so memory holds one series, not the table.
    for (run_id, key), series_id in ids.items():
        rows = bind.execute(
            sa.select(points.c.step, points.c.value)
            .where(points.c.run_id == run_id, points.c.key == key)
            .order_by(points.c.step)
        ).all()
        packed = _pack(series_id, [s for s, _ in rows], [v for _, v in rows])
        bind.execute(sa.insert(chunks), packed)
    op.drop_table('metric_points')


def downgrade() -> None:
    op.create_table(
        'metric_points',
        sa.Column('run_id', sa.String(length=36), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('value', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('run_id', 'key', 'step'),
    )
    bind = op.get_bind()
    for series_id, run_id, key in bind.execute(sa.select(series.c.id, series.c.run_id, series.c.key)).all():
        rows = []
        for steps, values in bind.execute(
            sa.select(chunks.c.steps, chunks.c["values"]).where(chunks.c.series_id == series_id)
        ):
            s = np.frombuffer(steps, dtype=STEPS).tolist()
            v = np.frombuffer(values, dtype=VALUES).tolist()
            rows += [
                {'run_id': run_id, 'key': key, 'step': a, 'value': None if b != b else b}
                for a, b in zip(s, v)
            ]
        if rows:
            bind.execute(sa.insert(points), rows)
    op.drop_index('ix_metric_chunks_series_last', table_name='metric_chunks')
    op.drop_table('metric_chunks')
    op.drop_table('metric_series')
