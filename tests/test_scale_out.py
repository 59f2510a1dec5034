"""Scale-out for real: a `prefect server` on a PostgreSQL database of its own, the evaluate deployment
of prefect.yaml on a process work pool, two `prefect worker start` processes, and `ttc evaluate
--shards 4 --pool ttc` splitting one run into four deployment runs. The ttc database (PostgreSQL) must
hold every prompt solved exactly once with its whole trace, by both workers; and when one worker dies
by SIGKILL mid-run (with the flow runs it started), its shards are taken over: 0 lost, 0 duplicated."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from psycopg import sql
from sqlalchemy import func, select
from typer.testing import CliRunner

from db import connect, dispose
from db.models import Candidate, Run, Solve, Step
from flows.cli import app
from tests.db_fixtures import POSTGRES_ADMIN, _postgres_url
from tests.processes import free_port, start, stop, tail, wait_for_http

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
PROMPTS = 16
# the killed run: more and longer solves, so that the victim's two shards are mid-run together
KILLED_PROMPTS, KILLED_BUDGET = 32, 16
LEASE_SECONDS = 15  # a killed worker's claims run out this soon after its last step


@dataclass
class Cluster:
    environment: dict[str, str]  # points Prefect's CLI (and this process's client) at the server
    workers: dict[str, subprocess.Popen[bytes]]
    logs: Path
    database_url: str  # the ttc database every worker writes to


def created_database(admin: psycopg.Connection[Any], prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def dropped(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def prefect(command: list[str], environment: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *command],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, f"prefect {' '.join(command)}:\n{(done.stdout + done.stderr)[-3000:]}"


def start_worker(name: str, cluster: Cluster) -> None:
    environment = {**cluster.environment, "TTC_HOME": str(REPO), "TTC_LEASE_SECONDS": str(LEASE_SECONDS)}
    command = [str(BIN / "prefect"), "worker", "start", "--pool", "ttc", "--name", name, "--limit", "2"]
    # started elsewhere, so that only the deployment's pull step (TTC_HOME) makes the entrypoint resolve
    cluster.workers[name] = start(command, environment, cluster.logs / f"{name}.log", cluster.logs)


def wait_for_workers(names: set[str], cluster: Cluster, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            online = {w.name for w in client.read_workers_for_work_pool("ttc") if w.status == "ONLINE"}
            if names <= online:
                return
            for name, worker in cluster.workers.items():
                if worker.poll() is not None:
                    pytest.fail(f"worker {name} exited:\n{tail(cluster.logs / f'{name}.log')}")
            time.sleep(0.5)
    pytest.fail(f"workers {names} not online after {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The Prefect server (on PostgreSQL), the `ttc` pool with prefect.yaml's evaluate deployment, two
    workers, and an empty ttc database; every process and both databases are gone afterwards."""
    logs = tmp_path_factory.mktemp("scale-out")
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    names = [created_database(admin, "prefect_scale"), created_database(admin, "ttc_scale")]
    ttc_url = _postgres_url(admin, names[1])
    info = admin.info
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TTC_"))},
        "PREFECT_HOME": str(logs / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{info.user}@{info.host}:{info.port}/{names[0]}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
    }
    server_command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = start(server_command, environment, logs / "server.log")
    cluster = Cluster(environment, {}, logs, ttc_url)
    try:
        if not wait_for_http(server, f"http://127.0.0.1:{port}/api/health", 180):
            pytest.fail(f"the Prefect server did not start:\n{tail(logs / 'server.log')}")
        prefect(["work-pool", "create", "ttc", "--type", "process"], environment)
        prefect(["deploy", "--name", "evaluate"], environment)
        connect(ttc_url)  # migrated before the workers race to open it
        with temporary_settings({PREFECT_API_URL: environment["PREFECT_API_URL"]}):
            for name in ("worker-a", "worker-b"):
                start_worker(name, cluster)
            wait_for_workers({"worker-a", "worker-b"}, cluster)
            yield cluster
    finally:
        for process in [*cluster.workers.values(), server]:
            stop(process)
        dispose(ttc_url)
        for name in names:
            dropped(admin, name)
        admin.close()


def evaluate_in_shards(
    cluster: Cluster, run_name: str, prompts: int = PROMPTS, budget: int = 4
) -> subprocess.Popen[bytes]:
    dataset = f"testbed:arith?n={prompts}&seed=5"
    command = [str(BIN / "ttc"), "evaluate", "--dataset", dataset, "--strategy", "majority", "--budget", str(budget)]
    command += ["--shards", "4", "--pool", "ttc", "--timeout", "240", "--run-name", run_name]
    command += ["--db", cluster.database_url, "--json"]
    out = (cluster.logs / f"{run_name}.out").open("wb")
    with out, (cluster.logs / f"{run_name}.err").open("wb") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, env=cluster.environment, start_new_session=True)


