"""The `evaluate` flow: a dataset × a plan (one strategy at one budget, or a compute-optimal
policy) → one Prefect task per prompt → graded solves in the database → a summary.

Re-running with the same run name resumes: prompts already solved in that run are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.states import State
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from db import queries
from db.recorder import Claimed, Recorder
from db.session import connect
from flows.policy import Policy, allocate, predicted_difficulty
from flows.service.config import ModelSettings
from flows.service.datasets import Problem, Selection
from flows.service.solving import engines_for, masked_models, solve_question
from graphs import registry
from graphs.plugins import load_plugins
from ttc_nodes.answers import is_correct
from ttc_nodes.engines import TransientEngineError


def transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry only failures that another attempt can fix (timeouts, dropped connections, 5xx)."""
    error: BaseException | None = state.result(raise_on_failure=False)  # type: ignore[assignment]
    while error is not None:
        if isinstance(error, TransientEngineError | ConnectionError | TimeoutError):
            return True
        error = error.__cause__
    return False


# Every per-prompt task: transient engine failures are retried; results are never cached, since
# the database (not Prefect's cache) is what makes a re-run resume.
MAX_DIFFICULTY_PASSES = 5
"""Rounds of difficulty estimation a policy run makes before giving up on prompts other workers
keep abandoning (each round waits for the claims of live workers)."""

PER_PROMPT: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": transient,
    "cache_policy": NONE,
}


@task(name="estimate-difficulty", task_run_name="difficulty-{problem.key}", **PER_PROMPT)
def estimate_difficulty(
    problem: Problem, samples: int, models: ModelSettings, database: str | None, run_id: str
) -> None:
    """Sample and score `samples` answers of the prompt, traced in the difficulty run `run_id`; a
    prompt another worker holds, or has estimated already, is left to it (`difficulty_of` reads
    every estimate from the database)."""
    with contextlib.suppress(Claimed):
        solve_question(
            problem.question,
            strategy="best_of_n_weighted",
            values={"budget": samples},
            models=models,
            database=database,
            run_id=run_id,
            reference=problem.reference,
            dataset=problem.dataset,
            key=problem.key,
            meta=problem.meta,
        )


def difficulty_of(pool: queries.AnswerPool) -> dict[str, Any]:
    """A prompt's difficulty from its answer pool: predicted, the mean PRM score of its samples (no
    reference needed); oracle, their pass@1 (needs the reference)."""
    graded = [bool(is_correct(answer, pool.reference)) for answer, _ in pool.samples]
    return {
        "predicted": predicted_difficulty(score for _, score in pool.samples),
        "oracle": fmean(graded) if pool.reference is not None and graded else None,
    }


@task(name="solve", task_run_name="solve-{problem.key}", **PER_PROMPT)
def solve_prompt(
    problem: Problem,
    strategy: str,
    values: dict[str, Any],
    models: ModelSettings,
    database: str | None,
    run_id: str,
    extra: dict[str, Any] | None = None,
    plugins: Sequence[str] = (),
) -> dict[str, Any]:
    """Solve one prompt with one plan; the difficulty estimate (if any) rides along in the meta. A
    prompt another worker of the run holds, or has solved, is skipped: {"skipped": its key}."""
    load_plugins(plugins)  # a Dask worker is another process: it registers the run's strategies itself
    try:
        outcome = solve_question(
            problem.question,
            strategy=strategy,
            values=values,
            models=models,
            database=database,
            run_id=run_id,
            reference=problem.reference,
            dataset=problem.dataset,
            key=problem.key,
            meta=problem.meta,
            detail=extra,
        )
    except Claimed:
        return {"skipped": problem.key}
    return outcome.as_json()


