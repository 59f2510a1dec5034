"""The schema: one run evaluates problems; each solve of a problem is a trace of node executions
(steps), the candidates they proposed (a tree through `parent_id`) and the verifier's scores. Fitted
compute-optimal policies are kept by name beside them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Binary JSON on PostgreSQL (compact, comparable); plain JSON text on SQLite.
JSONValue = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone, so it is stored as UTC
    and given back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    # Fixed constraint names, so migrations (and SQLite batch mode) can address them.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONValue,
        list[float]: JSONValue,
    }


class Run(Base):
    """One evaluation: a named, resumable sweep of solves under one configuration."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex
    name: Mapped[str | None] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # strategy, settings, model URIs...
    status: Mapped[str] = mapped_column(String(16), default="running")


class Problem(Base):
    """A dataset row, stored once whatever the number of runs that solve it."""

    __tablename__ = "problems"
    __table_args__ = (UniqueConstraint("dataset", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset: Mapped[str] = mapped_column(String)
    key: Mapped[str] = mapped_column(String)
    question: Mapped[str] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. {"bin": 3, "level": 5}


class Solve(Base):
    """One problem under one plan (strategy, settings, budget) in one run, with what it spent."""

    __tablename__ = "solves"
    __table_args__ = (
        UniqueConstraint("run_id", "problem_id"),
        Index("ix_solves_run_id_status", "run_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id"))
    strategy: Mapped[str] = mapped_column(String)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    budget: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done | failed | interrupted
    answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None]
    generations: Mapped[float] = mapped_column(default=0.0)
    tokens: Mapped[int] = mapped_column(default=0)
    flops: Mapped[float] = mapped_column(default=0.0)
    seconds: Mapped[float] = mapped_column(default=0.0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)  # e.g. final vote table, bin
    # The row is the claim: the worker ("host:pid:id") that solves it, and until when its lease holds
    # unless renewed. A running solve whose lease has passed was abandoned, and another worker may take it.
    worker: Mapped[str | None] = mapped_column(String)
    lease_until: Mapped[datetime | None]


class Step(Base):
    """One execution of one graph node inside a solve."""

    __tablename__ = "steps"
    __table_args__ = (
        Index("ix_steps_solve_id_seq", "solve_id", "seq"),
        # Only failed steps are indexed: "which steps failed in run X" reads this, never the rest.
        Index(
            "ix_steps_failed",
            "solve_id",
            sqlite_where=text("error IS NOT NULL"),
            postgresql_where=text("error IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    solve_id: Mapped[int] = mapped_column(ForeignKey("solves.id", ondelete="CASCADE"))
    seq: Mapped[int]  # order of execution within the solve
    node: Mapped[str] = mapped_column(String)
    round: Mapped[int]
    started_at: Mapped[datetime]
    seconds: Mapped[float]
    generations: Mapped[float] = mapped_column(default=0.0)
    tokens: Mapped[int] = mapped_column(default=0)
    flops: Mapped[float] = mapped_column(default=0.0)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class Candidate(Base):
    """A partial or complete solution; its path from the root is the chain of `parent_id`s."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("solve_id", "key"),
        Index("ix_candidates_solve_id_parent_id", "solve_id", "parent_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    solve_id: Mapped[int] = mapped_column(ForeignKey("solves.id", ondelete="CASCADE"))
    # The foreign keys below are indexed so that deleting a solve's rows never scans the table.
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String)  # id inside the solve, e.g. "r2.5"
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"), index=True)
    round: Mapped[int]
    depth: Mapped[int]  # number of steps in its path
    text: Mapped[str] = mapped_column(Text)  # what it adds to its parent: one step, or a whole answer
    kind: Mapped[str] = mapped_column(String(16))  # step | answer | revision | rollout
    lineage: Mapped[int | None]
    finished: Mapped[bool]
    answer: Mapped[str | None] = mapped_column(Text)
    logprob: Mapped[float | None]
    tokens: Mapped[int] = mapped_column(default=0)


class Score(Base):
    """A verifier's judgement of a candidate: per-step scores and their aggregate."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(primary_key=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"), index=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    step_scores: Mapped[list[float]] = mapped_column(default=list)
    value: Mapped[float]
    aggregation: Mapped[str] = mapped_column(String(16))  # last | min | prod
    verifier: Mapped[str] = mapped_column(String)
    truncated: Mapped[bool] = mapped_column(default=False)


class Policy(Base):
    """A fitted compute-optimal policy (thresholds, plans, θ*(bin, N)) as the JSON `flows.policy` writes."""

    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    content: Mapped[dict[str, Any]]
