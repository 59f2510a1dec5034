"""Real databases for tests: a SQLite file, and a throw-away PostgreSQL database on the local server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import URL
from sqlalchemy.orm import Session, sessionmaker

from db import CandidateRecord, Recorder, ScoreRecord, StepRecord, connect, dispose

# The server's maintenance connection; override to point the tests at another server.
POSTGRES_ADMIN = os.environ.get("TTC_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=test")


def _postgres_url(admin: psycopg.Connection[object], name: str) -> str:
    info = admin.info
    url = URL.create("postgresql+psycopg", info.user, info.password or None, info.host, info.port, name)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[tuple[psycopg.Connection[object], str]]:
    """An admin connection and a database migrated to head, once per test session: cloning it is
    cheaper than migrating every test's database."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL not reachable ({POSTGRES_ADMIN}): {error}; deselect with -m 'not postgres'")
    template = f"ttc_template_{uuid.uuid4().hex}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(template)))
        try:
            url = _postgres_url(admin, template)
            connect(url)
            dispose(url)  # a template must have no sessions when it is cloned
            yield admin, template
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(template)))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to a database of its own: a new SQLite file (empty), or a fresh PostgreSQL database
    `ttc_test_<hex>` (cloned from a migrated template) that is dropped after the test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'ttc.db'}"
        yield url
        dispose(url)
        return
    admin, template = request.getfixturevalue("_postgres_template")
    name = f"ttc_test_{uuid.uuid4().hex}"
    admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    url = _postgres_url(admin, name)
    try:
        yield url
    finally:
        dispose(url)
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    """The session factory of the (migrated) test database."""
    return connect(database_url)


@pytest.fixture
def recorder(sessions: sessionmaker[Session]) -> Recorder:
    """A recorder on the test database."""
    return Recorder(sessions)


T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def beam_steps() -> list[StepRecord]:
    """A beam search of width 2 over 3 node executions: propose 4 roots, score them, expand the best
    two (one child finishing into an answer written before its parent in the same step)."""

    def step(key: str, parent: str | None, round_: int, depth: int, kind: str = "step") -> CandidateRecord:
        finished = kind == "answer"
        return CandidateRecord(
            key, parent, round_, depth, f"text of {key}", kind, finished, "42" if finished else None, tokens=7
        )

    return [
        StepRecord(
            seq=0,
            node="propose",
            round=0,
            started_at=T0,
            seconds=0.5,
            generations=4,
            tokens=28,
            candidates=[step(f"r0.{i}", None, 0, 1) for i in range(4)],
        ),
        StepRecord(
            seq=1,
            node="verify",
            round=0,
            started_at=T0 + timedelta(seconds=1),
            seconds=0.25,
            scores=[ScoreRecord(f"r0.{i}", [0.1 * i], 0.1 * i, "last", "prm") for i in range(4)],
        ),
        StepRecord(
            seq=2,
            node="propose",
            round=1,
            started_at=T0 + timedelta(seconds=2),
            seconds=0.5,
            generations=4,
            tokens=35,
            candidates=[
                step("r1.3a", "r1.3", 1, 3, kind="answer"),
                step("r1.0", "r0.3", 1, 2),
                step("r1.1", "r0.3", 1, 2),
                step("r1.2", "r0.2", 1, 2),
                step("r1.3", "r0.2", 1, 2),
            ],
            scores=[
                ScoreRecord("r1.3a", [0.2, 0.9, 0.8], 0.8, "last", "prm"),
                ScoreRecord("r0.3", [0.3, 0.35], 0.35, "last", "prm", truncated=True),
            ],
        ),
    ]


def record_beam(recorder: Recorder, run_id: str, problem_id: int) -> int:
    """Record `beam_steps()` as a finished solve; its id."""
    solve_id = recorder.start_solve(run_id, problem_id, "beam_search", {"beam_width": 2}, budget=4)
    for record in beam_steps():
        recorder.record_step(solve_id, record)
    return solve_id
