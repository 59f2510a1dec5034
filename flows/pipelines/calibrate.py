"""The `calibrate` flow: learn a compute-optimal policy θ*(difficulty bin, budget) on a
calibration dataset (Snell et al. 2024, §3–§4).

1. Sample one pool of answers per prompt (as many as the largest budget) and score it with the PRM.
   Best-of-N (plain and weighted) and majority at every N are read off that pool by averaging over
   random subsets of size N, so no budget re-samples anything.
2. Run every search / revision plan of the grid at every budget it is valid for.
3. Bin prompts by difficulty (predicted: mean PRM score of the first K pool samples; or oracle:
   pass@1 over the pool) into quintiles, and fit θ*(bin, N) with two-fold cross-validation inside
   each bin. The policy goes to the database and a JSON file.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from db import queries
from db.recorder import Recorder
from db.session import connect
from flows.pipelines.evaluate import estimate_difficulty, run_all, solve_prompt, unsolved
from flows.pipelines.plots import plot_policy
from flows.policy import Plan, Policy, assign_bin, fit_policy, quantile_thresholds
from flows.service.config import ModelSettings
from flows.service.datasets import Problem, load_dataset
from flows.service.solving import engines_for, masked_models
from graphs import registry
from graphs.registry import SettingsError
from graphs.settings import MAX_BUDGET
from ttc_nodes.answers import is_correct
from ttc_nodes.state import Candidate
from ttc_nodes.vote import VoteMethod, vote

POOL_PLANS: dict[str, VoteMethod] = {
    "best_of_n_weighted": "weighted",
    "best_of_n": "best_of_n",
    "majority": "majority",
}
SEARCH_PLANS: dict[str, tuple[str, dict[str, Any]]] = {
    "beam M=sqrt": ("beam", {}),
    "beam M=4": ("beam", {"beam_width": 4}),
    "lookahead k=1": ("lookahead", {"lookahead": 1}),
    "lookahead k=3": ("lookahead", {"lookahead": 3}),
    "dvts": ("dvts", {}),
    "revisions sequential": ("revisions", {"chains": 1}),
    "revisions chains=4": ("revisions", {"chains": 4}),
}
DEFAULT_PLANS = [*POOL_PLANS, "beam M=sqrt", "beam M=4", "lookahead k=1", "dvts", "revisions sequential"]


def plan_of(label: str) -> Plan:
    if label in POOL_PLANS:
        return Plan(strategy=label, settings={}, label=label)
    if label in SEARCH_PLANS:
        strategy, settings = SEARCH_PLANS[label]
        return Plan(strategy=strategy, settings=settings, label=label)
    known = ", ".join([*POOL_PLANS, *SEARCH_PLANS])
    raise ValueError(f"unknown plan {label!r}; known plans: {known}")


def valid_at(plan: Plan, budget: int) -> bool:
    """Whether the plan's settings make sense at this budget (e.g. M=4 needs 4 | N)."""
    try:
        registry.get(plan.strategy).configure({**plan.settings, "budget": budget})
    except SettingsError:
        return False
    return True


def subset_accuracy(
    samples: Sequence[tuple[str | None, float | None]],
    correct: Sequence[bool],
    budget: int,
    method: VoteMethod,
    subsets: int,
    seed: int,
) -> float:
    """Expected accuracy of a vote over N samples, estimated from random N-subsets of one pool."""
    pool = [
        Candidate(f"{i}", None, ("",), "", 1, "answer", True, answer, score=score if score is not None else 0.0)
        for i, (answer, score) in enumerate(samples)
    ]
    truth = {c.key: ok for c, ok in zip(pool, correct, strict=True)}
    rng = random.Random(seed)
    draws = 1 if budget >= len(pool) else subsets
    hits = []
    for _ in range(draws):
        chosen = pool if budget >= len(pool) else rng.sample(pool, budget)
        selection = vote(chosen, method)
        hits.append(truth[selection.chosen] if selection.chosen is not None else False)
    return fmean(hits)


