"""Early stopping (docs/early-stopping.md): off is today's graphs exactly; on, a settled vote stops
after its first round, the budget is never exceeded, the settle step is traced, bad settings are refused."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from db import dispose, queries
from db.session import connect
from flows.cli import app
from flows.policy.grid import plan_grid, valid_at
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from graphs import best_of_n, majority, registry
from graphs.early_stopping import in_rounds
from graphs.linear import linear_graph
from graphs.registry import SettingsError
from graphs.runner import StepEvent, run_graph
from graphs.settings import MajoritySettings
from graphs.stepwise import search_loop
from tests.scripted import ScriptedProposer, ScriptedVerifier
from ttc_nodes.early_stop import leader_probability, settle_decision
from ttc_nodes.prune import resample_particles
from ttc_nodes.state import Candidate, SolveContext, SolveState
from ttc_nodes.verify import verify

EARLY = ["majority", "best_of_n", "best_of_n_weighted", "revisions", "particle_filtering"]
SIZED = {"revisions": {"chains": 4}, "particle_filtering": {"max_rounds": 6}}


class Steps:
    def __init__(self) -> None:
        self.events: list[StepEvent] = []

    def step(self, event: StepEvent) -> None:
        self.events.append(event)


def context(answers: tuple[str, ...] = ("1", "2", "3"), seed: int = 5) -> SolveContext:
    return SolveContext(proposer=ScriptedProposer(answers=answers), verifier=ScriptedVerifier(), seed=seed)


def run(name: str, values: dict[str, Any], ctx: SolveContext) -> tuple[Any, list[StepEvent]]:
    settings = registry.get(name).configure({**SIZED.get(name, {}), **values})
    sink = Steps()
    return run_graph(registry.compile_graph(name, settings), "What is 1+2?", ctx, sink), sink.events


def unchanged_builder(name: str, settings: Any) -> Any:
    """The builders as they were before early stopping, written out."""
    if name == "majority":
        return linear_graph("majority", majority.steps(settings))
    if name in ("best_of_n", "best_of_n_weighted"):
        return linear_graph(name, best_of_n.steps(settings))
    expand = partial(
        __import__("ttc_nodes.propose", fromlist=["expand_steps"]).expand_steps,
        first_round=settings.budget,
        max_tokens=settings.max_step_tokens,
        temperature=settings.temperature,
    )
    resample = partial(
        resample_particles,
        budget=settings.budget,
        temperature=settings.resample_temperature,
        max_rounds=settings.max_rounds,
        final_vote=settings.final_vote,
    )
    return search_loop(
        "particle_filtering",
        expand=expand,
        verify=partial(verify, aggregation=settings.aggregation),
        prune=resample,
        prune_name="resample",
    )


def trace_of(events: list[StepEvent]) -> list[tuple[Any, ...]]:
    return [(e.node, e.round, e.spend, [c.key for c in e.new], [(c.key, c.score) for c in e.scored]) for e in events]


@pytest.mark.parametrize("name", ["majority", "best_of_n", "best_of_n_weighted", "particle_filtering"])
@pytest.mark.parametrize("seed", [0, 11])
def test_early_stopping_off_is_todays_graph_and_results_exactly(name: str, seed: int) -> None:
    settings = registry.get(name).configure({"budget": 8, **SIZED.get(name, {})})
    before, after = unchanged_builder(name, settings), registry.compile_graph(name, settings)
    assert before.get_graph().to_json() == after.get_graph().to_json()
    old_sink, new_sink = Steps(), Steps()
    old = run_graph(before, "What is 1+2?", context(seed=seed), old_sink)
    new = run_graph(after, "What is 1+2?", context(seed=seed), new_sink)
    assert (old.answer, old.chosen, old.votes, old.spend) == (new.answer, new.chosen, new.votes, new.spend)
    assert trace_of(old_sink.events) == trace_of(new_sink.events)


def test_revisions_off_has_no_settle_node() -> None:
    graph = registry.compile_graph("revisions", registry.get("revisions").configure({"budget": 8, "chains": 2}))
    assert "settle" not in graph.get_graph().nodes


@pytest.mark.parametrize("rule", ["posterior", "confidence"])
@pytest.mark.parametrize("name", ["majority", "best_of_n", "best_of_n_weighted"])
def test_samples_that_all_agree_stop_after_the_first_round(name: str, rule: str) -> None:
    result, events = run(name, {"budget": 16, "early_stop": rule}, context(answers=("7",)))
    [settle] = [e for e in events if e.node == "settle"]
    assert result.answer == "7"
    assert result.spend.generations == 4  # one round of max(1, 16/4)
    assert settle.detail["stop"] and settle.detail["reason"] == "settled"
    assert settle.detail["saved"] == 12 and settle.detail["spent"] == 4


def test_revisions_stop_between_rounds_when_the_chains_agree() -> None:
    result, events = run("revisions", {"budget": 16, "early_stop": "posterior"}, context(answers=("7",)))
    assert result.answer == "7"
    assert result.spend.generations < 16
    assert [e.node for e in events].count("revise") < 3


def test_particles_stop_once_the_finished_ones_agree() -> None:
    full, _ = run("particle_filtering", {"budget": 8, "max_rounds": 12}, context(answers=("7",)))
    early, events = run(
        "particle_filtering", {"budget": 8, "max_rounds": 12, "early_stop": "posterior"}, context(answers=("7",))
    )
    assert early.answer == full.answer == "7"
    assert early.spend.proposer_tokens < full.spend.proposer_tokens
    assert events[-2].node == "settle" and events[-2].detail["reason"] == "settled"


def test_the_settle_step_records_why_and_what_it_saved() -> None:
    _, events = run("best_of_n_weighted", {"budget": 8, "early_stop": "posterior", "early_stop_round": 2}, context())
    settles = [e for e in events if e.node == "settle"]
    assert settles and all(not e.detail["stop"] for e in settles[:-1]) and settles[-1].detail["stop"]
    for event in settles:
        assert {"rule", "threshold", "posterior", "votes", "samples", "spent", "saved", "reason"} <= set(event.detail)
        assert event.detail["saved"] == 8 - event.detail["spent"]


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(EARLY),
    budget=st.integers(1, 24),
    rule=st.sampled_from(["posterior", "confidence"]),
    threshold=st.floats(0.05, 0.99),
    keep=st.floats(0.05, 0.95),
    round_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 1000),
)
def test_spend_never_exceeds_the_budget(name, budget, rule, threshold, keep, round_share, seed) -> None:
    values = {
        "budget": budget,
        "early_stop": rule,
        "early_stop_threshold": threshold,
        "early_stop_keep": keep,
        "early_stop_round": max(1, round(round_share * budget)),
    }
    if name == "revisions":
        values["chains"] = 1
    result, events = run(name, values, context(seed=seed))
    assert result.spend.generations <= budget
    assert sum(e.spend.generations for e in events) == result.spend.generations
    assert any(e.node == "settle" for e in events)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"early_stop_threshold": 1.5}, "early_stop_threshold"),
        ({"early_stop_threshold": 0}, "early_stop_threshold"),
        ({"early_stop_round": 0}, "early_stop_round"),
        ({"early_stop_round": 17}, "early_stop_round"),
        ({"early_stop_keep": 1.0}, "early_stop_keep"),
        ({"early_stop": "sometimes"}, "early_stop"),
    ],
)
@pytest.mark.parametrize("name", EARLY)
def test_bad_early_stop_settings_are_refused_naming_the_field(name: str, values: dict[str, Any], field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        registry.get(name).configure({"budget": 16, **SIZED.get(name, {}), **values})


@pytest.mark.parametrize("assignment", ["early_stop_threshold=1.5", "early_stop_round=99", "early_stop=maybe"])
def test_the_cli_refuses_bad_early_stop_settings_in_one_line(tmp_path, assignment: str) -> None:
    database = f"sqlite:///{tmp_path / 'ttc.db'}"
    result = CliRunner().invoke(
        app, ["solve", "Compute (12 + 5) * 2 - 3.", "-s", "majority", "-n", "4", "--set", assignment, "--db", database]
    )
    dispose()
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and assignment.split("=")[0] in line


def test_a_testbed_solve_with_early_stopping_traces_the_settle_step(tmp_path) -> None:
    database = f"sqlite:///{tmp_path / 'ttc.db'}"
    outcome = solve_question(
        "Compute (12 + 5) * 2 - 3.",
        strategy="best_of_n_weighted",
        values={"budget": 8, "early_stop": "posterior", "early_stop_round": 2},
        models=ModelSettings(seed=3),
        database=database,
        reference="31",
    )
    with connect(database)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
    dispose()
    settles = [step for step in trace.steps if step.node == "settle"]
    assert settles and settles[-1].detail["stop"]
    assert outcome.spend.generations == settles[-1].detail["spent"] <= 8


def test_in_rounds_adds_the_settle_edge_to_a_users_steps() -> None:
    def mark(state: SolveState, runtime: Any) -> dict[str, Any]:
        return {"detail": {"marked": len(state["pool"])}}

    settings = MajoritySettings(budget=8, early_stop="posterior")
    steps = majority.steps(settings)
    steps.insert(1, ("mark", mark))
    graph = in_rounds("marked_majority", steps, settings)
    edges = {(e.source, e.target) for e in graph.get_graph().edges}
    assert {("propose", "mark"), ("mark", "settle"), ("settle", "propose"), ("settle", "select")} <= edges
    result = run_graph(graph, "q", context(answers=("4",)))
    assert result.answer == "4" and result.spend.generations == 4  # 2 agreeing: P = 0.875; 4: 0.97


def test_the_posterior_is_the_beta_tail_for_one_group_and_seeded() -> None:
    # One group of v votes beside the unseen group: Beta(v + 1, 1), P(share > 1/2) = 1 − 2^−(v+1).
    assert leader_probability([4.0], seed=1) == pytest.approx(1 - 2**-5, abs=0.015)
    assert leader_probability([3.0, 3.0], seed=2) < 0.6
    assert leader_probability([5.0, 1.0], seed=9) == leader_probability([5.0, 1.0], seed=9)


def test_confidence_drops_the_least_confident_samples_before_the_consensus() -> None:
    def sample(key: str, answer: str, logprob: float) -> Candidate:
        return Candidate(key, None, (), "", 1, "answer", True, answer, logprob=logprob, tokens=10)

    samples = [sample("a", "1", -1), sample("b", "1", -1), sample("c", "1", -1), sample("d", "2", -30)]
    decision = settle_decision(samples, rule="confidence", threshold=0.9, keep=0.7, weighting="count", seed=0)
    assert decision["settled"] and decision["kept"] == 3 and decision["consensus"] == 1.0


def test_the_early_stopping_plans_are_in_the_grid_and_valid() -> None:
    grid = plan_grid(["majority early_stop=posterior", "best_of_n_weighted early_stop=confidence"])
    assert grid["majority early_stop=posterior"].settings == {"early_stop": "posterior"}
    assert all(valid_at(plan, 16) for plan in grid.values())
