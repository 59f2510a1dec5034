"""The `evaluate-shards` flow: one evaluation split into K runs of the `evaluate` deployment of a work
pool, one per shard `i/K`, which the pool's workers (on any machines) pick up. Every shard writes to
the same run (one run name, one database); the parent waits for them all and summarises the run whole.

Prefect distributes the work (`run_deployment`, the pool, its workers); the parent only submits and
waits. Re-running it with the same run name submits only the shards with prompts left to solve, and
those resume (`evaluate` skips what its run has solved). A shard whose process died mid-run (its flow
run stays Running, and its prompts' leases run out, `TTC_LEASE_SECONDS`) is marked Crashed and
submitted again, up to `MAX_RESUBMISSIONS` times: the new run takes over the abandoned prompts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Crashed
from sqlalchemy import select

from db import queries
from db.models import Solve, utcnow
from db.recorder import Recorder
from db.session import connect
from flows.pipelines.evaluate import described, publish, summarize
from flows.service.datasets import Problem, Selection
from graphs import registry

EVALUATE_FLOW = "evaluate"
MAX_RESUBMISSIONS = 2
"""Times one shard is submitted again after its process died, before the parent leaves it."""
POLL_SECONDS = 2.0
DEFAULT_TIMEOUT = 6 * 3600.0


def shard_problems(dataset: str, shards: int, selection: Selection) -> dict[int, list[Problem]]:
    """Each shard's prompts, as its `evaluate` run selects them (`shard="i/K"`); ValueError unless
    1 <= K <= the prompts of the dataset."""
    if shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    if selection.limit is not None or selection.shard is not None:
        raise ValueError("--shards splits the whole dataset: drop --limit and --shard (size it in the dataset)")
    prompts = len(selection.load(dataset))
    if shards > prompts:
        raise ValueError(f"--shards {shards} is more than the {prompts} prompts of {dataset}")
    return {i: replace(selection, shard=f"{i}/{shards}").load(dataset) for i in range(shards)}


def check_plan(strategy: str | None, budget: int | None, settings: dict[str, Any] | None, policy: str | None) -> None:
    """Refuse a strategy or settings the shards would refuse (a policy file is read on the workers)."""
    if policy is None:
        if strategy is None or budget is None:
            raise ValueError("give --strategy and --budget, or --policy with --budget or --total-budget")
        registry.get(strategy).configure({**(settings or {}), "budget": budget})


def evaluate_deployment(pool: str) -> str:
    """The `evaluate/NAME` deployment on work pool `pool` (the one named `evaluate` if there are several);
    ValueError when the pool has none."""
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[EVALUATE_FLOW])),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        )
    names = sorted(d.name for d in found)
    if not names:
        raise ValueError(
            f"work pool {pool!r} has no deployment of the evaluate flow: run `prefect deploy --all` "
            "from the checkout (prefect.yaml), with the pool named in it"
        )
    return f"{EVALUATE_FLOW}/{'evaluate' if 'evaluate' in names else names[0]}"


def abandoned(database: str | None, run_name: str, problem_ids: Sequence[int], since: datetime) -> bool:
    """Whether a prompt of `problem_ids`, claimed since the shard's current flow run was submitted
    (`since`), is running under a lease that ran out: that run's process stopped writing."""
    with connect(database)() as session:
        run = queries.find_run(session, run_name)
        if run is None:
            return False
        expired = session.scalar(
            select(Solve.id)
            .where(Solve.run_id == run.id, Solve.problem_id.in_(problem_ids), Solve.status == "running")
            .where(Solve.lease_until < utcnow(), Solve.started_at >= since)
            .limit(1)
        )
    return expired is not None


def unsolved(recorder: Recorder, run_id: str | None, problem_ids: Sequence[int]) -> int:
    """How many of the problems the run (None: not opened yet) has not solved."""
    finished = recorder.finished_problems(run_id) if run_id is not None else set()
    return sum(problem_id not in finished for problem_id in problem_ids)


def run_id_of(database: str | None, run_name: str) -> str | None:
    with connect(database)() as session:
        found = queries.find_run(session, run_name)
    return found.id if found else None


