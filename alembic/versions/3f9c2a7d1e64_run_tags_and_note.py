"""runs: free-form tags (a JSON list of short strings) and a note; sweeps: an index for
newest-first pages

Revision ID: 3f9c2a7d1e64
Revises: b538ff4aa898
Create Date: 2026-12-02 10:20:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '3f9c2a7d1e64'
down_revision: Union[str, Sequence[str], None] = 'b538ff4aa898'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Existing runs get no tags ('[]') and no note."""
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('tags', sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.create_index('ix_sweeps_created_id', ['created_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_index('ix_sweeps_created_id')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('note')
        batch_op.drop_column('tags')
