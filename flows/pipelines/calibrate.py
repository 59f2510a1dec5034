"""The `calibrate` flow: learn a compute-optimal policy θ*(difficulty bin, budget) on a
calibration dataset (Snell et al. 2024, §3), in five phases:

1. Sample one pool of answers per prompt (as many as the largest budget) and score it with the PRM.
2. Read the pool plans off that pool: every strategy whose answer is one vote over N samples
   (majority, best-of-N, best-of-N weighted, and any user strategy registered with `pool_vote`) is
   scored at each N by averaging over random N-subsets, so no budget re-samples anything.
3. Run every search / revision plan of the grid at every budget it is valid for.
4. Bin prompts by difficulty (predicted: mean PRM score of the first K pool samples; or oracle:
   pass@1 over the pool) into quantiles.
5. Fit θ*(bin, N) with two-fold cross-validation inside each bin; the policy goes to the database
   and a JSON file, the report to Prefect artifacts.

Every solve is traced in a run named after the calibration, so a re-run resumes where it stopped.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import fmean
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from db import queries
from db.recorder import Recorder
from db.session import connect
from flows.pipelines.evaluate import run_all, solve_prompt, unsolved
from flows.pipelines.plots import plot_policy
from flows.policy import Plan, Policy, assign_bin, fit_policy, predicted_difficulty, quantile_thresholds
from flows.policy.grid import plan_grid, pool_plans, subset_accuracy, valid_at
from flows.service.config import ModelSettings
from flows.service.datasets import Problem, Selection
from flows.service.solving import engines_for, masked_models
from graphs import registry
from graphs.plugins import load_plugins
from graphs.settings import MAX_BUDGET
from ttc_nodes.answers import is_correct

POOL_STRATEGY = "best_of_n_weighted"
"""The strategy that samples and scores each prompt's pool."""

Pools = dict[str, tuple[list[tuple[str | None, float | None]], str | None]]
"""Problem key -> the pool's (answer, score) samples in sampling order, and the reference."""
Outcomes = dict[tuple[str, str, int], float]
"""(problem key, plan label, N) -> accuracy; the same cells -> generations spent, for the run plans."""
"""(problem key, plan label, budget) -> accuracy of that plan on that prompt at that budget."""


@dataclass(frozen=True)
class Calibration:
    """A `calibrate` request checked whole before anything is written: the sorted budgets, the plan
    grid (shared settings merged in), the engines, the problems, and the values of each prompt's
    pool solve (its size and the shared settings the pool strategy takes)."""

    dataset: str
    difficulty_samples: int
    budgets: list[int]
    plans: dict[str, Plan]
    engines: ModelSettings
    problems: list[Problem]
    pool: dict[str, Any]
    settings: dict[str, Any]

    def run_config(self, **config: Any) -> dict[str, Any]:
        """What a calibration run is bound to; the shared settings only when given, so runs of
        calibrations without them resume as before."""
        return {"flow": "calibrate", **config, **({"settings": self.settings} if self.settings else {})}


def prepare(
    dataset: str,
    *,
    budgets: Sequence[int],
    plans: Sequence[str] | None = None,
    difficulty_samples: int = 16,
    bins: int = 5,
    models: dict[str, Any] | None = None,
    selection: Selection | None = None,
    settings: Mapping[str, Any] | None = None,
    warn: Any = None,
) -> Calibration:
    """Check a calibration request whole before anything is written: budgets, plans and their
    shared settings, bins, engines and a dataset with references."""
    if not budgets or min(budgets) < 1 or max(budgets) > MAX_BUDGET:
        raise ValueError(f"budgets must be a non-empty list of integers in 1..{MAX_BUDGET}, got {list(budgets)}")
    if bins < 1 or difficulty_samples < 1:
        raise ValueError(f"--bins and --difficulty-samples must be >= 1, got {bins} and {difficulty_samples}")
    shared = dict(settings or {})
    grid = plan_grid(plans, shared)
    engines = ModelSettings(**(models or {}))
    pooling = registry.get(POOL_STRATEGY)
    pool = {
        **{key: value for key, value in shared.items() if key in pooling.settings.model_fields},
        "budget": max(max(budgets), difficulty_samples),
    }
    engines_for(POOL_STRATEGY, pooling.configure(pool), engines)
    for plan in grid.values():
        for n in budgets:
            if valid_at(plan, n):
                engines_for(
                    plan.strategy, registry.get(plan.strategy).configure({**plan.settings, "budget": n}), engines
                )
    problems = (selection or Selection()).load(dataset, warn)
    if any(p.reference is None for p in problems):
        raise ValueError("calibration needs reference answers for every prompt")
    if len(problems) < 2 * bins:
        raise ValueError(
            f"two-fold cross-validation in {bins} difficulty bins needs at least {2 * bins} prompts; "
            f"the dataset gives {len(problems)} (use more prompts or fewer --bins)"
        )
    return Calibration(dataset, difficulty_samples, sorted(set(budgets)), grid, engines, problems, pool, shared)


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
    subset_seed: int | None = None,
    skip_bad_lines: bool = False,
    question_field: str | None = None,
    answer_field: str | None = None,
    settings: dict[str, Any] | None = None,
    summary: str | None = None,
    plugins: list[str] | None = None,
) -> dict[str, Any]:
    """Fit a compute-optimal policy on `dataset` and write it to `out` (and the database); the
    report also to `summary` when given. `settings` apply to every plan; `plugins` are imported
    first (graphs.plugins.load_plugins), so a worker knows the user strategies the plans name."""
    load_plugins(plugins or [])
    logger = get_run_logger()
    request = prepare(
        dataset,
        budgets=budgets,
        plans=plans,
        difficulty_samples=difficulty_samples,
        bins=bins,
        models=models,
        selection=Selection(limit, shard, subset_seed, skip_bad_lines, question_field, answer_field),
        settings=settings,
        warn=logger.warning,
    )
    name = run_name or f"calibrate-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    recorder = Recorder(connect(database))

    pools, pool_failures = sample_pools(request, name, recorder, database)
    outcomes = read_pool_plans(pools, request, subsets)
    searched, spent, search_failures = run_search_plans(request, name, recorder, database)
    thresholds, bin_of = bin_by_difficulty(pools, difficulty, difficulty_samples, bins)
    report = fit_and_save({**outcomes, **searched}, spent, thresholds, bin_of, request, difficulty, name, out, recorder)

    logger.info("policy %s written to %s", name, out)
    result = {"policy": name, "out": out, "prompts": len(bin_of), "failed": pool_failures + search_failures, **report}
    if summary:
        Path(summary).write_text(json.dumps(result, indent=2, default=str))
    return result


