"""Several `ttc evaluate` workers on one run, as users scale out: real processes of the installed
script, started at once on one database (SQLite and PostgreSQL). Each prompt is solved once, by one of
them; none is reset under another; and every worker ends with the same, true summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import func, select

from db import connect
from db.models import Candidate, Run, Solve, Step
from tests.processes import tail

pytestmark = pytest.mark.slow

TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")
RUN = "shared"
PROMPTS = 12


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """One Prefect server for the module, which every worker reports to (telemetry off)."""
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield str(PREFECT_API_URL.value())


def command(database_url: str) -> list[str]:
    return [
        TTC_SCRIPT,
        "evaluate",
        "--dataset",
        f"testbed:arith?n={PROMPTS}&seed=5",
        "--strategy",
        "majority",
        "--budget",
        "4",
        "--run-name",
        RUN,
        "--db",
        database_url,
        "--json",
    ]


def run_workers(count: int, database_url: str, environment: dict[str, str], logs: Path) -> list[tuple[int, str]]:
    """Start `count` workers at once and wait for all; each one's exit status and stdout."""
    processes = []
    for i in range(count):
        with (logs / f"{i}.out").open("wb") as out, (logs / f"{i}.err").open("wb") as err:
            processes.append(
                subprocess.Popen(command(database_url), stdout=out, stderr=err, env=environment, start_new_session=True)
            )
    deadline = time.monotonic() + 240
    try:
        while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.2)  # polling reaps each worker as it ends: a zombie would still look alive
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    return [(p.returncode, (logs / f"{i}.out").read_text()) for i, p in enumerate(processes)]


@pytest.mark.parametrize(
    ("database_url", "workers"),
    [("sqlite", 2), pytest.param("postgresql", 3, marks=pytest.mark.postgres)],
    indirect=["database_url"],
)
def test_workers_started_at_once_share_a_run_solving_each_prompt_exactly_once(
    prefect_api: str, database_url: str, workers: int, tmp_path: Path
) -> None:
    connect(database_url)  # migrated before the workers race to open it
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"}

    finished = run_workers(workers, database_url, environment, tmp_path)

    logs = "\n".join(f"--- worker {i}:\n{tail(tmp_path / f'{i}.err')}" for i in range(workers))
    assert [code for code, _ in finished] == [0] * workers, logs
    summaries = [json.loads(out) for _, out in finished]
    with connect(database_url)() as session:
        run_id = session.scalar(select(Run.id).where(Run.name == RUN))
        solves = session.scalars(select(Solve).where(Solve.run_id == run_id)).all()
        repeated_seqs = session.execute(
            select(Step.solve_id, Step.seq).group_by(Step.solve_id, Step.seq).having(func.count() > 1)
        ).all()
        repeated_keys = session.execute(
            select(Candidate.solve_id, Candidate.key)
            .group_by(Candidate.solve_id, Candidate.key)
            .having(func.count() > 1)
        ).all()
        steps = session.execute(select(func.count(), func.max(Step.id))).one()
        candidates = session.execute(select(func.count(), func.max(Candidate.id))).one()

    # one solve per prompt, each done once, its lease released, its trace whole and never rewritten
    assert len(solves) == PROMPTS and len({s.problem_id for s in solves}) == PROMPTS
    assert {(s.status, s.lease_until) for s in solves} == {("done", None)}
    assert repeated_seqs == [] and repeated_keys == []
    # no trace row was ever deleted (a reset solve's were) or rolled back: ids run without a gap
    assert steps[0] == steps[1] and candidates[0] == candidates[1]
    # every worker's summary is the database's
    truth = {
        "prompts": PROMPTS,
        "done": PROMPTS,
        "failed": 0,
        "correct": sum(bool(s.correct) for s in solves),
        "generations": sum(s.generations for s in solves),
        "tokens": sum(s.tokens for s in solves),
    }
    for summary in summaries:
        assert {key: summary[key] for key in truth} == truth, logs
        assert summary["run_id"] == run_id