def pool_samples(
    database: str | None, run_id: str
) -> dict[str, tuple[list[tuple[str | None, float | None]], str | None]]:
    """Per problem key: the pool's (answer, score) samples in sampling order, and the reference."""
    with connect(database)() as session:
        traces = queries.trace_of(session, run_id)
    pools = {}
    for trace in traces:
        if trace.status != "done":
            continue
        scores = {s.candidate_key: s.value for s in sorted(trace.scores, key=lambda s: s.id)}
        answers = sorted((c for c in trace.candidates if c.kind == "answer"), key=lambda c: int(c.key.split(".")[1]))
        pools[trace.problem.key] = ([(c.answer, scores.get(c.key)) for c in answers], trace.problem.reference)
    return pools


def run_correctness(database: str | None, run_id: str) -> dict[str, float]:
    with connect(database)() as session:
        return {t.problem.key: float(bool(t.correct)) for t in queries.trace_of(session, run_id) if t.status == "done"}


def prepare(
    dataset: str,
    *,
    budgets: Sequence[int],
    plans: Sequence[str] | None = None,
    difficulty_samples: int = 16,
    bins: int = 5,
    models: dict[str, Any] | None = None,
    limit: int | None = None,
    shard: str | None = None,
    seed: int | None = None,
    bad_lines: str = "fail",
    warn: Any = None,
) -> tuple[list[int], dict[str, Plan], ModelSettings, list[Problem]]:
    """Check a calibration request whole before anything is written: budgets, plans, bins, engines
    and a dataset with references. The sorted budgets, the plan grid, the engines and the problems."""
    if not budgets or min(budgets) < 1 or max(budgets) > MAX_BUDGET:
        raise ValueError(f"budgets must be a non-empty list of integers in 1..{MAX_BUDGET}, got {list(budgets)}")
    if bins < 1 or difficulty_samples < 1:
        raise ValueError(f"--bins and --difficulty-samples must be >= 1, got {bins} and {difficulty_samples}")
    grid = {label: plan_of(label) for label in (plans or DEFAULT_PLANS)}
    engines = ModelSettings(**(models or {}))
    pool = registry.get("best_of_n_weighted").configure({"budget": max(max(budgets), difficulty_samples)})
    engines_for("best_of_n_weighted", pool, engines)
    for plan in grid.values():
        for n in budgets:
            if valid_at(plan, n):
                engines_for(
                    plan.strategy, registry.get(plan.strategy).configure({**plan.settings, "budget": n}), engines
                )
    problems = load_dataset(dataset, limit=limit, shard=shard, seed=seed, bad_lines=bad_lines, warn=warn)  # type: ignore[arg-type]
    if any(p.reference is None for p in problems):
        raise ValueError("calibration needs reference answers for every prompt")
    if len(problems) < 2 * bins:
        raise ValueError(
            f"two-fold cross-validation in {bins} difficulty bins needs at least {2 * bins} prompts; "
            f"the dataset gives {len(problems)} (use more prompts or fewer --bins)"
        )
    return sorted(set(budgets)), grid, engines, problems


