"""Scale-out with prefect-dask: `ttc evaluate --dask ADDRESS`, and the deployments `ttc serve --dask
ADDRESS` serves, send every prompt's solve to a Dask cluster's worker process, which traces it into the
database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

from db import connect, queries
from flows.cli import app
from tests.data_fixtures import write_tiny_gsm8k
from tests.processes import start, stop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[str]:
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One worker process with two threads; everything listens on 127.0.0.1."""
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=None
    ) as local:
        yield local


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    return write_tiny_gsm8k(tmp_path)


def worker_record(client: Client) -> dict[str, Any]:
    """Per worker address: its process id, how many tasks it has executed, and their keys."""

    def record(dask_worker: Any) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "executed": dask_worker.state.executed_count,
            "keys": sorted({str(entry[0]) for entry in dask_worker.state.log}),
        }

    return client.run(record)


def test_evaluate_with_dask_runs_every_solve_on_the_cluster_worker(
    cluster: LocalCluster, dataset: str, tiny_lm: Path, tiny_prm: Path, database_url: str
) -> None:
    models = ["--proposer", f"hf:{tiny_lm}", "--verifier", f"hf:{tiny_prm}"]
    plan = ["--strategy", "best_of_n_weighted", "--budget", "2", "--set", "max_answer_tokens=12"]
    run = ["--db", database_url, "--run-name", "on-dask", "--dask", cluster.scheduler_address, "--json"]
    with Client(cluster) as client:
        before = worker_record(client)
        result = CliRunner().invoke(app, ["evaluate", "--dataset", dataset, *plan, *models, *run])
        after = worker_record(client)

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 3 and summary["failed"] == 0
    with connect(database_url)() as session:
        stored = queries.find_run(session, "on-dask")
        assert stored is not None
        traces = queries.trace_of(session, stored.id)
    assert len(traces) == 3 and {t.status for t in traces} == {"done"}
    assert len({t.problem.key for t in traces}) == 3
    # the three solve tasks ran in the cluster's worker process, not in this one
    [(address, worker)] = after.items()
    new_keys = set(worker["keys"]) - set(before[address]["keys"])
    assert len([key for key in new_keys if key.startswith("solve_prompt-")]) == 3
    assert worker["executed"] - before[address]["executed"] == 3
    assert worker["pid"] != os.getpid()


def test_ttc_serve_with_dask_runs_the_served_flow_runs_tasks_on_the_cluster(
    prefect_api: str, cluster: LocalCluster, dataset: str, tiny_lm: Path, tiny_prm: Path, tmp_path: Path
) -> None:
    database_url = f"sqlite:///{tmp_path / 'served.db'}"
    command = [str(Path(sys.executable).parent / "ttc"), "serve", "--name", "on-dask"]
    environment = {**os.environ, "PREFECT_API_URL": prefect_api, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "serve.log"
    served = start([*command, "--dask", cluster.scheduler_address], environment, log)
    try:
        with get_client(sync_client=True) as prefect:
            deadline = time.monotonic() + 120
            while True:
                try:
                    prefect.read_deployment_by_name("evaluate/on-dask")
                    break
                except ObjectNotFound:
                    assert served.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                    time.sleep(1)
        with Client(cluster) as client:
            before = worker_record(client)
            flow_run = run_deployment(
                name="evaluate/on-dask",
                parameters={
                    "dataset": dataset,
                    "strategy": "best_of_n_weighted",
                    "budget": 2,
                    "settings": {"max_answer_tokens": 12},
                    "models": {"proposer": f"hf:{tiny_lm}", "verifier": f"hf:{tiny_prm}"},
                    "database": database_url,
                    "run_name": "served-on-dask",
                },
                timeout=240,
                poll_interval=1,
            )
            after = worker_record(client)
    finally:
        stop(served)

    assert flow_run.state is not None and flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-3000:]}"
    with connect(database_url)() as session:
        stored = queries.find_run(session, "served-on-dask")
        assert stored is not None
        assert [t.status for t in queries.trace_of(session, stored.id)] == ["done"] * 3
    [(address, worker)] = after.items()
    assert worker["executed"] - before[address]["executed"] == 3
