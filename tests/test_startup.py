"""What `ttc` loads before it works, and the temporary Prefect server it starts: each command imports
only what it uses (`ttc solve`, `ttc strategies` and `ttc trace` never import Prefect), the garbage
collector paused during start-up is back on after every command, and the temporary server listens on
127.0.0.1 only, is skipped when a server is configured, and never outlives a refused command or the
process that started it. Behaviour only; `benchmarks/startup.py` measures the seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import app

HEAVY = ("prefect", "langgraph", "torch", "transformers", "sqlalchemy")

# Runs the CLI in this fresh process and reports which heavy libraries it imported, and its status.
CLI_IMPORTS = """
import json, sys
arguments, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["ttc", *arguments]
from flows.cli import app
try:
    app()
except SystemExit as stop:
    status = stop.code
print(json.dumps({"status": status, "imported": [m for m in heavy if m in sys.modules]}))
"""


def fresh_environment(tmp_path: Path) -> dict[str, str]:
    """No configured Prefect server, and every file the process writes under `tmp_path`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return environment | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "TTC_DATABASE_URL": f"sqlite:///{tmp_path / 'ttc.db'}",
        "OMP_NUM_THREADS": "1",
    }


def imports_of(arguments: list[str], environment: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CLI_IMPORTS, json.dumps(arguments), json.dumps(HEAVY)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_solve_strategies_trace_and_runs_never_import_prefect(tmp_path: Path) -> None:
    environment = fresh_environment(tmp_path)

    solved = imports_of(["solve", "Compute 2 + 3.", "-s", "majority", "-n", "1", "--json"], environment)
    listed = imports_of(["strategies", "--json"], environment)
    traced = imports_of(["trace", "--json"], environment)
    ran = imports_of(["runs", "--json"], environment)

    assert solved["status"] in (0, None) and "prefect" not in solved["imported"]
    assert {"torch", "transformers", "langgraph"} <= set(solved["imported"])  # it did load the models
    assert listed["status"] in (0, None) and set(listed["imported"]) == {"langgraph"}
    # Reading the database needs neither the strategies' graphs nor the models.
    assert traced["status"] in (0, None) and set(traced["imported"]) == {"sqlalchemy"}
    assert ran["status"] in (0, None) and set(ran["imported"]) == {"sqlalchemy"}


def test_version_imports_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    shown = imports_of(["--version"], fresh_environment(tmp_path))

    assert shown["status"] in (0, None) and shown["imported"] == []


def test_the_garbage_collector_is_back_on_after_each_command() -> None:
    import gc

    listed = CliRunner().invoke(app, ["strategies", "--json"])
    refused = CliRunner().invoke(app, ["solve", "What is 1+1?", "--strategy", "nope"])

    assert listed.exit_code == 0 and refused.exit_code == 2
    assert gc.isenabled()


# Launches the temporary server as `ttc evaluate` does, and reports what it started and where.
SERVER = """
import json, os, sys, httpx, psutil
from flows.cli import process
from prefect.settings import get_current_settings

process.start_prefect_server()
server = process._server
children = psutil.Process().children(recursive=True)
report = {
    "launched": server is not None,
    "settings_url": get_current_settings().api.url,
    "environment_url": os.environ.get("PREFECT_API_URL"),
    "servers": [" ".join(c.cmdline()) for c in children if "uvicorn" in " ".join(c.cmdline())],
}
if server is not None:
    report["api_url"] = server.api_url
    report["health"] = httpx.get(server.api_url + "/health", timeout=10).status_code
    report["listening"] = sorted(
        {c.laddr.ip for child in children for c in child.net_connections("inet") if c.status == "LISTEN"}
    )
    process.stop_prefect_server()
    report["after_stop_alive"] = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    report["after_stop_settings_url"] = get_current_settings().api.url
print(json.dumps(report))
"""


def run_script(code: str, environment: dict[str, str], timeout: float = 180) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.slow
def test_the_temporary_server_listens_on_loopback_only_and_stops_with_its_process(tmp_path: Path) -> None:
    report = run_script(SERVER, fresh_environment(tmp_path))

    assert report["launched"]
    assert report["api_url"].startswith("http://127.0.0.1:")
    assert report["settings_url"] == report["environment_url"] == report["api_url"]
    assert report["health"] == 200
    [server] = report["servers"]
    assert "--host 127.0.0.1" in server
    assert report["listening"] == ["127.0.0.1"]
    assert report["after_stop_alive"] == []
    assert report["after_stop_settings_url"] is None


def test_a_configured_prefect_server_is_used_and_none_is_started(tmp_path: Path) -> None:
    environment = fresh_environment(tmp_path) | {"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    launch_only = SERVER.replace("process.start_prefect_server()", "process.launch_prefect_server()")

    report = run_script(launch_only, environment)

    assert not report["launched"] and report["servers"] == []
    assert report["settings_url"] == "http://127.0.0.1:9/api"


# A refused `ttc evaluate` run in this process (as the in-process refusal tests run it).
REFUSED = """
import json, os, psutil
from typer.testing import CliRunner
from flows.cli import app, process

result = CliRunner().invoke(app, ["evaluate", "--dataset", "testbed:arith?n=2", "--strategy", "nope", "--budget", "2"])
children = [c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
print(json.dumps({
    "exit_code": result.exit_code,
    "stderr": result.stderr,
    "server": process._server is not None,
    "environment_url": os.environ.get("PREFECT_API_URL"),
    "children": [" ".join(c.cmdline()) for c in children],
}))
"""


def test_a_refused_evaluate_leaves_no_prefect_server_behind(tmp_path: Path) -> None:
    report = run_script(REFUSED, fresh_environment(tmp_path))

    assert report["exit_code"] == 2 and "nope" in report["stderr"]
    assert not report["server"] and report["environment_url"] is None
    assert report["children"] == []
