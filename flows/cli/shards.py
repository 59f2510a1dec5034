"""`ttc evaluate --shards K --pool POOL`: the evaluation as K runs of the pool's `evaluate` deployment,
run by its workers and summarised here as one run (flows/pipelines/sharded.py)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import typer
from rich.markup import escape

from flows.cli.app import err, fail, out, run_flow, summary_table, task_runner, user_errors
from flows.cli.process import EXIT_PROMPTS_FAILED
from flows.service.datasets import Selection


def reachable_prefect_api() -> str:
    """The Prefect API the workers share (PREFECT_API_URL), once it answers; else a one-line refusal."""
    import httpx
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    if not api:
        fail("--shards needs the Prefect server the pool's workers use: set PREFECT_API_URL")
    try:
        answered = httpx.get(f"{api.rstrip('/')}/health", timeout=10).status_code == 200
    except httpx.HTTPError as error:
        fail(f"the Prefect API at {api} does not answer ({type(error).__name__}); --shards needs it")
    if not answered:
        fail(f"the Prefect API at {api} is not healthy; --shards needs it")
    return str(api)


def evaluate_in_shards(
    *,
    shards: int,
    pool: str | None,
    timeout: float,
    dataset: str,
    request: dict[str, Any],
    selection: Selection,
    run_name: str | None,
    summary: str | None,
    concurrency: int,
    dask: str | None,
    database: str | None,
    plugins: list[str] | None,
    as_json: bool,
) -> None:
    """Check the request in one line each (exit status 2), run the parent flow here, print its summary."""
    from db.session import connect
    from flows.pipelines.sharded import check_plan, evaluate_deployment, evaluate_shards, shard_problems

    if pool is None:
        fail("--shards needs --pool: the work pool whose workers run the shards")
    if dask is not None:
        fail("--shards runs each shard on a worker of the pool; --dask does not apply")
    if timeout <= 0:
        fail(f"--timeout must be > 0 seconds, got {timeout:g}")
    if database is None and not os.environ.get("TTC_DATABASE_URL"):
        fail("--shards needs --db (or TTC_DATABASE_URL): the one database the workers and this command share")
    with user_errors():
        shard_problems(dataset, shards, selection)
        check_plan(request["strategy"], request["budget"], request["settings"], request["policy"])
    reachable_prefect_api()
    with user_errors():
        evaluate_deployment(pool)
        connect(database)
    given = asdict(selection)
    result = run_flow(
        evaluate_shards,
        task_runner(concurrency, None),
        database,
        dataset=dataset,
        shards=shards,
        pool=pool,
        **request,
        **{key: given[key] for key in ("subset_seed", "skip_bad_lines", "question_field", "answer_field")},
        run_name=run_name,
        summary=summary,
        plugins=plugins,
        timeout=timeout,
    )
    if as_json:
        print(json.dumps(result, default=str))
    else:
        out.print(summary_table(result))
    for shard in result["shards"]:
        err.print(f"shard {shard['shard']}: {escape(shard['state'])} ({len(shard['flow_runs'])} flow run(s))")
    if result["failed"] or result["unfinished"]:
        for failure in result["failures"][:20]:
            err.print(f"[red]failed[/] {escape(failure['key'])}: {escape(failure['error'])}", highlight=False)
        err.print(
            f"{result['failed']} prompt(s) failed, {result['unfinished']} not solved; "
            "re-run the same command (same --run-name) to resume them (exit status 3)"
        )
        raise typer.Exit(EXIT_PROMPTS_FAILED)
