"""Solve one question with one strategy, traced into the database.

This is the unit every flow schedules: resolve the strategy and its settings, load the engines,
open (or resume) the run, run the graph with a database sink, grade, and close the solve.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from db.recorder import Claimed, Recorder
from db.session import connect
from flows.service.config import ModelSettings
from flows.service.tracing import DatabaseSink, storable, storable_json
from graphs import registry
from graphs.runner import SolveError, StepEvent, TraceSink, candidates_in, run_graph
from graphs.settings import StrategySettings
from ttc_nodes.answers import is_correct
from ttc_nodes.budget import BudgetError, Spend
from ttc_nodes.engines import load_proposer, load_verifier
from ttc_nodes.engines.uris import masked_uri, prompt_format_of
from ttc_nodes.prompts import check_question_size
from ttc_nodes.state import SolveContext


@dataclass(frozen=True)
class SolveOutcome:
    run_id: str
    solve_id: int
    dataset: str
    problem_key: str
    strategy: str
    settings: dict[str, Any]
    answer: str | None
    correct: bool | None
    spend: Spend
    seconds: float
    votes: dict[str, float] = field(default_factory=dict)
    samples: list[tuple[str | None, float | None]] = field(default_factory=list)
    """(answer, score) of each candidate the final vote looked at: what difficulty estimates read."""
    solution: str | None = None
    """The full text of the chosen candidate (its steps joined), None when no candidate was chosen."""

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "solve_id": self.solve_id,
            "dataset": self.dataset,
            "problem_key": self.problem_key,
            "strategy": self.strategy,
            "settings": self.settings,
            "answer": self.answer,
            "correct": self.correct,
            **self.spend.as_dict(),
            "seconds": self.seconds,
            "votes": self.votes,
        }


def question_key(question: str) -> str:
    """A stable key for an ad-hoc question (the same text always maps to the same problem)."""
    return hashlib.sha256(question.encode()).hexdigest()[:16]


def problem_seed(seed: int, dataset: str, key: str) -> int:
    """The base seed of one problem's solve: the run's seed mixed with the problem's identity, so
    problems of one dataset draw independent random streams, and a re-run draws the same ones."""
    digest = hashlib.sha256(repr((seed, dataset, key)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def engines_for(
    strategy: str, settings: StrategySettings, models: ModelSettings, seed: int | None = None
) -> SolveContext:
    """Load only the engines the strategy declares it needs (graphs.registry.register). The reviser
    defaults to the testbed reviser when the proposer is the testbed's, else to the proposer itself.
    `seed` (default: the models' base seed) seeds every sampling call of the solve."""
    needs = registry.get(strategy)
    proposer = load_proposer(models.proposer)
    verifier = load_verifier(models.verifier) if needs.needs_verifier(settings) else None
    reviser = load_proposer(reviser_uri(models)) if needs.reviser else None
    # A chat model asked for with `?chat=1` brings its own prompt layout.
    return SolveContext(
        proposer=proposer,
        verifier=verifier,
        reviser=reviser,
        prompt_format=prompt_format_of(proposer),
        seed=models.seed if seed is None else seed,
    )


def reviser_uri(models: ModelSettings) -> str:
    """The reviser a revising strategy gets: `models.reviser`, else the testbed reviser when the
    proposer is the testbed's, else the proposer itself."""
    if models.reviser:
        return models.reviser
    return "testbed:reviser" if models.proposer.startswith("testbed:") else models.proposer


def masked_models(models: ModelSettings) -> dict[str, Any]:
    """The model settings as stored and shown: credentials inside engine URIs are hidden."""
    return {name: masked_uri(value) if isinstance(value, str) else value for name, value in models.model_dump().items()}


def check_question(question: str) -> None:
    """Refuse a question no engine should see: empty, holding a NUL character (which PostgreSQL
    cannot store), or longer than MAX_QUESTION_CHARS."""
    if not question.strip():
        raise ValueError("the question is empty")
    if "\x00" in question:
        raise ValueError("the question holds a NUL character (\\x00)")
    check_question_size(question)


class Tee:
    """Sends each trace event to several sinks (the database, a progress display)."""

    def __init__(self, *sinks: TraceSink) -> None:
        self.sinks = sinks

    def step(self, event: StepEvent) -> None:
        for sink in self.sinks:
            sink.step(event)


def solve_question(
    question: str,
    *,
    strategy: str,
    values: Mapping[str, Any],
    models: ModelSettings,
    database: str | None = None,
    run_name: str | None = None,
    run_id: str | None = None,
    reference: str | None = None,
    dataset: str = "adhoc",
    key: str | None = None,
    meta: Mapping[str, Any] | None = None,
    detail: Mapping[str, Any] | None = None,
    progress: TraceSink | None = None,
) -> SolveOutcome:
    """Solve `question` with `strategy`, trace every step, grade against `reference` if given.

    Settings are validated and engines loaded before anything is written, so bad input leaves the
    database untouched. A failing node marks the solve failed (its trace so far is kept). The solve
    joins `run_id` when given, else the run called `run_name` (created if new), else a new unnamed
    run. `meta` describes the problem (stored with it once); `detail` this solve (its bin, its plan).
    """
    check_question(question)
    chosen = registry.get(strategy)
    settings = chosen.configure(values)
    problem_key = key or question_key(question)
    context = engines_for(strategy, settings, models, seed=problem_seed(models.seed, dataset, problem_key))
    recorder = Recorder(connect(database))
    config = {"strategy": strategy, "settings": settings.model_dump(), **masked_models(models)}
    owns_run = run_id is None  # a run opened here is closed here; a flow's run is the flow's to close
    run_id = run_id or recorder.open_run(run_name, config)
    problem_id = recorder.problem(dataset, problem_key, question, reference, dict(meta or {}))
    try:
        solve_id = recorder.start_solve(run_id, problem_id, strategy, settings.model_dump(), settings.budget)
    except Claimed:
        if owns_run:  # reopening marked the run running: give it back the status its solves say
            recorder.settle_run(run_id)
        raise
    sink = DatabaseSink(
        recorder,
        solve_id,
        verifier=context.verifier.uri if context.verifier else "",
        aggregation=settings.aggregation,
    )
    graph = registry.compile_graph(strategy, settings)
    try:
        result = run_graph(graph, question, context, Tee(sink, progress) if progress else sink)
        if result.spend.generations > settings.budget:
            raise BudgetError(
                f"{strategy} spent {result.spend.generations} generations of a budget of {settings.budget}"
            )
    except (SolveError, BudgetError) as error:
        recorder.fail_solve(solve_id, str(error))
        if owns_run:
            recorder.close_run(run_id, "partial")
        raise
    correct = is_correct(result.answer, reference)
    recorder.finish_solve(
        solve_id,
        answer=storable(result.answer),
        correct=correct,
        generations=result.spend.generations,
        tokens=result.spend.tokens,
        flops=result.spend.flops,
        seconds=result.seconds,
        detail=storable_json(
            {**(detail or {}), "votes": result.votes, "chosen": result.chosen, "spend": result.spend.as_dict()}
        ),
    )
    if owns_run:
        recorder.close_run(run_id, "done")
    return SolveOutcome(
        run_id=run_id,
        solve_id=solve_id,
        dataset=dataset,
        problem_key=problem_key,
        strategy=strategy,
        settings=settings.model_dump(),
        answer=result.answer,
        correct=correct,
        spend=result.spend,
        seconds=result.seconds,
        votes=result.votes,
        samples=voted_samples(result.state),
        solution=chosen_solution(result.state, result.chosen, context),
    )


def chosen_solution(state: Mapping[str, Any], chosen: str | None, context: SolveContext) -> str | None:
    """The text of the candidate the final vote chose: its whole path of steps, as the proposer wrote it."""
    if chosen is None:
        return None
    found = next((c for c in candidates_in(state) if c.key == chosen), None)
    return None if found is None else context.prompt_format.join_steps(found.steps) or found.text


def voted_samples(state: Mapping[str, Any]) -> list[tuple[str | None, float | None]]:
    """The finished candidates a strategy ended with (its pool, its finished list or its chains)."""
    candidates = state.get("finished") or state.get("pool") or [a for chain in state.get("chains", []) for a in chain]
    return [(c.answer, c.score) for c in candidates]
