"""Throughput of a sharded evaluation on 2 Prefect workers against 1, in one run on the same testbed
prompts: a `prefect server` on a PostgreSQL database of its own, prefect.yaml's evaluate deployment
on a process pool `ttc`, and `ttc evaluate --shards K --pool ttc` timed from start to exit with 1
worker, then with 2 (each `prefect worker start --limit L`), each as a new run in a fresh ttc
database on the same server. It prints, per worker count, the wall time, prompts/s and the ratio to
the 1-worker baseline.

Every shard is a process of its own that loads its engines, so on one machine the workers share its
cores: on 2 cores expect a ratio near 1. Workers on separate machines add their cores (or GPUs).

Run: python benchmarks/scale_out.py [--prompts 40] [--shards 4] [--limit 2] [--json]
Needs the local PostgreSQL server (TTC_TEST_POSTGRES, as the tests: a libpq connection string).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from psycopg import sql

from tests.processes import free_port, start, stop, tail, wait_for_http

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN = os.environ.get("TTC_TEST_POSTGRES", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def prefect(command: list[str], environment: dict[str, str]) -> None:
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *command],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(command)}:\n{(done.stdout + done.stderr)[-2000:]}")


def workers_online(environment: dict[str, str], count: int, timeout: float = 120) -> None:
    """Wait until `count` workers of pool `ttc` are online (Prefect's API), at most `timeout` s."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.post(f"{environment['PREFECT_API_URL']}/work_pools/ttc/workers/filter", json={}, timeout=10)
        if sum(w["status"] == "ONLINE" for w in answer.json()) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{count} worker(s) not online after {timeout} s")


def timed_evaluation(
    workers: int, args: argparse.Namespace, environment: dict[str, str], database: str, logs: Path
) -> dict[str, Any]:
    """`ttc evaluate --shards` with `workers` fresh workers: its wall time and solved prompts."""
    worker_env = {**environment, "TTC_HOME": str(REPO)}
    started = []
    try:
        for i in range(workers):
            command = [str(BIN / "prefect"), "worker", "start", "--pool", "ttc", "--name", f"w{workers}-{i}"]
            command += ["--limit", str(args.limit)]
            started.append(start(command, worker_env, logs / f"worker-{workers}-{i}.log", logs))
        workers_online(environment, workers)
        command = [str(BIN / "ttc"), "evaluate", "--dataset", f"testbed:arith?n={args.prompts}&seed=5"]
        command += ["--strategy", args.strategy, "--budget", str(args.budget), "--shards", str(args.shards)]
        command += ["--pool", "ttc", "--timeout", "1200", "--run-name", f"bench-{workers}", "--db", database, "--json"]
        begin = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1500, check=False)
        seconds = time.perf_counter() - begin
    finally:
        for process in started:
            stop(process)
    if done.returncode != 0:
        raise RuntimeError(f"ttc evaluate --shards exited {done.returncode}:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    return {"workers": workers, "seconds": seconds, "done": summary["done"], "prompts_per_s": summary["done"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--limit", type=int, default=2, help="flow runs each worker runs at once")
    parser.add_argument("--strategy", default="majority")
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"ttc-scale-out-{uuid.uuid4().hex[:8]}"
    logs.mkdir(parents=True)
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    names = {role: f"{role}_bench_{uuid.uuid4().hex}" for role in ("prefect", "ttc1", "ttc2")}
    for name in names.values():
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = admin.info
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TTC_"))},
        "PREFECT_HOME": str(logs / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": (
            f"postgresql+asyncpg://{info.user}@{info.host}:{info.port}/{names['prefect']}"
        ),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
    }
    server_command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = start(server_command, environment, logs / "server.log")
    try:
        if not wait_for_http(server, f"http://127.0.0.1:{port}/api/health", 180):
            raise RuntimeError(f"the Prefect server did not start:\n{tail(logs / 'server.log')}")
        prefect(["work-pool", "create", "ttc", "--type", "process"], environment)
        prefect(["deploy", "--name", "evaluate"], environment)
        rows = []
        for workers in (1, 2):
            database = f"postgresql://{info.user}@{info.host}:{info.port}/{names[f'ttc{workers}']}"
            rows.append(timed_evaluation(workers, args, environment, database, logs))
    finally:
        stop(server)
        for name in names.values():
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()
    baseline = rows[0]["prompts_per_s"]
    for row in rows:
        row["ratio"] = row["prompts_per_s"] / baseline
    if args.json:
        print(json.dumps({"cores": os.cpu_count(), **vars(args), "results": rows}))
        return
    print(
        f"{args.prompts} testbed prompts, {args.strategy} N={args.budget}, {args.shards} shards, "
        f"--limit {args.limit} per worker, {os.cpu_count()} cores"
    )
    print(f"{'workers':>8} {'seconds':>9} {'solved':>7} {'prompts/s':>10} {'× 1 worker':>11}")
    for row in rows:
        print(
            f"{row['workers']:>8} {row['seconds']:>9.1f} {row['done']:>7} "
            f"{row['prompts_per_s']:>10.3f} {row['ratio']:>11.2f}"
        )


if __name__ == "__main__":
    main()
