"""No secret is stored or logged: a database password and an API key planted in the URLs a user gives
`ttc evaluate` and `ttc solve` (the installed script, PostgreSQL, an OpenAI-compatible server on
127.0.0.1, the temporary Prefect server) appear nowhere afterwards — not in ttc's database, not in
Prefect's (flow-run parameters, logs, artifacts), not in what the commands print or the summary file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData, make_url, select

from db import connect, dispose
from tests.test_engines_openai import MODEL, LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")
PASSWORD = "Planted-Db-Password-7f3a"
KEY = "planted-api-key-91c2"


@pytest.fixture(scope="module")
def server(tiny_lm: Path) -> Iterator[LiveServer]:
    from ttc_nodes.engines.hf import HFProposer

    live = LiveServer(HFProposer(str(tiny_lm), device="cpu"))
    yield live
    live.stop()


def every_value(database_url: str) -> str:
    """Every row of every table of ttc's database, as text."""
    engine = connect(database_url)().get_bind()
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        return "\n".join(
            repr(row) for table in metadata.sorted_tables for row in connection.execute(select(table)).all()
        )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_planted_password_and_key_appear_nowhere(database_url: str, server: LiveServer, tmp_path: Path) -> None:
    with_password = make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False)
    host = server.url.removeprefix("http://")
    proposer = f"openai:http://user:{KEY}@{host}#{MODEL}?params=1e5"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    environment["PREFECT_HOME"] = str(tmp_path / "prefect")
    summary = tmp_path / "summary.json"
    plan = ["-s", "majority", "-n", "2", "--set", "max_answer_tokens=16"]
    common = [*plan, "--proposer", proposer, "--db", with_password]

    dataset = ["--dataset", "testbed:arith?n=3&seed=4"]
    outputs = ["--run-name", "planted", "--summary", str(summary), "--json"]
    evaluated = subprocess.run(
        [TTC_SCRIPT, "evaluate", *dataset, *common, *outputs],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    solved = subprocess.run(
        [TTC_SCRIPT, "solve", "What is 2+2?", *common, "--json"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert evaluated.returncode == 0, evaluated.stderr
    assert solved.returncode == 0, solved.stderr
    prefect_files = [p for p in (tmp_path / "prefect").rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in prefect_files), "the temporary Prefect server kept no database"
    stored = every_value(database_url)
    assert "planted" in stored and f"user:***@{host}" in stored  # the run and its masked proposer are there
    places = {
        "ttc database": stored,
        "evaluate output": evaluated.stdout + evaluated.stderr,
        "solve output": solved.stdout + solved.stderr,
        "summary": summary.read_text(),
        **{f"prefect {p.name}": p.read_bytes().decode("utf-8", "replace") for p in prefect_files},
    }
    assert json.loads(evaluated.stdout)["proposer"] == f"openai:http://user:***@{host}#{MODEL}?params=1e5"
    leaks = {place: secret for place, text in places.items() for secret in (PASSWORD, KEY) if secret in text}
    assert leaks == {}
    dispose(database_url)
