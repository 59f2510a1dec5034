"""Stopping `ttc evaluate` as users and schedulers do, with the installed script on SQLite: SIGTERM and
SIGINT end it within seconds, mark its solves in flight 'interrupted', and the same command resumes
the run to the end; `kill -9` takes the temporary Prefect server down with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from db import connect, dispose
from db.models import Run, Solve
from tests.processes import start

pytestmark = pytest.mark.slow

TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")
PROMPTS = 8


def command(database_url: str, run_name: str) -> list[str]:
    # Beam search at N=16 on the testbed takes about a second a prompt: long enough to stop mid-run.
    return [
        TTC_SCRIPT,
        "evaluate",
        "--dataset",
        f"testbed:arith?n={PROMPTS}&seed=2",
        "--strategy",
        "beam",
        "--budget",
        "16",
        "--concurrency",
        "2",
        "--run-name",
        run_name,
        "--db",
        database_url,
        "--json",
    ]


def environment(tmp_path: Path) -> dict[str, str]:
    # No PREFECT_API_URL: each process starts its own temporary server, as a user's first run does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect"), "TTC_LEASE_SECONDS": "5"}


def statuses(database_url: str, run_name: str) -> Counter[str]:
    with connect(database_url)() as session:
        run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        rows = session.scalars(select(Solve.status).where(Solve.run_id == run_id)) if run_id else []
        return Counter(rows)


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_a_stop_signal_ends_the_run_in_seconds_and_the_same_command_resumes_it(
    tmp_path: Path, signum: int, code: int
) -> None:
    database_url = f"sqlite:///{tmp_path / 'ttc.db'}"
    run_name = f"stopped-{signum}"
    env = environment(tmp_path)
    process = start(command(database_url, run_name), env, tmp_path / "first.log")
    try:
        assert wait_until(lambda: statuses(database_url, run_name)["done"] >= 1, 240), (
            tmp_path / "first.log"
        ).read_text()
        assert wait_until(lambda: statuses(database_url, run_name)["running"] >= 1, 60)
        process.send_signal(signum)
        sent = time.monotonic()
        process.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "first.log").read_text()

    assert process.returncode == code, log
    assert took < 15, log
    stopped = statuses(database_url, run_name)
    assert stopped["running"] == 0 and stopped["interrupted"] >= 1, (stopped, log)
    assert "marked interrupted" in log

    again = subprocess.run(command(database_url, run_name), env=env, capture_output=True, text=True, timeout=600)

    assert again.returncode == 0, again.stderr
    with connect(database_url)() as session:
        run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        solved = session.execute(select(Solve.problem_id, Solve.status).where(Solve.run_id == run_id)).all()
    assert len(solved) == PROMPTS and {status for _, status in solved} == {"done"}
    assert len({problem for problem, _ in solved}) == PROMPTS
    dispose(database_url)


def test_kill_9_takes_the_temporary_prefect_server_down_with_it(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'ttc.db'}"
    process = start(command(database_url, "killed"), environment(tmp_path), tmp_path / "killed.log")
    try:

        def server() -> psutil.Process | None:
            children = psutil.Process(process.pid).children(recursive=True)
            return next((c for c in children if "uvicorn" in " ".join(c.cmdline())), None)

        assert wait_until(lambda: server() is not None, 120), (tmp_path / "killed.log").read_text()
        child = server()
        assert child is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

        gone, alive = psutil.wait_procs([child], timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    for orphan in alive:
        orphan.kill()
    assert gone and not alive, "the temporary Prefect server outlived its parent"