@flow(name="evaluate-shards", log_prints=False, validate_parameters=True)
def evaluate_shards(
    dataset: str,
    shards: int,
    pool: str,
    strategy: str | None = None,
    budget: int | None = None,
    settings: dict[str, Any] | None = None,
    policy: str | None = None,
    total_budget: int | None = None,
    models: dict[str, Any] | None = None,
    database: str | None = None,
    run_name: str | None = None,
    subset_seed: int | None = None,
    skip_bad_lines: bool = False,
    question_field: str | None = None,
    answer_field: str | None = None,
    summary: str | None = None,
    plugins: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Evaluate `dataset` as `shards` runs of the evaluate deployment on work pool `pool`, all writing
    one run; wait for them (at most `timeout` seconds) and summarise the run whole."""
    logger = get_run_logger()
    selection = Selection(None, None, subset_seed, skip_bad_lines, question_field, answer_field)
    problems = shard_problems(dataset, shards, selection)
    deployment = evaluate_deployment(pool)
    name = run_name or f"shards-{uuid.uuid4().hex[:12]}"  # the one name every shard writes under
    recorder = Recorder(connect(database))
    ids = {
        i: [recorder.problem(p.dataset, p.key, p.question, p.reference, p.meta) for p in shard]
        for i, shard in problems.items()
    }
    parameters: dict[str, Any] = {
        "dataset": dataset,
        "strategy": strategy,
        "budget": budget,
        "settings": settings or {},
        "policy": policy,
        "total_budget": total_budget,
        "models": models or {},
        "database": database,
        "run_name": name,
        "subset_seed": subset_seed,
        "skip_bad_lines": skip_bad_lines,
        "question_field": question_field,
        "answer_field": answer_field,
        "plugins": plugins or [],
    }

    submitted: dict[int, datetime] = {}

    def submit(i: int, attempt: int = 0) -> FlowRun:
        submitted[i] = utcnow()
        created = run_deployment(
            deployment,
            parameters={**parameters, "shard": f"{i}/{shards}"},
            flow_run_name=f"{name}-shard-{i}of{shards}" + (f"-again{attempt}" if attempt else ""),
            timeout=0,
        )
        return cast(FlowRun, created)  # called from a sync flow: the run itself, not a coroutine

    before = run_id_of(database, name)  # a re-run submits only the shards with prompts left
    todo = [i for i in sorted(ids) if unsolved(recorder, before, ids[i])]
    logger.info("run %s: %d shards on pool %s, %d with prompts to solve", name, shards, pool, len(todo))
    waiting = {i: submit(i) for i in todo}
    runs: dict[int, list[FlowRun]] = {i: [run] for i, run in waiting.items()}
    states: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while waiting and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            for i, run in list(waiting.items()):
                state = client.read_flow_run(run.id).state
                if state is not None and state.is_final():
                    states[i] = state.name or state.type.value
                    del waiting[i]
                elif (
                    state is not None
                    and state.is_running()
                    and len(runs[i]) <= MAX_RESUBMISSIONS
                    and abandoned(database, name, ids[i], since=submitted[i])
                ):
                    message = "its process stopped writing (the leases of its prompts ran out)"
                    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                    waiting[i] = submit(i, attempt=len(runs[i]))
                    runs[i].append(waiting[i])
                    logger.warning("shard %d/%d: %s; submitted again as %s", i, shards, message, waiting[i].name)
    states.update({i: "still running at the timeout" for i in waiting})

    with connect(database)() as session:
        found = queries.find_run(session, name)
    if found is None:
        raise RuntimeError(f"no shard opened run {name!r}: {states}")
    result: dict[str, Any] = {**summarize(database, found.id), **described(found.config)}
    result["unfinished"] = unsolved(recorder, found.id, [i for shard in ids.values() for i in shard])
    result["shards"] = [
        {
            "shard": f"{i}/{shards}",
            "state": states.get(i, "done before"),
            "flow_runs": [str(r.id) for r in runs.get(i, [])],
        }
        for i in range(shards)
    ]
    publish(result)
    if summary:
        Path(summary).write_text(json.dumps(result, indent=2, default=str))
    recorder.close_run(found.id, "done" if not result["unfinished"] and not result["failed"] else "partial")
    return result
