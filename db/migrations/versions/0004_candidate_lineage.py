"""Candidates: `chain` becomes `lineage`, the independent line of search a candidate belongs to (a
revision chain or a DVTS subtree), so the column's name has one meaning.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.alter_column("chain", new_column_name="lineage")


def downgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.alter_column("lineage", new_column_name="chain")
