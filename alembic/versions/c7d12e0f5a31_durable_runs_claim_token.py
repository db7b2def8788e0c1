"""durable runs: runs.claim_token (the current attempt's fencing token) and runs.resumed_step
(the checkpoint step the current attempt resumed from)

Revision ID: c7d12e0f5a31
Revises: 7c41d2e8a0f5
Create Date: 2026-12-02 11:10:00.000000

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = "c7d12e0f5a31"
down_revision: Union[str, Sequence[str], None] = '7c41d2e8a0f5'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Runs running during the upgrade have no token: their worker's next write is stale, it
    stops, and the reaper requeues the run."""
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_token", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("resumed_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("resumed_step")
        batch_op.drop_column("claim_token")