def finished(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail(f"`ttc evaluate --shards` still running after {timeout} s")


def outcome(cluster: Cluster, run_name: str, code: int) -> dict[str, Any]:
    said = (cluster.logs / f"{run_name}.err").read_text(errors="replace")[-3000:]
    workers = "\n".join(f"--- {n}:\n{tail(cluster.logs / f'{n}.log')}" for n in cluster.workers)
    assert code == 0, f"exit status {code}:\n{said}\n{workers}"
    result: dict[str, Any] = json.loads((cluster.logs / f"{run_name}.out").read_text())
    return result


def assert_each_prompt_once(database_url: str, run_name: str, prompts: int = PROMPTS) -> list[Solve]:
    """The run holds one finished solve per prompt, each with its steps and candidates, none repeated."""
    with connect(database_url)() as session:
        run = session.scalars(select(Run).where(Run.name == run_name)).one()
        solves = list(session.scalars(select(Solve).where(Solve.run_id == run.id)))
        steps = select(Step.solve_id, func.count()).join(Solve).where(Solve.run_id == run.id).group_by(Step.solve_id)
        per_solve: dict[int, int] = {solve_id: count for solve_id, count in session.execute(steps)}
        with_candidates = set(
            session.scalars(select(Candidate.solve_id).join(Solve).where(Solve.run_id == run.id).distinct())
        )
        repeated_seqs = session.execute(
            select(Step.solve_id, Step.seq).group_by(Step.solve_id, Step.seq).having(func.count() > 1)
        ).all()
        repeated_keys = session.execute(
            select(Candidate.solve_id, Candidate.key)
            .group_by(Candidate.solve_id, Candidate.key)
            .having(func.count() > 1)
        ).all()
    assert run.status == "done"
    assert len(solves) == prompts and len({s.problem_id for s in solves}) == prompts  # 0 lost, 0 duplicated
    assert {(s.status, s.lease_until) for s in solves} == {("done", None)}
    assert all(per_solve.get(s.id, 0) >= 2 and s.id in with_candidates for s in solves)  # every trace landed
    assert repeated_seqs == [] and repeated_keys == []
    return solves


def pid_of(worker_column: str | None) -> str:
    """The process id in a solve's worker column ("host:pid:id")."""
    return (worker_column or "::").split(":")[1]


def started_by(cluster: Cluster, flow_run_ids: list[str]) -> dict[str, str]:
    """Which Prefect worker started each flow run, from the workers' own logs (every worker tries to
    submit a scheduled run; the one that wins it says it "submitted [it] to infrastructure")."""
    with get_client(sync_client=True) as client:
        names = {run: client.read_flow_run(uuid.UUID(run)).name for run in flow_run_ids}
    found: dict[str, str] = {}
    for worker in cluster.workers:
        text = (cluster.logs / f"{worker}.log").read_text(errors="replace")
        found |= {run: worker for run, name in names.items() if f"Flow run '{name}' submitted to infra" in text}
    return found


@pytest.mark.slow
@pytest.mark.postgres
def test_four_shards_on_two_workers_solve_every_prompt_exactly_once(cluster: Cluster) -> None:
    code = finished(evaluate_in_shards(cluster, "sharded"), timeout=300)

    result = outcome(cluster, "sharded", code)
    solves = assert_each_prompt_once(cluster.database_url, "sharded")
    assert (result["done"], result["failed"], result["unfinished"]) == (PROMPTS, 0, 0)
    assert result["correct"] == sum(bool(s.correct) for s in solves)
    assert [shard["state"] for shard in result["shards"]] == ["Completed"] * 4
    runs = [shard["flow_runs"][0] for shard in result["shards"]]
    # both workers ran shards; each shard ran in the process its worker started for it
    workers = started_by(cluster, runs)
    assert len(workers) == 4 and set(workers.values()) == {"worker-a", "worker-b"}, workers
    with get_client(sync_client=True) as client:
        pids = {client.read_flow_run(uuid.UUID(run)).infrastructure_pid for run in runs}
    assert {pid_of(s.worker) for s in solves} == pids

    # run again, it resumes: nothing is left to solve, so no shard is submitted and nothing changes
    again = outcome(cluster, "sharded", finished(evaluate_in_shards(cluster, "sharded"), timeout=120))
    assert [(shard["state"], shard["flow_runs"]) for shard in again["shards"]] == [("done before", [])] * 4
    assert {key: again[key] for key in ("done", "correct", "tokens")} == {
        key: result[key] for key in ("done", "correct", "tokens")
    }
    after = assert_each_prompt_once(cluster.database_url, "sharded")
    assert sorted((s.id, s.finished_at) for s in after) == sorted((s.id, s.finished_at) for s in solves)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (the flow runs a worker started), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def running_pids(database_url: str, run_name: str) -> set[str]:
    with connect(database_url)() as session:
        run_id = session.scalar(select(Run.id).where(Run.name == run_name))
        workers = session.scalars(select(Solve.worker).where(Solve.run_id == run_id, Solve.status == "running"))
        return {pid_of(w) for w in workers}


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_mid_run_loses_nothing_its_shards_are_taken_over(cluster: Cluster) -> None:
    parent = evaluate_in_shards(cluster, "killed", KILLED_PROMPTS, KILLED_BUDGET)
    victim = cluster.workers["worker-a"]
    try:
        # wait until the victim's flow runs are solving (each holds prompts), then kill it and them
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and parent.poll() is None:
            mine = {str(pid) for pid in descendants(victim.pid)}
            if len(mine & running_pids(cluster.database_url, "killed")) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"worker-a never held two shards' prompts:\n{tail(cluster.logs / 'worker-a.log')}")
        doomed = descendants(victim.pid)
        os.killpg(victim.pid, signal.SIGKILL)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):  # gone with the group already
                os.kill(pid, signal.SIGKILL)
        victim.wait(timeout=30)
        killed_at = time.monotonic()
        code = finished(parent, timeout=300)
    finally:
        stop(parent)
        start_worker("worker-a", cluster)  # the module's other tests find two workers again

    result = outcome(cluster, "killed", code)
    assert_each_prompt_once(cluster.database_url, "killed", KILLED_PROMPTS)
    assert (result["done"], result["failed"], result["unfinished"]) == (KILLED_PROMPTS, 0, 0)
    assert [shard["state"] for shard in result["shards"]] == ["Completed"] * 4
    retried = [shard for shard in result["shards"] if len(shard["flow_runs"]) > 1]
    # the victim's two shards, each submitted again once (its new run takes over the dead claims)
    assert [len(shard["flow_runs"]) for shard in retried] == [2, 2], result["shards"]
    with get_client(sync_client=True) as client:
        first = [client.read_flow_run(uuid.UUID(shard["flow_runs"][0])) for shard in retried]
    assert {run.state.name for run in first if run.state} == {"Crashed"}
    print(f"killed worker-a; the run finished {time.monotonic() - killed_at:.0f} s later, 0 lost, 0 duplicated")


