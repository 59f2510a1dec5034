"""ttc in one call: solve a question, or evaluate a dataset, with a test-time compute strategy.

    import ttc
    result = ttc.solve("Compute (12 + 5) * 2 - 3.", strategy="beam", budget=16)
    print(result.answer, result.spend.generations, result.run_id)

The engines come from the same settings as the CLI (`TTC_PROPOSER`, `TTC_VERIFIER`, `TTC_REVISER`,
`TTC_SEED`; the testbed models by default) and so does the database (`TTC_DATABASE_URL`); with none
set, the traces go to a temporary SQLite file kept for this process (`Result.database` names it, for
`ttc trace RUN_ID --db URL`). Both calls go through the same solve service as `ttc solve` and
`ttc evaluate`, so a run looks the same in the database whichever door it came through.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphs.registry import SettingsError, UnknownStrategy
from ttc_nodes.budget import Spend

__all__ = ["Result", "SettingsError", "Spend", "UnknownStrategy", "evaluate", "solve"]

_temporary: str | None = None
_temporary_lock = threading.Lock()


@dataclass(frozen=True)
class Result:
    """What one solve found and spent, and where its trace is."""

    answer: str | None
    """The extracted final answer (the content of `\\boxed{}`), None when the search found none."""
    solution: str | None
    """The chosen solution, whole."""
    correct: bool | None
    """Graded against `reference` when one was given, else None."""
    spend: Spend
    """Generations (the paper's unit), tokens of every model call, FLOPs."""
    seconds: float
    run_id: str
    solve_id: int
    problem_key: str
    strategy: str
    settings: dict[str, Any]
    database: str
    """The database URL the trace is in."""
    votes: dict[str, float] = field(default_factory=dict)


def database_of(database: str | None) -> str:
    """`database`, else `TTC_DATABASE_URL`, else a temporary SQLite file for this process."""
    global _temporary
    if database:
        return database
    if os.environ.get("TTC_DATABASE_URL"):
        return os.environ["TTC_DATABASE_URL"]
    with _temporary_lock:
        if _temporary is None:
            folder = Path(tempfile.mkdtemp(prefix="ttc-"))
            _temporary = f"sqlite:///{folder / 'ttc.db'}"
        return _temporary


def models_of(proposer: str | None, verifier: str | None, reviser: str | None, seed: int | None) -> Any:
    from flows.service.config import ModelSettings

    given: dict[str, Any] = {"proposer": proposer, "verifier": verifier, "reviser": reviser, "seed": seed}
    return ModelSettings(**{name: value for name, value in given.items() if value is not None})


def solve(
    question: str,
    strategy: str = "beam",
    budget: int = 16,
    *,
    reference: str | None = None,
    run_name: str | None = None,
    database: str | None = None,
    proposer: str | None = None,
    verifier: str | None = None,
    reviser: str | None = None,
    seed: int | None = None,
    **settings: Any,
) -> Result:
    """Solve `question` with `strategy` (any name `ttc strategies` lists) at `budget` generations;
    `settings` are the strategy's own (`beam_width=4`, `temperature=0.5`), as `--set` gives them.

    Raises UnknownStrategy for a strategy no one registered and SettingsError for settings the
    strategy refuses (a budget of 0), both before anything is written; ValueError for an empty question.
    """
    from flows.service.solving import solve_question
    from graphs import registry

    registry.get(strategy)  # an unknown name fails here, with the names it knows
    url = database_of(database)
    outcome = solve_question(
        question,
        strategy=strategy,
        values={**settings, "budget": budget},
        models=models_of(proposer, verifier, reviser, seed),
        database=url,
        run_name=run_name,
        reference=reference,
    )
    return Result(
        answer=outcome.answer,
        solution=outcome.solution,
        correct=outcome.correct,
        spend=outcome.spend,
        seconds=outcome.seconds,
        run_id=outcome.run_id,
        solve_id=outcome.solve_id,
        problem_key=outcome.problem_key,
        strategy=outcome.strategy,
        settings=outcome.settings,
        database=url,
        votes=outcome.votes,
    )


def evaluate(
    dataset: str,
    strategy: str | None = None,
    budget: int | None = None,
    *,
    policy: str | None = None,
    total_budget: int | None = None,
    limit: int | None = None,
    concurrency: int = 4,
    run_name: str | None = None,
    database: str | None = None,
    proposer: str | None = None,
    verifier: str | None = None,
    reviser: str | None = None,
    seed: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate `dataset` (`testbed:arith?n=8`, `jsonl:PATH`, `math500`, …) with one strategy at one
    budget (best-of-N weighted at 16 by default), or with a compute-optimal `policy` file and a
    `budget` or a `total_budget`; returns the summary `ttc evaluate --json` prints (accuracy, spend, by bin, run id).

    It runs the `evaluate` Prefect flow in this process, on a temporary Prefect server unless one is
    configured (PREFECT_API_URL), as `ttc evaluate` does. A bad request raises ValueError (or the
    strategy's SettingsError, UnknownStrategy) before the flow runs.
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.cli.process import launch_prefect_server, prefect_server_ready
    from flows.pipelines.evaluate import evaluate as evaluate_flow
    from flows.pipelines.evaluate import prepare
    from flows.service.datasets import Selection

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if policy is None:  # the plan `ttc evaluate` uses when none is given
        strategy, budget = strategy or "best_of_n_weighted", 16 if budget is None else budget
    url = database_of(database)
    request: dict[str, Any] = {
        "strategy": strategy,
        "budget": budget,
        "settings": settings,
        "policy": policy,
        "total_budget": total_budget,
        "models": models_of(proposer, verifier, reviser, seed).model_dump(),
    }
    launch_prefect_server()  # boots while the request is checked and the models load
    prepare(dataset, **request, selection=Selection(limit=limit), warn=lambda *a: None)
    prefect_server_ready()
    runner: Any = ThreadPoolTaskRunner(max_workers=concurrency)
    summary: dict[str, Any] = evaluate_flow.with_options(task_runner=runner)(
        dataset=dataset, **request, database=url, run_name=run_name, limit=limit
    )
    return {**summary, "database": url}
