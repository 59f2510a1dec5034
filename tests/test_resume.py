"""Resuming `ttc evaluate` after a real SIGKILL: the installed script, a Prefect server, tiny models,
SQLite and PostgreSQL. Prompts finished before the kill stay as they were; the one that was mid-flight
is restarted in place; nothing is duplicated and no trace row is left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import connect, queries
from db.models import Candidate, Problem, Run, Score, Solve, Step
from tests.data_fixtures import write_tiny_gsm8k

pytestmark = pytest.mark.slow

TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")
RUN = "resume-after-kill"
PROMPTS = 6
SLICE_S = 0.002  # how long the stepped process runs between inspections


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    """One Prefect server for the module; both `ttc evaluate` processes report to it. (Its telemetry,
    which only fails offline and contends for the server's SQLite file, is off.)"""
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def command(tmp_path: Path, tiny_lm: Path, tiny_prm: Path, database_url: str) -> list[str]:
    return [
        TTC_SCRIPT,
        "evaluate",
        "--dataset",
        write_tiny_gsm8k(tmp_path, PROMPTS),
        "--strategy",
        "best_of_n_weighted",
        "--budget",
        "2",
        "--set",
        "max_answer_tokens=12",
        "--run-name",
        RUN,
        "--db",
        database_url,
        "--concurrency",
        "1",
        "--proposer",
        f"hf:{tiny_lm}",
        "--verifier",
        f"hf:{tiny_prm}",
    ]


@dataclass(frozen=True)
class SolveRow:
    id: int
    problem_id: int
    status: str
    steps: int
    started_at: datetime
    finished_at: datetime | None
    answer: str | None


def solves_of_run(session: Session) -> dict[int, SolveRow]:
    """The run's solves by problem id, with how many steps each has stored."""
    steps = select(Step.solve_id, func.count().label("n")).group_by(Step.solve_id).subquery()
    rows = session.execute(
        select(Solve, func.coalesce(steps.c.n, 0))
        .join(Run, Solve.run_id == Run.id)
        .outerjoin(steps, steps.c.solve_id == Solve.id)
        .where(Run.name == RUN)
    ).all()
    return {
        s.problem_id: SolveRow(s.id, s.problem_id, s.status, n, s.started_at, s.finished_at, s.answer) for s, n in rows
    }


def caught_mid_flight(database_url: str) -> dict[int, SolveRow] | None:
    """The run's solves if at least two are done and one is running with part of its trace stored."""
    with connect(database_url)() as session:
        solves = solves_of_run(session)
    done = sum(s.status == "done" for s in solves.values())
    return solves if done >= 2 and any(s.status == "running" and s.steps for s in solves.values()) else None


def kill_mid_solve(
    process: subprocess.Popen[bytes], log: Path, database_url: str, deadline: float
) -> dict[int, SolveRow]:
    """SIGKILL the process group at a moment when two solves are done and a third is half-written;
    the solves as they were at that moment.

    A solve takes ~50 ms and writes its steps within the last ~20 ms of it, too short a window to hit by
    polling. So once the first solve has begun (the models are loaded), the process is advanced in
    slices shorter than that window: stopped (SIGSTOP freezes what it has committed), inspected, and
    continued, until the database shows a solve mid-flight."""
    group = os.getpgid(process.pid)
    while time.monotonic() < deadline and process.poll() is None:
        with connect(database_url)() as session:
            if solves_of_run(session):
                break
        time.sleep(0.005)
    while time.monotonic() < deadline and process.poll() is None:
        os.killpg(group, signal.SIGSTOP)
        wait_until_stopped(group)
        seen = caught_mid_flight(database_url)
        if seen is not None:
            os.killpg(group, signal.SIGKILL)
            process.wait(timeout=30)
            return seen
        os.killpg(group, signal.SIGCONT)
        time.sleep(SLICE_S)
    with contextlib.suppress(ProcessLookupError):  # the run may have ended (or failed) on its own
        os.killpg(group, signal.SIGKILL)
    process.wait(timeout=30)
    pytest.fail(
        f"never saw a solve mid-flight after two were done (exit {process.returncode}):\n"
        + log.read_text(errors="replace")[-3000:]
    )


def wait_until_stopped(group: int, timeout: float = 5.0) -> None:
    """SIGSTOP lands asynchronously: wait until every process of the group is stopped (or dead), so
    that no commit in flight lands after the database is read. Where there is no /proc, a pause."""
    if not Path("/proc/self/stat").is_file():
        time.sleep(0.2)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:  # the process ended meanwhile
                continue
            state, _, process_group = text[text.rindex(")") + 2 :].split()[:3]
            if int(process_group) == group:
                states.append(state)
        if all(state in "TtZX" for state in states):
            return
        time.sleep(0.001)


def step_ids(session: Session) -> dict[int, set[int]]:
    ids: dict[int, set[int]] = {}
    for solve_id, step_id in session.execute(select(Step.solve_id, Step.id)):
        ids.setdefault(solve_id, set()).add(step_id)
    return ids


def test_evaluate_killed_mid_run_resumes_without_redoing_or_duplicating_solves(
    prefect_api: str, command: list[str], database_url: str, tmp_path: Path
) -> None:
    connect(database_url)  # migrate before either process opens the database
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, env=environment, start_new_session=True)
        try:
            before = kill_mid_solve(process, log, database_url, deadline=time.monotonic() + 240)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    finished_before = {p: s for p, s in before.items() if s.status == "done"}
    [interrupted] = [s for s in before.values() if s.status == "running"]
    with connect(database_url)() as session:
        steps_before = step_ids(session)

    again = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, check=False)

    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    with connect(database_url)() as session:
        run = queries.find_run(session, RUN)
        assert run is not None and run.status == "done"
        traces = queries.trace_of(session, run.id)
        after = solves_of_run(session)
        steps_after = step_ids(session)
        duplicate_problems = session.execute(
            select(Problem.dataset, Problem.key).group_by(Problem.dataset, Problem.key).having(func.count() > 1)
        ).all()
        problems = session.scalar(select(func.count()).select_from(Problem))
        done = select(Solve.id).where(Solve.status == "done")
        strays = [
            session.scalar(select(func.count()).select_from(Step).where(Step.solve_id.not_in(done))),
            session.scalar(select(func.count()).select_from(Candidate).where(Candidate.solve_id.not_in(done))),
            session.scalar(
                select(func.count())
                .select_from(Score)
                .join(Candidate, Score.candidate_id == Candidate.id)
                .where(Candidate.solve_id.not_in(done))
            ),
        ]

    # every prompt solved exactly once, all done, each problem stored once
    assert len(traces) == PROMPTS and {t.status for t in traces} == {"done"}
    assert len({t.problem.key for t in traces}) == PROMPTS
    assert problems == PROMPTS and duplicate_problems == []
    # what was finished before the kill was not redone: the same rows and the same steps
    for problem_id, solve in finished_before.items():
        assert after[problem_id] == solve
        assert steps_after[solve.id] == steps_before[solve.id]
    # the interrupted solve was restarted in place: its half-written steps replaced by one whole trace
    restarted = after[interrupted.problem_id]
    assert restarted.id == interrupted.id and restarted.started_at > interrupted.started_at
    [trace] = [t for t in traces if t.id == interrupted.id]
    assert [(s.seq, s.node) for s in trace.steps] == [(0, "propose"), (1, "verify"), (2, "select")]
    assert all(s.started_at >= restarted.started_at for s in trace.steps)
    assert strays == [0, 0, 0]
