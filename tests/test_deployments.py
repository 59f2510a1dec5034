"""ttc's flows as Prefect deployments, for real: a `prefect server` of the test's own, `ttc serve`
serving `evaluate` and `calibrate`, runs triggered with Prefect's client and with `prefect deployment
run`, and `prefect.yaml` deployed to a `process` work pool and run by a worker. Each run's traces must
land in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings

from db import connect, queries
from tests.data_fixtures import write_tiny_gsm8k
from tests.processes import free_port, start, stop, tail, wait_for_http

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
PLAN = {"strategy": "best_of_n_weighted", "budget": 2, "settings": {"max_answer_tokens": 12}}


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A `prefect server start` of this module's own (its own PREFECT_HOME and database, a free port);
    the environment that points Prefect's CLI and this process's client at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "OMP_NUM_THREADS": "1",
    }
    for _attempt in range(3):  # another test may take the free port before the server binds it
        port = free_port()
        environment["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        log = home / f"server-{port}.log"
        server = start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], environment, log
        )
        try:
            if not wait_for_http(server, f"http://127.0.0.1:{port}/api/health", 120):
                if server.poll() is None:
                    pytest.fail(f"the Prefect server did not answer within 120 s:\n{tail(log)}")
                continue
            with temporary_settings({PREFECT_API_URL: environment["PREFECT_API_URL"]}):
                yield environment
            return
        finally:
            stop(server)
    pytest.fail(f"the Prefect server did not start:\n{tail(log)}")


def wait_for_deployments(names: list[str], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        for name in names:
            while True:
                try:
                    client.read_deployment_by_name(name)
                    break
                except ObjectNotFound:
                    if process.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"deployment {name} never appeared:\n{tail(log)}")
                    time.sleep(1)


@pytest.fixture(scope="module")
def served(prefect_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`ttc serve --name test`: the deployments evaluate/test and calibrate/test, served until teardown."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    process = start([str(BIN / "ttc"), "serve", "--name", "test", "--concurrency", "2"], prefect_env, log)
    try:
        wait_for_deployments(["evaluate/test", "calibrate/test"], process, log)
        yield
    finally:
        stop(process)


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return write_tiny_gsm8k(tmp_path)


@pytest.fixture
def models(tiny_lm: Path, tiny_prm: Path) -> dict[str, Any]:
    return {"proposer": f"hf:{tiny_lm}", "verifier": f"hf:{tiny_prm}", "seed": 3}


def finished(flow_run_id: uuid.UUID | str, timeout: float = 240) -> FlowRun:
    """The flow run once it reaches a final state (polled through Prefect's client)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(uuid.UUID(str(flow_run_id)))
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                pytest.fail(f"flow run {flow_run_id} still {flow_run.state} after {timeout} s")
            time.sleep(1)


def assert_traced(database_url: str, run_name: str, prompts: int) -> None:
    """The run is in the database with one finished solve per prompt, each with its steps."""
    with connect(database_url)() as session:
        run = queries.find_run(session, run_name)
        assert run is not None, f"no run {run_name!r} in the database"
        traces = queries.trace_of(session, run.id)
    assert run.status == "done"
    assert len(traces) == prompts and {t.status for t in traces} == {"done"}
    assert len({t.problem.key for t in traces}) == prompts
    assert all(t.steps and t.candidates and t.generations <= 2 for t in traces)


def artifact_keys(flow_run_id: uuid.UUID) -> set[str]:
    """Keys of the artifacts the flow run published. (Read over the REST API: Prefect's client sends
    null `sort` and filters, which the server refuses under FastAPI >= 0.151; see above.)"""
    response = httpx.post(
        f"{PREFECT_API_URL.value()}/artifacts/filter",
        json={"flow_runs": {"id": {"any_": [str(flow_run_id)]}}, "limit": 10},
        timeout=30,
    )
    response.raise_for_status()
    return {a["key"] for a in response.json() if a["key"]}


def test_run_deployment_from_prefects_client_traces_every_prompt(
    served: None, dataset: str, models: dict[str, Any], database_url: str
) -> None:
    parameters = {"dataset": dataset, **PLAN, "models": models, "database": database_url, "run_name": "client"}

    flow_run = run_deployment(name="evaluate/test", parameters=parameters, timeout=240, poll_interval=1)

    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert_traced(database_url, "client", prompts=3)
    assert {"evaluation-summary", "evaluation-by-bin"} <= artifact_keys(flow_run.id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL: the test above
def test_prefect_deployment_run_command_triggers_a_traced_run(
    served: None, prefect_env: dict[str, str], dataset: str, models: dict[str, Any], database_url: str
) -> None:
    command = [str(BIN / "prefect"), "deployment", "run", "evaluate/test"]
    command += ["--param", f"dataset={dataset}", "--param", "strategy=best_of_n_weighted", "--param", "budget=2"]
    command += ["--param", f"database={database_url}", "--param", "run_name=cli"]
    command += ["--params", json.dumps({"models": models, "settings": {"max_answer_tokens": 12}})]

    created = subprocess.run(command, capture_output=True, text=True, env=prefect_env, timeout=120, check=False)

    assert created.returncode == 0, created.stdout + created.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout)
    assert match, created.stdout
    flow_run = finished(match.group(1))
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters["budget"] == 2 and flow_run.parameters["models"] == models
    assert_traced(database_url, "cli", prompts=3)


def test_ttc_serve_options_are_the_default_parameters_of_the_served_deployments(
    prefect_env: dict[str, str], dataset: str, models: dict[str, Any], tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'served.db'}"
    options = ["--db", database_url, "--proposer", models["proposer"], "--verifier", models["verifier"]]
    options += ["--seed", "3", "--set", "max_answer_tokens=12", "--plugin", "examples.top_half_majority"]
    log = tmp_path / "serve.log"
    process = start([str(BIN / "ttc"), "serve", "--name", "defaults", *options], prefect_env, log, REPO)
    try:
        wait_for_deployments(["evaluate/defaults", "calibrate/defaults"], process, log)
        with get_client(sync_client=True) as client:
            defaults = [client.read_deployment_by_name(f"{f}/defaults").parameters for f in ("evaluate", "calibrate")]
        # only what the served defaults lack: the strategy is the plug-in's, the models and database the defaults'
        parameters = {"dataset": dataset, "strategy": "top_half_majority", "budget": 2, "run_name": "defaults"}
        flow_run = run_deployment(name="evaluate/defaults", parameters=parameters, timeout=240, poll_interval=1)
    finally:
        stop(process)

    given = {
        "models": models,
        "database": database_url,
        "settings": {"max_answer_tokens": 12},
        "plugins": ["examples.top_half_majority"],
    }
    assert defaults == [given, given]
    assert flow_run.state is not None and flow_run.state.is_completed(), f"{flow_run.state}\n{tail(log)}"
    assert_traced(database_url, "defaults", prompts=3)


@pytest.fixture(scope="module")
def yaml_deployed(prefect_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The `ttc` process work pool, and `prefect deploy --all` run on this repository's prefect.yaml."""
    pool = subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", "ttc", "--type", "process"],
        capture_output=True,
        text=True,
        env=prefect_env,
        timeout=120,
        check=False,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    return subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
        capture_output=True,
        text=True,
        env=prefect_env,
        cwd=REPO,
        timeout=180,
        check=False,
    )


def test_prefect_yaml_deploys_evaluate_and_calibrate_to_the_ttc_pool(
    yaml_deployed: subprocess.CompletedProcess[str], prefect_env: dict[str, str]
) -> None:
    # Prefect 3.8.8's client sends JSON nulls that FastAPI >= 0.151 rejects (422 on /workers/filter,
    # after each deployment is created): that is why fastapi is pinned to 0.150.0.
    assert yaml_deployed.returncode == 0, (yaml_deployed.stdout + yaml_deployed.stderr)[-3000:]

    with get_client(sync_client=True) as client:
        evaluate = client.read_deployment_by_name("evaluate/evaluate")
        calibrate = client.read_deployment_by_name("calibrate/calibrate")
    assert evaluate.entrypoint == "flows/pipelines/evaluate.py:evaluate"
    assert calibrate.entrypoint == "flows/pipelines/calibrate.py:calibrate"
    assert evaluate.work_pool_name == calibrate.work_pool_name == "ttc"
    # the working directory is resolved on the worker, not frozen at deploy time
    for deployment in (evaluate, calibrate):
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $TTC_HOME }}"}}
        ]
    assert evaluate.parameters["dataset"] == "testbed:arith?n=100&seed=11"
    assert calibrate.parameters["budgets"] == [1, 2, 4, 8, 16]


