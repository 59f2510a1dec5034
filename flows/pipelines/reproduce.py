"""The `reproduce` flow: the paper's experiment in one run (Snell et al. 2024, §3–§6).

1. On a calibration split: one pool of samples per prompt (best-of-N, weighted best-of-N and majority
   are read off it) and every search and revision plan of the grid at every budget.
2. Two compute-optimal policies fitted on it (two-fold cross-validation inside each difficulty bin):
   one binned by predicted difficulty (mean PRM score), one by oracle difficulty (pass@1).
3. On a disjoint test split: best-of-N weighted at every budget, and each policy at every budget.
4. The headline numbers (flows/policy/headline.py), each with a 95% bootstrap interval and the
   paper's figure beside it, printed and written to DIR/headline.json, and the HTML reports of both
   splits beside it (DIR/report.html, DIR/calibration.html).

Every step is a named run (`NAME/calibration/...`, `NAME/test/...`), so running the same recipe again
resumes where it stopped; difficulty estimates are shared with every other evaluation that uses the
same engines (flows/pipelines/evaluate.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from db import queries
from db.recorder import Recorder
from db.session import connect
from flows.pipelines import calibrate as calibration
from flows.pipelines.evaluate import evaluate
from flows.pipelines.report import build_report, resolve_runs
from flows.policy import headline
from flows.policy.grid import plan_grid, plan_of
from flows.service.datasets import Problem, Selection
from graphs import registry
from graphs.plugins import load_plugins

BASELINE = "best_of_n_weighted"
BEAM = "beam M=sqrt"

PAPER = {
    "efficiency": "compute-optimal matches best-of-N weighted with about 4x fewer generations "
    "(search: 16 vs 64; revisions: 64 vs 256); the paper does not count difficulty estimation",
    "beam_vs_best_of_n": "beam search ahead at small budgets (N <= 16) on medium and hard bins; behind "
    "on the easiest bins at large budgets, where it over-optimises the PRM",
    "revision_ratio": "easy prompts do best fully sequential, hard ones at an intermediate ratio",
}


class RecipeError(ValueError):
    """A recipe that cannot be read or run, named with what is wrong."""


class Recipe(BaseModel):
    """What a reproduction runs: models by URI, the two splits, the budgets and the plan grid."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the run-name prefix: running the recipe again resumes these runs")
    proposer: str | None = None
    verifier: str | None = None
    reviser: str | None = None
    seed: int = 0
    calibration: str = Field(description="dataset spec of the calibration split")
    test: str = Field(description="dataset spec of the test split (disjoint from the calibration split)")
    calibration_shard: str | None = None
    test_shard: str | None = None
    calibration_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    budgets: list[int]
    plans: list[str]
    bins: int = Field(5, ge=1)
    difficulty_samples: int = Field(16, ge=1)
    subsets: int = Field(16, ge=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    resamples: int = Field(1000, ge=10, description="bootstrap resamples behind each interval")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if not self.budgets or self.budgets != sorted(set(self.budgets)) or self.budgets[0] < 1:
            raise ValueError(f"budgets must be positive, ascending and distinct, got {self.budgets}")
        if BASELINE not in self.plans:
            raise ValueError(f"plans must include {BASELINE!r}, the baseline every headline compares with")
        return self

    @property
    def models(self) -> dict[str, Any]:
        given = {"proposer": self.proposer, "verifier": self.verifier, "reviser": self.reviser}
        return {**{k: v for k, v in given.items() if v is not None}, "seed": self.seed}

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a YAML recipe; RecipeError names the file and what is wrong."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise RecipeError(f"cannot read recipe {path}: {error}") from error
        except yaml.YAMLError as error:
            raise RecipeError(f"recipe {path} is not YAML: {str(error).splitlines()[0]}") from error
        if not isinstance(data, dict):
            raise RecipeError(f"recipe {path} must be a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in error.errors())
            raise RecipeError(f"recipe {path} is not valid: {problems}") from error


# The paper's grid on the shipped testbed: both splits are halves of one dataset of distinct questions.
_GRID = [
    "best_of_n_weighted",
    "best_of_n",
    "majority",
    "beam M=sqrt",
    "beam M=4",
    "lookahead k=1",
    "dvts",
    "revisions sequential",
    "revisions chains=4",
    "revisions parallel",
]
SCALES: dict[str, Recipe] = {
    "quick": Recipe(
        name="reproduce-quick",
        calibration="testbed:arith?n=120&seed=2024&distinct=true",
        test="testbed:arith?n=120&seed=2024&distinct=true",
        calibration_shard="0/2",
        test_shard="1/2",
        calibration_limit=40,
        test_limit=40,
        budgets=[1, 4, 16],
        plans=[
            "best_of_n_weighted",
            "best_of_n",
            "majority",
            "beam M=sqrt",
            "beam M=4",
            "revisions sequential",
            "revisions parallel",
        ],
        bins=4,
        resamples=500,
    ),
    "full": Recipe(
        name="reproduce-full",
        calibration="testbed:arith?n=400&seed=2024&distinct=true",
        test="testbed:arith?n=400&seed=2024&distinct=true",
        calibration_shard="0/2",
        test_shard="1/2",
        calibration_limit=160,
        test_limit=160,
        budgets=[1, 4, 16, 64],
        plans=_GRID,
        bins=5,
    ),
}


def check_disjoint(calibration_split: list[Problem], test_split: list[Problem]) -> None:
    """Refuse splits that share a question: the test split must be prompts the policy never saw."""
    asked = {p.question for p in calibration_split}
    shared = [p.key for p in test_split if p.question in asked]
    if shared:
        raise RecipeError(
            f"the test split shares {len(shared)} question(s) with the calibration split (e.g. {shared[0]}); "
            "use two shards of one dataset of distinct questions (testbed: distinct=true)"
        )


def prepare(recipe: Recipe) -> tuple[calibration.Calibration, list[Problem]]:
    """Check the whole recipe before anything is written: the grid, the engines, both splits."""
    plan_grid(recipe.plans, recipe.settings)
    request = calibration.prepare(
        recipe.calibration,
        budgets=recipe.budgets,
        plans=recipe.plans,
        difficulty_samples=recipe.difficulty_samples,
        bins=recipe.bins,
        models=recipe.models,
        selection=Selection(limit=recipe.calibration_limit, shard=recipe.calibration_shard),
        settings=recipe.settings,
    )
    test_split = Selection(limit=recipe.test_limit, shard=recipe.test_shard).load(recipe.test)
    if any(p.reference is None for p in test_split):
        raise RecipeError("the test split needs reference answers for every prompt")
    check_disjoint(request.problems, test_split)
    return request, test_split


@flow(name="reproduce", log_prints=False, validate_parameters=True)
def reproduce(
    recipe: dict[str, Any], out: str = "reproduction", database: str | None = None, plugins: list[str] | None = None
) -> dict[str, Any]:
    """Run the recipe's grid, fit both policies, evaluate them on the test split, and write
    `out/headline.json` (and the policies beside it); returns the headline."""
    load_plugins(plugins or [])
    logger = get_run_logger()
    spec = Recipe.model_validate(recipe)
    request, test_split = prepare(spec)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(connect(database))
    seconds: dict[str, float] = {}
    began = time.perf_counter()

    name = f"{spec.name}/calibration"
    pools, _ = calibration.sample_pools(request, name, recorder, database)
    pooled = calibration.read_pool_plans(pools, request, spec.subsets)
    searched, spent, _ = calibration.run_search_plans(request, name, recorder, database)
    seconds["calibration grid"] = time.perf_counter() - began
    outcomes = {**pooled, **searched}
    oracle_bins: dict[str, int] = {}
    policies: dict[str, Path] = {}
    for difficulty in ("predicted", "oracle"):
        thresholds, bin_of = calibration.bin_by_difficulty(pools, difficulty, spec.difficulty_samples, spec.bins)
        policies[difficulty] = folder / f"policy-{difficulty}.json"
        calibration.fit_and_save(
            outcomes,
            spent,
            thresholds,
            bin_of,
            request,
            difficulty,
            f"{spec.name}/policy-{difficulty}",
            str(policies[difficulty]),
            recorder,
        )
        if difficulty == "oracle":
            oracle_bins = dict(bin_of)
    logger.info("policies fitted on %d calibration prompts", len(pools))

    began = time.perf_counter()
    common: dict[str, Any] = {
        "dataset": spec.test,
        "models": spec.models,
        "database": database,
        "limit": spec.test_limit,
        "shard": spec.test_shard,
        "plugins": plugins,
    }
    test_runs: dict[str, dict[int, str]] = {label: {} for label in (BASELINE, *map(optimal_label, policies))}
    for n in spec.budgets:
        ran = evaluate(strategy=BASELINE, budget=n, run_name=f"{spec.name}/test/{BASELINE}/{n}", **common)
        test_runs[BASELINE][n] = ran["run_id"]
        for difficulty, path in policies.items():
            ran = evaluate(
                policy=str(path), budget=n, run_name=f"{spec.name}/test/compute-optimal-{difficulty}/{n}", **common
            )
            test_runs[optimal_label(difficulty)][n] = ran["run_id"]
    seconds["test split"] = time.perf_counter() - began

    result = summarize_reproduction(spec, outcomes, oracle_bins, test_runs, database, len(test_split))
    result["seconds"] = seconds
    result["policies"] = {k: str(v) for k, v in policies.items()}
    (folder / "headline.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    write_reports(spec.name, folder, database)
    return result


def write_reports(name: str, folder: Path, database: str | None) -> None:
    """The HTML reports beside the headline (flows/pipelines/report.py): the test split's runs in
    report.html, the calibration grid's in calibration.html."""
    with connect(database)() as session:
        for file, prefix in (("report.html", f"{name}/test"), ("calibration.html", f"{name}/calibration")):
            (folder / file).write_text(build_report(session, resolve_runs(session, [prefix])), encoding="utf-8")


def optimal_label(difficulty: str) -> str:
    """The name of a policy's test runs in the headline: "compute-optimal (predicted)"."""
    return f"compute-optimal ({difficulty})"


def test_outcomes(database: str | None, run_ids: dict[int, str]) -> tuple[headline.Outcomes, headline.Outcomes]:
    """Per budget, per problem key of the finished solves: correctness, and the generations spent."""
    correct: dict[int, dict[str, float]] = {}
    spend: dict[int, dict[str, float]] = {}
    with connect(database)() as session:
        for n, run_id in run_ids.items():
            outcomes = [o for o in queries.solve_outcomes(session, run_id) if o.status == "done"]
            correct[n] = {o.problem_key: float(bool(o.correct)) for o in outcomes}
            spend[n] = {o.problem_key: o.generations for o in outcomes}
    return correct, spend


def estimate_costs(database: str | None, run_id: str) -> dict[str, float]:
    """Per problem key of a policy run: the generations its difficulty estimate cost, read from the
    difficulty run its solves name (every budget's run of a policy shares these estimates)."""
    with connect(database)() as session:
        traces = queries.trace_of(session, run_id)
        ids = [t.problem.id for t in traces]
        costs = dict.fromkeys((t.problem.key for t in traces), 0.0)
        for difficulty_run in {str(t.detail["difficulty_run"]) for t in traces if "difficulty_run" in t.detail}:
            for key, pool in queries.answer_pools(session, difficulty_run, ids).items():
                costs[key] = pool.generations
    return costs


def mean_by_budget(table: headline.Outcomes) -> dict[int, float]:
    """N -> the mean accuracy over the prompts of that budget."""
    return {n: headline.mean_over(per_prompt, sorted(per_prompt)) for n, per_prompt in sorted(table.items())}


def summarize_reproduction(
    spec: Recipe,
    outcomes: dict[tuple[str, str, int], float],
    oracle_bins: dict[str, int],
    test_runs: dict[str, dict[int, str]],
    database: str | None,
    test_prompts: int,
) -> dict[str, Any]:
    """The headline numbers from the calibration grid and the test runs (flows/policy/headline.py)."""
    by_plan: dict[str, dict[int, dict[str, float]]] = {}
    for (key, label, n), value in outcomes.items():
        by_plan.setdefault(label, {}).setdefault(n, {})[key] = value
    baseline, _ = test_outcomes(database, test_runs[BASELINE])
    accuracy = {BASELINE: mean_by_budget(baseline)}
    efficiency = {}
    for label, run_ids in test_runs.items():
        if label == BASELINE:
            continue
        correct, spend = test_outcomes(database, run_ids)
        accuracy[label] = mean_by_budget(correct)
        costs = estimate_costs(database, run_ids[min(run_ids)])
        efficiency[label] = headline.efficiency(
            baseline, correct, spend, costs, seed=spec.seed, resamples=spec.resamples
        )
    result: dict[str, Any] = {
        "recipe": spec.model_dump(mode="json"),
        "prompts": {"calibration": len(oracle_bins), "test": test_prompts},
        "test_accuracy": accuracy,
        "efficiency": efficiency,
        "calibration_accuracy": {label: mean_by_budget(table) for label, table in sorted(by_plan.items())},
        "paper": PAPER,
    }
    if BEAM in by_plan:
        result["beam_vs_best_of_n"] = headline.difference_by_bin(
            by_plan[BEAM], by_plan[BASELINE], oracle_bins, seed=spec.seed, resamples=spec.resamples
        )
    ratios: dict[float, dict[int, dict[str, float]]] = {}
    for label, table in by_plan.items():
        plan = plan_of(label)
        if plan.strategy != "revisions":
            continue
        for n, per_prompt in table.items():
            settings = registry.get("revisions").configure({**plan.settings, "budget": n})
            ratios.setdefault(settings.ratio, {})[n] = per_prompt  # type: ignore[attr-defined]
    top = max(spec.budgets)
    if ratios and any(top in t for t in ratios.values()):
        result["revision_ratio"] = headline.best_ratio_by_bin(
            ratios, oracle_bins, top, seed=spec.seed, resamples=spec.resamples
        )
    return result