def unsolved(recorder: Recorder, run_id: str, problems: Sequence[Problem]) -> list[Problem]:
    """The problems this run has not solved yet (a re-run of the run resumes with these)."""
    finished = recorder.finished_problems(run_id)
    return [p for p in problems if recorder.problem(p.dataset, p.key, p.question, p.reference, p.meta) not in finished]


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of an accuracy (sound at 0 and 1, unlike the normal interval)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(database: str | None, run_id: str, difficulty_cost: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Accuracy with a confidence interval and spend, overall and by difficulty bin, from the rows."""
    with connect(database)() as session:
        traces = queries.trace_of(session, run_id)
        info = queries.find_run(session, run_id)
    done = [t for t in traces if t.status == "done"]
    graded = [t for t in done if t.correct is not None]
    correct = sum(bool(t.correct) for t in graded)

    def spend(rows: Sequence[Any]) -> dict[str, float]:
        return {
            "generations": sum(t.generations for t in rows),
            "tokens": sum(t.tokens for t in rows),
            "flops": sum(t.flops for t in rows),
            "seconds": sum(t.seconds for t in rows),
        }

    by_bin: dict[str, dict[str, Any]] = {}
    for t in done:
        label = str(t.detail.get("bin", t.problem.meta.get("bin", "all")))
        row = by_bin.setdefault(label, {"prompts": 0, "graded": 0, "correct": 0, "generations": 0.0})
        row["prompts"] += 1
        row["graded"] += t.correct is not None
        row["correct"] += bool(t.correct)
        row["generations"] += t.generations
    for row in by_bin.values():
        row["accuracy"] = row["correct"] / row["graded"] if row["graded"] else None
        row["mean_generations"] = row["generations"] / row["prompts"]
    failures = [
        {"key": t.problem.key, "status": t.status, "error": " ".join((t.error or t.status).split())[:300]}
        for t in traces
        if t.status not in ("done", "running")
    ]
    summary: dict[str, Any] = {
        "run_id": run_id,
        "run_name": info.name if info else None,
        "prompts": len(traces),
        "done": len(done),
        "failed": len(failures),
        "failures": failures,
        "graded": len(graded),
        "correct": correct,
        "accuracy": correct / len(graded) if graded else None,
        "accuracy_ci95": list(wilson(correct, len(graded))),
        **spend(done),
        "by_bin": dict(sorted(by_bin.items())),
    }
    if difficulty_cost is not None:
        summary["difficulty_cost"] = dict(difficulty_cost)
        summary["generations_with_difficulty"] = summary["generations"] + difficulty_cost.get("generations", 0.0)
        summary["tokens_with_difficulty"] = summary["tokens"] + difficulty_cost.get("tokens", 0)
        summary["flops_with_difficulty"] = summary["flops"] + difficulty_cost.get("flops", 0.0)
    return summary


def progress_bar(total: int, label: str) -> Progress:
    from rich.console import Console

    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    bar.add_task(label, total=total)
    return bar


def run_all(futures: list[Any], label: str) -> tuple[list[Any], list[str]]:
    """Wait for every task with a progress bar; failures are collected, not raised."""
    results: list[Any] = []
    errors: list[str] = []
    with progress_bar(len(futures), label) as bar:
        for future in as_completed(futures):
            try:
                results.append(future.result())
            except Exception as error:  # a prompt that failed after its retries; the rest go on
                errors.append(f"{type(error).__name__}: {error}")
            bar.advance(bar.task_ids[0])
    return results, errors


@flow(name="evaluate", log_prints=False, validate_parameters=True)
def evaluate(
    dataset: str,
    strategy: str | None = None,
    budget: int | None = None,
    settings: dict[str, Any] | None = None,
    policy: str | None = None,
    total_budget: int | None = None,
    models: dict[str, Any] | None = None,
    database: str | None = None,
    run_name: str | None = None,
    limit: int | None = None,
    shard: str | None = None,
    subset_seed: int | None = None,
    skip_bad_lines: bool = False,
    question_field: str | None = None,
    answer_field: str | None = None,
    summary: str | None = None,
    plugins: list[str] | None = None,
) -> dict[str, Any]:
    """Solve every prompt of `dataset` with one strategy at one budget, or with the plan a
    compute-optimal policy picks for the prompt's predicted difficulty, and summarise. The
    parameters are `ttc evaluate`'s flags (`settings` is `--set`, `database` is `--db`)."""
    load_plugins(plugins or [])
    logger = get_run_logger()
    request = prepare(
        dataset,
        strategy=strategy,
        budget=budget,
        settings=settings,
        policy=policy,
        total_budget=total_budget,
        models=models,
        selection=Selection(limit, shard, subset_seed, skip_bad_lines, question_field, answer_field),
        warn=logger.warning,
    )
    engines, loaded, problems, config = request.engines, request.policy, request.problems, request.config
    recorder = Recorder(connect(database))
    run_id = recorder.open_run(run_name, config)
    todo = unsolved(recorder, run_id, problems)
    logger.info(
        "run %s: %d prompts, %d already solved, %d to go", run_id, len(problems), len(problems) - len(todo), len(todo)
    )

    difficulty_cost: dict[str, float] | None = None
    plans: list[tuple[Problem, str, dict[str, Any], dict[str, Any]]]
    if loaded is None:
        assert strategy is not None
        plans = [(p, strategy, {**(settings or {}), "budget": budget}, {}) for p in todo]
    else:
        plans, estimates = policy_plans(loaded, todo, budget, total_budget, engines, database)
        difficulty_cost = difficulty_spend(database, estimates, problems)
    futures = [
        solve_prompt.submit(problem, name, values, engines, database, run_id, extra, plugins or ())
        for problem, name, values, extra in plans
    ]
    results, errors = run_all(futures, "solving")
    # Prompts other workers of this run held: wait for them, and solve here those they abandon.
    skipped = {result["skipped"] for result in results if "skipped" in result}
    waiting = {
        recorder.problem(p.dataset, p.key, p.question, p.reference, p.meta): (p, name, values, extra)
        for p, name, values, extra in plans
        if p.key in skipped
    }
    while free := recorder.await_claims(run_id, waiting):
        retried, more = run_all(
            [
                solve_prompt.submit(p, name, values, engines, database, run_id, extra, plugins or ())
                for p, name, values, extra in (waiting[i] for i in free)
            ],
            "taking over",
        )
        errors += more
        skipped = {result["skipped"] for result in retried if "skipped" in result}
        waiting = {i: plan for i, plan in waiting.items() if i not in free or plan[0].key in skipped}
    for error in errors:
        logger.error("prompt failed: %s", error)
    result = {**summarize(database, run_id, difficulty_cost), **described(config)}
    publish(result)
    if summary:
        Path(summary).write_text(json.dumps(result, indent=2, default=str))
    recorder.close_run(run_id, "done" if not result["failed"] else "partial")
    return result


@dataclass(frozen=True)
class Evaluation:
    """An `evaluate` request checked whole before anything is written: its engines load, its
    strategy (or every plan of its policy, at every calibrated budget) accepts its settings, and its
    dataset reads. `config` is what the run is bound to (credentials masked)."""

    engines: ModelSettings
    policy: Policy | None
    problems: list[Problem]
    config: dict[str, Any]


def prepare(
    dataset: str,
    *,
    strategy: str | None = None,
    budget: int | None = None,
    settings: dict[str, Any] | None = None,
    policy: str | None = None,
    total_budget: int | None = None,
    models: dict[str, Any] | None = None,
    selection: Selection | None = None,
    warn: Any = None,
) -> Evaluation:
    """Check an `evaluate` request; a ValueError (or EngineError) names the first thing wrong."""
    engines = ModelSettings(**(models or {}))
    loaded: Policy | None = None
    if policy is None:
        if total_budget is not None:
            raise ValueError("--total-budget needs --policy (a policy file from `ttc calibrate`)")
        if strategy is None or budget is None:
            raise ValueError("give --strategy and --budget, or --policy with --budget or --total-budget")
        plans = [(strategy, registry.get(strategy).configure({**(settings or {}), "budget": budget}))]
    else:
        if strategy is not None or settings:
            raise ValueError("--policy picks the strategy and its settings per prompt: drop --strategy and --set")
        if (budget is None) == (total_budget is None):
            raise ValueError("with --policy give exactly one of --budget and --total-budget")
        loaded = Policy.load(Path(policy))
        if budget is not None and budget not in loaded.budgets:
            calibrated = ", ".join(str(b) for b in loaded.budgets)
            raise ValueError(
                f"policy {policy} was calibrated at budgets {calibrated}; --budget {budget} is not one of them"
            )
        plans = [
            ("best_of_n_weighted", registry.get("best_of_n_weighted").configure({"budget": loaded.difficulty_samples}))
        ]
        plans += loaded.configured_plans()
    for name, configured in plans:
        engines_for(name, configured, engines)  # loads (and caches) every engine the plans use
    selection = selection or Selection()
    problems = selection.load(dataset, warn)
    if not problems:
        raise ValueError(f"dataset {dataset} holds no prompts (after --limit and --shard)")
    fields = {"question_field": selection.question_field, "answer_field": selection.answer_field}
    config = {
        "flow": "evaluate",
        "dataset": dataset,
        "strategy": strategy,
        "budget": budget,
        "settings": settings or None,
        "policy": policy,
        "total_budget": total_budget,
        # only when given, so that runs from before these options existed still resume
        **{name: value for name, value in fields.items() if value is not None},
        **masked_models(engines),
    }
    return Evaluation(engines=engines, policy=loaded, problems=problems, config=config)


def described(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a summary says the run was: dataset, plan and model URIs (credentials masked)."""
    keys = ("dataset", "strategy", "budget", "settings", "policy", "total_budget", "proposer", "verifier", "reviser")
    return {key: config.get(key) for key in keys}


def difficulty_run_name(models: ModelSettings, samples: int) -> tuple[str, dict[str, Any]]:
    """The run that holds every difficulty estimate made with these engines, this seed and K samples,
    and its config. Estimates are shared by every evaluation (and every worker) that needs them: a
    prompt estimated once is never sampled again for the same (proposer, verifier, seed, K)."""
    engines = masked_models(models)
    config = {
        "flow": "difficulty",
        "proposer": engines.get("proposer"),
        "verifier": engines.get("verifier"),
        "seed": engines.get("seed"),
        "samples": samples,
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"difficulty/{digest}", config


def policy_plans(
    policy: Policy,
    problems: list[Problem],
    budget: int | None,
    total_budget: int | None,
    models: ModelSettings,
    database: str | None,
) -> tuple[list[tuple[Problem, str, dict[str, Any], dict[str, Any]]], str]:
    """Estimate each prompt's difficulty (or read the estimate made before with the same engines and
    K), bin it, and pick θ*(bin, N); with a total budget, first allocate per-bin budgets that
    maximise expected accuracy from the calibrated curves. The plans, and the difficulty run's id."""
    recorder = Recorder(connect(database))
    difficulty_run = recorder.open_run(*difficulty_run_name(models, policy.difficulty_samples))
    ids = {p.key: recorder.problem(p.dataset, p.key, p.question, p.reference, p.meta) for p in problems}
    todo = unsolved(recorder, difficulty_run, problems)
    for _ in range(MAX_DIFFICULTY_PASSES):
        if not todo:
            break
        samples = policy.difficulty_samples
        _, errors = run_all(
            [estimate_difficulty.submit(p, samples, models, database, difficulty_run) for p in todo], "difficulty"
        )
        if errors:
            raise RuntimeError(f"difficulty estimation failed for {len(errors)} prompt(s): {errors[0]}")
        # Estimates other workers hold are theirs: wait for them, and take over those they abandon.
        claimable = recorder.await_claims(difficulty_run, ids.values())
        todo = [p for p in problems if ids[p.key] in claimable]
    else:
        raise RuntimeError(
            f"difficulty estimates of {len(todo)} prompt(s) did not finish in {MAX_DIFFICULTY_PASSES} passes"
        )
    with connect(database)() as session:
        pools = queries.answer_pools(session, difficulty_run, [ids[p.key] for p in problems])
    by_key = {p.key: difficulty_of(pools[p.key]) for p in problems}
    bins = {p.key: policy.bin_of(by_key[p.key][policy.difficulty] or 0.0) for p in problems}
    if total_budget is not None:
        counts: dict[int, int] = {}
        for b in bins.values():
            counts[b] = counts.get(b, 0) + 1
        allocation = allocate(policy.curves(), counts, total_budget)
        budgets = {b: allocation.budgets[b] for b in counts}
    else:
        assert budget is not None
        budgets = {b: budget for b in set(bins.values())}
    plans = []
    for problem in problems:
        plan, calibrated = policy.plan_for(bins[problem.key], budgets[bins[problem.key]])
        extra = {
            "bin": bins[problem.key],
            "difficulty": by_key[problem.key]["predicted"],
            "plan": plan.label,
            "difficulty_run": difficulty_run,
        }
        plans.append((problem, plan.strategy, {**plan.settings, "budget": calibrated}, extra))
    return plans, difficulty_run


def difficulty_spend(database: str | None, difficulty_run: str, problems: Sequence[Problem]) -> dict[str, float]:
    """What estimating the difficulty of `problems` cost, whichever run or worker made each estimate
    (a reused estimate costs what it cost when it was made: the policy needs it either way)."""
    with connect(database)() as session:
        ids = queries.problem_ids(session, [(p.dataset, p.key) for p in problems])
        pools = queries.answer_pools(session, difficulty_run, list(ids.values())).values()
    return {
        "generations": float(sum(p.generations for p in pools)),
        "tokens": float(sum(p.tokens for p in pools)),
        "flops": float(sum(p.flops for p in pools)),
    }


def plan_line(summary: Mapping[str, Any]) -> str:
    """`beam N=16`, or `policy p.json at N=8` / `policy p.json with 400 generations in all`."""
    if summary.get("policy"):
        if summary.get("total_budget") is not None:
            return f"policy {summary['policy']} with {summary['total_budget']} generations in all"
        return f"policy {summary['policy']} at N={summary.get('budget')}"
    return f"{summary.get('strategy')} N={summary.get('budget')}"


def publish(summary: Mapping[str, Any]) -> None:
    """The summary as Prefect artifacts: a markdown overview and a table by difficulty bin."""
    low, high = summary["accuracy_ci95"]
    accuracy = summary["accuracy"]
    text = [
        f"# Evaluation {summary.get('run_name') or summary['run_id']}",
        f"- dataset: `{summary.get('dataset')}`",
        f"- plan: {plan_line(summary)}",
        f"- models: proposer `{summary.get('proposer')}`, verifier `{summary.get('verifier')}`",
        f"- prompts: {summary['prompts']} ({summary['done']} done, {summary['failed']} failed)",
        f"- accuracy: {accuracy if accuracy is None else round(accuracy, 4)} (95% CI {low:.3f}–{high:.3f})",
        f"- spend: {summary['generations']:g} generations, {summary['tokens']} tokens, {summary['flops']:.3g} FLOPs",
    ]
    text += [f"- failed: `{f['key']}` ({f['status']}): {f['error']}" for f in summary["failures"][:50]]
    if "difficulty_cost" in summary:
        text.append(f"- with difficulty estimation: {summary['generations_with_difficulty']:g} generations")
    create_markdown_artifact("\n".join(text), key="evaluation-summary", description="ttc evaluate summary")
    rows = [{"bin": b, **{k: v for k, v in row.items()}} for b, row in summary["by_bin"].items()]
    if rows:
        create_table_artifact(rows, key="evaluation-by-bin", description="accuracy and spend by difficulty bin")