def test_a_process_worker_runs_the_yaml_deployment_from_ttc_home(
    yaml_deployed: subprocess.CompletedProcess[str],
    prefect_env: dict[str, str],
    dataset: str,
    models: dict[str, Any],
    tmp_path: Path,
) -> None:
    database_url = f"sqlite:///{tmp_path / 'worker.db'}"
    parameters = {"dataset": dataset, **PLAN, "models": models, "database": database_url, "run_name": "worker"}
    try:
        scheduled = run_deployment(name="evaluate/evaluate", parameters=parameters, timeout=0)
    except Exception as error:
        pytest.fail(f"evaluate/evaluate was not deployed ({error}):\n{yaml_deployed.stdout[-2000:]}")
    log = tmp_path / "worker.log"
    worker_env = {**prefect_env, "TTC_HOME": str(REPO)}
    # started elsewhere, so that only the pull step can make the entrypoint `flows/evaluate.py` resolve
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", "ttc", "--run-once"], worker_env, log, tmp_path)
    try:
        worker.wait(timeout=300)
    finally:
        stop(worker)

    flow_run = finished(scheduled.id, timeout=30)
    assert flow_run.state is not None and flow_run.state.is_completed(), f"{flow_run.state}\n{tail(log)}"
    assert_traced(database_url, "worker", prompts=3)