def sample_pools(request: Calibration, name: str, recorder: Recorder, database: str | None) -> tuple[Pools, int]:
    """Phase 1: sample and score one pool per prompt, in the run `{name}/pool` (resumed by name).
    The pools of the prompts solved, and how many prompts failed."""
    run_id = recorder.open_run(f"{name}/pool", request.run_config(dataset=request.dataset, pool=request.pool["budget"]))
    todo = unsolved(recorder, run_id, request.problems)
    _, errors = run_all(
        [solve_prompt.submit(p, POOL_STRATEGY, request.pool, request.engines, database, run_id) for p in todo],
        "answer pools",
    )
    recorder.close_run(run_id, "partial" if errors else "done")
    return pool_samples(database, run_id), len(errors)


def read_pool_plans(pools: Pools, request: Calibration, subsets: int) -> Outcomes:
    """Phase 2: the accuracy of every pool plan of the grid at every budget, read off the pools."""
    pooled = pool_plans()
    votes = {label: pooled[label] for label in request.plans if label in pooled}
    outcomes: Outcomes = {}
    for key, (samples, reference) in pools.items():
        correct = [bool(is_correct(answer, reference)) for answer, _ in samples]
        for label, method in votes.items():
            for n in request.budgets:
                seed = zlib.crc32(f"{key}|{n}".encode())
                outcomes[(key, label, n)] = subset_accuracy(samples, correct, n, method, subsets, seed)
    return outcomes


def run_search_plans(
    request: Calibration, name: str, recorder: Recorder, database: str | None
) -> tuple[Outcomes, Outcomes, int]:
    """Phase 3: run every other plan at every budget it is valid for, each in the run
    `{name}/{label}/{N}` (resumed by name). Their per-prompt correctness, the generations each solve
    actually spent (less than N where a plan stops early), and how many solves failed."""
    outcomes: Outcomes = {}
    spent: Outcomes = {}
    failed = 0
    votes = pool_plans()
    for label, plan in request.plans.items():
        if label in votes:
            continue
        for n in request.budgets:
            if not valid_at(plan, n):
                continue
            run_id = recorder.open_run(f"{name}/{label}/{n}", request.run_config(plan=label, budget=n))
            values = {**plan.settings, "budget": n}
            todo = unsolved(recorder, run_id, request.problems)
            _, errors = run_all(
                [solve_prompt.submit(p, plan.strategy, values, request.engines, database, run_id) for p in todo],
                f"{label} N={n}",
            )
            failed += len(errors)
            recorder.close_run(run_id, "partial" if errors else "done")
            for key, (correct_value, generations) in run_correctness(database, run_id).items():
                outcomes[(key, label, n)] = correct_value
                spent[(key, label, n)] = min(generations, float(n))
    return outcomes, spent, failed