SHARDED = ["evaluate", "--dataset", "testbed:arith?n=4&seed=5", "--strategy", "majority", "--budget", "2"]
REFUSALS = {
    "no shards": (["--shards", "0", "--pool", "ttc"], "--shards must be >= 1"),
    "more shards than prompts": (["--shards", "5", "--pool", "ttc"], "--shards 5 is more than the 4 prompts"),
    "no pool": (["--shards", "2"], "--shards needs --pool"),
    "a pool without shards": (["--pool", "ttc"], "--pool goes with --shards"),
    "a limit": (["--shards", "2", "--pool", "ttc", "--limit", "2"], "drop --limit and --shard"),
    "dask": (["--shards", "2", "--pool", "ttc", "--dask", "tcp://127.0.0.1:1"], "--dask does not apply"),
    "an unknown strategy": (["--shards", "2", "--pool", "ttc", "--strategy", "nope"], "unknown strategy 'nope'"),
}


@pytest.mark.parametrize(("args", "said"), REFUSALS.values(), ids=REFUSALS.keys())
def test_bad_sharded_requests_are_refused_in_one_line(args: list[str], said: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*SHARDED, *args, "--db", f"sqlite:///{tmp_path / 'ttc.db'}"])

    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], result.stderr


@pytest.mark.parametrize("api", [None, "http://127.0.0.1:9/api"], ids=["no Prefect API", "an unreachable one"])
def test_shards_without_a_reachable_prefect_api_are_refused(api: str | None, tmp_path: Path) -> None:
    settings = (
        temporary_settings({PREFECT_API_URL: api}) if api else temporary_settings(restore_defaults={PREFECT_API_URL})
    )
    with settings:
        result = CliRunner().invoke(
            app, [*SHARDED, "--shards", "2", "--pool", "ttc", "--db", f"sqlite:///{tmp_path / 'x.db'}"]
        )

    expected = "set PREFECT_API_URL" if api is None else "does not answer"
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert expected in result.stderr


@pytest.mark.slow
@pytest.mark.postgres
def test_a_pool_without_the_evaluate_deployment_is_refused(cluster: Cluster) -> None:
    result = CliRunner().invoke(app, [*SHARDED, "--shards", "2", "--pool", "nope", "--db", cluster.database_url])

    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "work pool 'nope' has no deployment of the evaluate flow" in result.stderr
