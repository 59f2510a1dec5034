"""Initial schema: runs, problems, solves, steps, candidates, scores.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("name", name="uq_runs_name"),
    )
    op.create_table(
        "problems",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("reference", sa.Text(), nullable=True),
        sa.Column("meta", _json(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_problems"),
        sa.UniqueConstraint("dataset", "key", name="uq_problems_dataset_key"),
    )
    op.create_table(
        "solves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(), nullable=False),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("generations", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("flops", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("detail", _json(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_solves_run_id_runs"),
        sa.ForeignKeyConstraint(["problem_id"], ["problems.id"], name="fk_solves_problem_id_problems"),
        sa.PrimaryKeyConstraint("id", name="pk_solves"),
        sa.UniqueConstraint("run_id", "problem_id", name="uq_solves_run_id_problem_id"),
    )
    op.create_index("ix_solves_run_id_status", "solves", ["run_id", "status"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("solve_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("generations", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("flops", sa.Float(), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["solve_id"], ["solves.id"], name="fk_steps_solve_id_solves", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
    )
    op.create_index("ix_steps_solve_id_seq", "steps", ["solve_id", "seq"])
    op.create_index(
        "ix_steps_failed",
        "steps",
        ["solve_id"],
        sqlite_where=sa.text("error IS NOT NULL"),
        postgresql_where=sa.text("error IS NOT NULL"),
    )
    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("solve_id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("chain", sa.Integer(), nullable=True),
        sa.Column("finished", sa.Boolean(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("logprob", sa.Float(), nullable=True),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["solve_id"], ["solves.id"], name="fk_candidates_solve_id_solves", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], name="fk_candidates_step_id_steps", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["candidates.id"], name="fk_candidates_parent_id_candidates", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_candidates"),
        sa.UniqueConstraint("solve_id", "key", name="uq_candidates_solve_id_key"),
    )
    op.create_index("ix_candidates_solve_id_parent_id", "candidates", ["solve_id", "parent_id"])
    op.create_index("ix_candidates_step_id", "candidates", ["step_id"])
    op.create_index("ix_candidates_parent_id", "candidates", ["parent_id"])
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("step_scores", _json(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("aggregation", sa.String(length=16), nullable=False),
        sa.Column("verifier", sa.String(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_id"],
            ["candidates.id"],
            name="fk_scores_candidate_id_candidates",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], name="fk_scores_step_id_steps", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_scores"),
    )
    op.create_index("ix_scores_candidate_id", "scores", ["candidate_id"])
    op.create_index("ix_scores_step_id", "scores", ["step_id"])


def downgrade() -> None:
    op.drop_table("scores")
    op.drop_table("candidates")
    op.drop_table("steps")
    op.drop_table("solves")
    op.drop_table("problems")
    op.drop_table("runs")