def bin_by_difficulty(
    pools: Pools, difficulty: Literal["predicted", "oracle"], difficulty_samples: int, bins: int
) -> tuple[list[float], dict[str, int]]:
    """Phase 4: cut the prompts with a pool into `bins` quantiles of difficulty. The cut points, and
    each prompt's bin (1 easiest)."""
    keys = sorted(pools)
    if len(keys) < 2 * bins:
        raise ValueError(
            f"two-fold cross-validation in {bins} difficulty bins needs at least {2 * bins} calibrated prompts; "
            f"got {len(keys)} (use more prompts or fewer --bins)"
        )
    values_of = {
        key: (
            predicted_difficulty(s for _, s in pools[key][0][:difficulty_samples])
            if difficulty == "predicted"
            else fmean(float(bool(is_correct(a, pools[key][1]))) for a, _ in pools[key][0])
        )
        for key in keys
    }
    thresholds = quantile_thresholds([values_of[k] for k in keys], bins)
    return thresholds, {key: assign_bin(values_of[key], thresholds) for key in keys}


def fit_and_save(
    outcomes: Outcomes,
    spent: Outcomes,
    thresholds: list[float],
    bin_of: Mapping[str, int],
    request: Calibration,
    difficulty: Literal["predicted", "oracle"],
    name: str,
    out: str,
    recorder: Recorder,
) -> dict[str, Any]:
    """Phase 5: fit θ*(bin, N) by two-fold cross-validation inside each bin, charging each plan what it
    spent (pool plans spend N); write the policy to `out` and the database, plot it, publish the report
    as artifacts and return it."""
    fit = fit_policy(
        {k: v for k, v in outcomes.items() if k[0] in bin_of},
        dict(bin_of),
        spend={k: v for k, v in spent.items() if k[0] in bin_of},
    )
    policy = Policy(
        difficulty=difficulty,
        difficulty_samples=request.difficulty_samples,
        thresholds=thresholds,
        plans=request.plans,
        fit=fit,
        budgets=request.budgets,
        calibration={
            "dataset": request.dataset,
            "run_name": name,
            "prompts": len(bin_of),
            "models": masked_models(request.engines),
            "created_at": datetime.now(UTC).isoformat(),
            **({"settings": request.settings} if request.settings else {}),
        },
    )
    policy.save(Path(out))
    recorder.save_policy(name, policy.model_dump(mode="json"))
    report = {
        **efficiency_report(policy, request.budgets),
        "plot": str(plot_policy(policy, Path(out).with_suffix(".png"))),
    }
    publish(report, name)
    return report


def pool_samples(database: str | None, run_id: str) -> Pools:
    """Per problem key: the pool's (answer, score) samples in sampling order, and the reference."""
    with connect(database)() as session:
        return {key: (pool.samples, pool.reference) for key, pool in queries.answer_pools(session, run_id).items()}


def run_correctness(database: str | None, run_id: str) -> dict[str, tuple[float, float]]:
    """Per problem key of the run's finished solves: (1.0 if correct else 0.0, generations spent)."""
    with connect(database)() as session:
        return {
            o.problem_key: (float(bool(o.correct)), o.generations)
            for o in queries.solve_outcomes(session, run_id)
            if o.status == "done"
        }


def efficiency_report(policy: Policy, budgets: Sequence[int]) -> dict[str, Any]:
    """Compute-optimal (cross-validated) against best-of-N weighted at each budget, and the smallest
    budget at which compute-optimal matches best-of-N weighted at the largest budget.

    The efficiency is that largest budget over what compute-optimal actually spent at the matching
    budget (its mean generations per prompt, less than the budget where its plans stop early);
    `nominal_efficiency` divides by the matching budget itself."""
    rows: list[dict[str, Any]] = []
    for n in budgets:
        baseline = policy.fit.baseline("best_of_n_weighted", n) if "best_of_n_weighted" in policy.plans else None
        rows.append(
            {
                "budget": n,
                "best_of_n_weighted": baseline,
                "compute_optimal": policy.fit.overall(n),
                "compute_optimal_spend": policy.fit.overall_spend(n),
            }
        )
    target_budget = max(budgets)
    target = rows[-1]["best_of_n_weighted"]
    matched = None
    if target is not None:
        matched = next((r for r in rows if r["compute_optimal"] >= target - 1e-12), None)
    return {
        "curve": rows,
        "baseline_budget": target_budget,
        "matching_budget": matched["budget"] if matched else None,
        "matching_spend": matched["compute_optimal_spend"] if matched else None,
        "efficiency": (target_budget / matched["compute_optimal_spend"])
        if matched and matched["compute_optimal_spend"] > 0
        else None,
        "nominal_efficiency": (target_budget / matched["budget"]) if matched else None,
    }


def publish(report: Mapping[str, Any], name: str) -> None:
    create_table_artifact(report["curve"], key="calibration-curve", description=f"policy {name}: accuracy by budget")
    create_markdown_artifact(
        f"# Policy {name}\n\nCompute-optimal reaches best-of-N weighted's accuracy at N={report['baseline_budget']} "
        f"with {report['matching_spend']} generations per prompt at budget {report['matching_budget']} "
        f"({report['efficiency']}× fewer generations).\n\n```json\n"
        f"{json.dumps(report['curve'], indent=2)}\n```",
        key="calibration-summary",
    )