@flow(name="calibrate", log_prints=False, validate_parameters=True)
def calibrate(
    dataset: str,
    budgets: list[int],
    plans: list[str] | None = None,
    out: str = "policy.json",
    difficulty: Literal["predicted", "oracle"] = "predicted",
    difficulty_samples: int = 16,
    subsets: int = 16,
    bins: int = 5,
    models: dict[str, Any] | None = None,
    database: str | None = None,
    run_name: str | None = None,
    limit: int | None = None,
    shard: str | None = None,
    seed: int | None = None,
    bad_lines: str = "fail",
) -> dict[str, Any]:
    """Fit a compute-optimal policy on `dataset` and write it to `out` (and the database)."""
    logger = get_run_logger()
    budgets, grid, engines, problems = prepare(
        dataset,
        budgets=budgets,
        plans=plans,
        difficulty_samples=difficulty_samples,
        bins=bins,
        models=models,
        limit=limit,
        shard=shard,
        seed=seed,
        bad_lines=bad_lines,
        warn=logger.warning,
    )
    name = run_name or f"calibrate-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    recorder = Recorder(connect(database))
    pool_size = max(max(budgets), difficulty_samples)

    pool_run = recorder.open_run(f"{name}/pool", {"flow": "calibrate", "dataset": dataset, "pool": pool_size})
    todo = unsolved(recorder, pool_run, problems)
    _, errors = run_all(
        [estimate_difficulty.submit(p, pool_size, engines, database, pool_run) for p in todo], "answer pools"
    )
    failed = len(errors)
    recorder.close_run(pool_run, "partial" if errors else "done")
    pools = pool_samples(database, pool_run)

    outcomes: dict[tuple[str, str, int], float] = {}
    for key, (samples, reference) in pools.items():
        correct = [bool(is_correct(answer, reference)) for answer, _ in samples]
        for label in grid:
            if label in POOL_PLANS:
                for n in budgets:
                    outcomes[(key, label, n)] = subset_accuracy(
                        samples, correct, n, POOL_PLANS[label], subsets, zlib.crc32(f"{key}|{n}".encode())
                    )
    for label, plan in grid.items():
        if label in POOL_PLANS:
            continue
        for n in budgets:
            if not valid_at(plan, n):
                continue
            run_id = recorder.open_run(f"{name}/{label}/{n}", {"flow": "calibrate", "plan": label, "budget": n})
            values = {**plan.settings, "budget": n}
            todo = unsolved(recorder, run_id, problems)
            _, errors = run_all(
                [solve_prompt.submit(p, plan.strategy, values, engines, database, run_id) for p in todo],
                f"{label} N={n}",
            )
            failed += len(errors)
            recorder.close_run(run_id, "partial" if errors else "done")
            for key, correct_value in run_correctness(database, run_id).items():
                outcomes[(key, label, n)] = correct_value

    keys = sorted(pools)
    if len(keys) < 2 * bins:
        raise ValueError(
            f"two-fold cross-validation in {bins} difficulty bins needs at least {2 * bins} calibrated prompts; "
            f"got {len(keys)} (use more prompts or fewer --bins)"
        )
    values_of = {
        key: (
            fmean([s for _, s in pools[key][0][:difficulty_samples] if s is not None] or [0.0])
            if difficulty == "predicted"
            else fmean(float(bool(is_correct(a, pools[key][1]))) for a, _ in pools[key][0])
        )
        for key in keys
    }
    thresholds = quantile_thresholds([values_of[k] for k in keys], bins)
    bin_of = {key: assign_bin(values_of[key], thresholds) for key in keys}
    fit = fit_policy({k: v for k, v in outcomes.items() if k[0] in bin_of}, bin_of)
    policy = Policy(
        difficulty=difficulty,
        difficulty_samples=difficulty_samples,
        thresholds=thresholds,
        plans=grid,
        fit=fit,
        budgets=budgets,
        calibration={
            "dataset": dataset,
            "run_name": name,
            "prompts": len(keys),
            "models": masked_models(engines),
            "created_at": datetime.now(UTC).isoformat(),
        },
    )
    policy.save(Path(out))
    recorder.save_policy(name, policy.model_dump(mode="json"))
    report = {**efficiency_report(policy, budgets), "plot": str(plot_policy(policy, Path(out).with_suffix(".png")))}
    publish(report, name)
    logger.info("policy %s written to %s", name, out)
    return {"policy": name, "out": out, "prompts": len(keys), "failed": failed, **report}


def efficiency_report(policy: Policy, budgets: Sequence[int]) -> dict[str, Any]:
    """Compute-optimal (cross-validated) against best-of-N weighted at each budget, and the smallest
    budget at which compute-optimal matches best-of-N weighted at the largest budget."""
    rows: list[dict[str, Any]] = []
    for n in budgets:
        baseline = policy.fit.baseline("best_of_n_weighted", n) if "best_of_n_weighted" in policy.plans else None
        rows.append({"budget": n, "best_of_n_weighted": baseline, "compute_optimal": policy.fit.overall(n)})
    target_budget = max(budgets)
    target = rows[-1]["best_of_n_weighted"]
    matched = None
    if target is not None:
        matched = next((r["budget"] for r in rows if r["compute_optimal"] >= target - 1e-12), None)
    return {
        "curve": rows,
        "baseline_budget": target_budget,
        "matching_budget": matched,
        "efficiency": (target_budget / matched) if matched else None,
    }


def publish(report: Mapping[str, Any], name: str) -> None:
    create_table_artifact(report["curve"], key="calibration-curve", description=f"policy {name}: accuracy by budget")
    create_markdown_artifact(
        f"# Policy {name}\n\nCompute-optimal matches best-of-N weighted at N={report['baseline_budget']} "
        f"with N={report['matching_budget']} ({report['efficiency']}× fewer generations).\n\n```json\n"
        f"{json.dumps(report['curve'], indent=2)}\n```",
        key="calibration-summary",
    )
