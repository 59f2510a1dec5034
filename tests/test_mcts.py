"""Monte-Carlo tree search: the budget, the visit counts, the trace, the final answer rule and PUCT,
as properties on scripted engines (hundreds of searches in seconds), then end to end through the
testbed models, the database and the CLI."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from db import queries
from db.session import connect
from flows.cli import app
from flows.cli.render import search_statistics
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from graphs import registry
from graphs.registry import SettingsError
from graphs.runner import run_graph
from graphs.settings import MCTSSettings
from tests.scripted import ScriptedProposer, ScriptedVerifier
from tests.test_strategies import Recorded, weighted_totals
from ttc_nodes.mcts import ROOT, children_of, exhausted, select_leaf
from ttc_nodes.state import Candidate, SolveContext


def run_mcts(values: dict, finish_rate: float = 0.3, seed: int = 0):
    settings = registry.get("mcts").configure(values)
    proposer = ScriptedProposer(finish_rate=finish_rate)
    context = SolveContext(proposer=proposer, verifier=ScriptedVerifier(), seed=seed)
    sink = Recorded()
    result = run_graph(registry.compile_graph("mcts", settings), "q?", context, sink)
    return settings, result, sink, proposer


SEARCHES = st.fixed_dictionaries(
    {
        "budget": st.sampled_from([1, 2, 3, 4, 8, 16, 32]),
        "expansions": st.integers(1, 8),
        "c_puct": st.floats(0.05, 4.0),
        "prior": st.sampled_from(["logprob", "uniform"]),
        "rollout": st.booleans(),
        "final": st.sampled_from(["most_visited", "weighted_vote"]),
        "max_iterations": st.integers(1, 60),
        "parallel": st.sampled_from([1, 1, 2, 3, 8]),
    }
)


def configured(values: dict) -> dict:
    try:
        return registry.get("mcts").configure(values).model_dump()
    except SettingsError:
        assume(False)
        raise


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEARCHES, st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_mcts_never_spends_more_than_its_budget_and_spends_its_tree_leaves(values, finish_rate, seed):
    settings, result, _, proposer = run_mcts(configured(values), finish_rate, seed)
    tree = result.state["tree"]
    leaves = len(tree) - len({c.parent for c in tree.values() if c.parent is not None})
    reserve = settings.expansions * settings.parallel if settings.rollout else 0
    assert 0 < result.spend.generations <= settings.budget
    # a lane per leaf of the tree, plus the k rollout lanes reused every round
    assert result.spend.generations == leaves + reserve
    sampled = [(len(prompts), n) for prompts, n, temperature in proposer.calls if temperature > 0]
    # one call per iteration: at most P leaves, at most k steps each (uneven counts go one row per sample)
    assert all(n <= settings.expansions and rows * n <= settings.parallel * settings.expansions for rows, n in sampled)
    rollouts = [len(prompts) for prompts, n, temperature in proposer.calls if temperature == 0]
    assert max(rollouts, default=0) <= reserve


@hypothesis_settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEARCHES, st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_a_nodes_visits_are_one_plus_its_childrens_and_its_value_the_mean_below_it(values, finish_rate, seed):
    _, result, sink, _ = run_mcts(configured(values), finish_rate, seed)
    tree, visits, sums = result.state["tree"], result.state["visits"], result.state["value_sums"]
    own: dict[str, float] = {}  # each node's one evaluation, as the evaluate steps recorded it
    for event in sink.events:
        if event.node == "evaluate":
            own |= event.detail["values"]
    assert set(visits) == {ROOT, *tree} == set(own) | {ROOT}
    for key in visits:
        children = children_of(tree, key)
        mine = 0 if key == ROOT else 1
        assert visits[key] == mine + sum(visits[c.key] for c in children)
        below = (0.0 if key == ROOT else own[key]) + sum(sums[c.key] for c in children)
        assert sums[key] == pytest.approx(below)
    assert visits[ROOT] == len(tree)
    # the select step's table is the state's, as the trace shows it
    final = next(e for e in sink.events if e.node == "select").detail
    assert final["visits"] == visits
    assert final["values"] == pytest.approx({k: sums[k] / visits[k] for k in visits})


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEARCHES, st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_a_batched_iteration_expands_distinct_live_leaves_in_one_proposer_call(values, finish_rate, seed):
    values = configured({**values, "parallel": max(2, values["parallel"]), "rollout": False})
    settings, result, sink, proposer = run_mcts(values, finish_rate, seed)
    picks = [e.detail for e in sink.events if e.node == "select_leaf"]
    expansions = [e.detail for e in sink.events if e.node == "expand"]
    sampling_calls = [call for call in proposer.calls if call[2] > 0]
    assert len(sampling_calls) == len(expansions) == len(picks) == result.state["iterations"]
    tree = result.state["tree"]
    for pick in picks:
        leaves = pick.get("leaves", [pick["selected"]])
        assert len(leaves) == len(set(leaves)) <= settings.parallel
        for leaf, path in zip(leaves, pick.get("paths", [pick["path"]]), strict=True):
            assert path[0] == ROOT and path[-1] == leaf
            assert all((tree[b].parent or ROOT) == a for a, b in itertools.pairwise(path))
    # every leaf picked got children, and the children's parents are exactly the picked leaves
    for pick, expanded in zip(picks, expansions, strict=True):
        leaves = pick.get("leaves", [pick["selected"]])
        assert expanded.get("leaves", [expanded["expanded"]]) == leaves


def test_one_leaf_per_iteration_is_the_search_without_the_setting():
    values = {"budget": 16, "expansions": 3, "max_iterations": 40}
    _, plain, plain_sink, _ = run_mcts(values, 0.3, 7)
    _, one, one_sink, _ = run_mcts({**values, "parallel": 1}, 0.3, 7)
    assert one.state["tree"] == plain.state["tree"] and one.state["visits"] == plain.state["visits"]
    assert [e.detail for e in one_sink.events] == [e.detail for e in plain_sink.events]
    _, batched, _, _ = run_mcts({**values, "parallel": 4}, 0.3, 7)
    assert batched.spend.generations <= 16
    assert batched.state["iterations"] < one.state["iterations"]  # fewer, wider iterations


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SEARCHES, st.floats(0.1, 1.0), st.integers(0, 10_000))
def test_the_final_answer_rule_does_what_it_says(values, finish_rate, seed):
    values = configured(values)
    _, visited, _, _ = run_mcts({**values, "final": "most_visited"}, finish_rate, seed)
    _, voted, _, _ = run_mcts({**values, "final": "weighted_vote"}, finish_rate, seed)
    tree, visits = visited.state["tree"], visited.state["visits"]
    assert voted.state["tree"] == tree  # the rule does not steer the search
    leaves = [c for c in tree.values() if c.finished]
    totals = weighted_totals(leaves)
    assert voted.votes == pytest.approx(totals)
    if totals:
        assert totals[voted.answer] == pytest.approx(max(totals.values()))
    # brute force: among root-to-answer paths, descend by the most visits
    answered_below = {k for k, c in tree.items() if c.finished and c.answer is not None}
    for key in sorted(tree, key=lambda k: -tree[k].depth):
        if any(c.key in answered_below for c in children_of(tree, key)):
            answered_below.add(key)
    key, chosen = ROOT, None
    while chosen is None:
        options = [c for c in children_of(tree, key) if c.key in answered_below]
        if not options:
            break
        top = max(visits[c.key] for c in options)
        best = next(c for c in options if visits[c.key] == top)
        key, chosen = best.key, (best if best.finished else None)
    assert visited.chosen == (chosen.key if chosen else None)
    assert visited.answer == (chosen.answer if chosen else None)


def random_tree(rng: random.Random, nodes: int) -> tuple[dict[str, Candidate], dict[str, int], dict[str, float]]:
    tree: dict[str, Candidate] = {}
    for index in range(nodes):
        parents = [None, *(k for k, c in tree.items() if not c.finished)]
        parent = rng.choice(parents)
        key = f"{index}.0"
        steps = (*(tree[parent].steps if parent else ()), key)
        finished = rng.random() < 0.2
        tree[key] = Candidate(key, parent, steps, key, index, "step", finished, "1" if finished else None)
    visits: dict[str, int] = {}
    sums: dict[str, float] = {}

    def fill(key: str) -> None:
        for child in children_of(tree, key):
            fill(child.key)
        below = children_of(tree, key)
        visits[key] = (key != ROOT) + sum(visits[c.key] for c in below)
        sums[key] = (rng.random() if key != ROOT else 0.0) + sum(sums[c.key] for c in below)

    fill(ROOT)
    return tree, visits, sums


def uct_walk(tree, visits, sums, c: float) -> str:
    """UCT, written out: Q + (c/m)·√N(parent)/(1 + N(child)) over the m siblings, first child on ties."""
    key = ROOT
    while siblings := children_of(tree, key):
        m = len(siblings)
        options = [s for s in siblings if not exhausted(tree, s.key)]
        scores = [sums[s.key] / visits[s.key] + c / m * math.sqrt(visits[key]) / (1 + visits[s.key]) for s in options]
        key = options[scores.index(max(scores))].key
    return key


class Runtime:
    context = None


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 30), st.floats(0.05, 5.0), st.floats(-5.0, 0.0))
def test_puct_with_a_uniform_prior_is_uct(seed, nodes, c_puct, logprob):
    rng = random.Random(seed)
    tree, visits, sums = random_tree(rng, nodes)
    assume(not exhausted(tree, ROOT))
    state = {"tree": tree, "visits": visits, "value_sums": sums}
    uniform = select_leaf(state, Runtime(), c_puct=c_puct, prior="uniform")["selected"]  # type: ignore[arg-type]
    assert uniform == uct_walk(tree, visits, sums, c_puct)
    # equal step log-probabilities make the logprob prior uniform too
    same = {k: Candidate(**{**c.__dict__, "logprob": logprob}) for k, c in tree.items()}
    state_same = {**state, "tree": same}
    assert select_leaf(state_same, Runtime(), c_puct=c_puct, prior="logprob")["selected"] == uniform  # type: ignore[arg-type]
    # and the uniform prior ignores the log-probabilities
    skewed = {k: Candidate(**{**c.__dict__, "logprob": -rng.random() * 10}) for k, c in tree.items()}
    state_skewed = {**state, "tree": skewed}
    assert select_leaf(state_skewed, Runtime(), c_puct=c_puct, prior="uniform")["selected"] == uniform  # type: ignore[arg-type]


def test_a_higher_step_prior_is_explored_first():
    tree = {
        "1.0": Candidate("1.0", None, ("a",), "a", 1, "step", False, None, logprob=-5.0),
        "1.1": Candidate("1.1", None, ("b",), "b", 1, "step", False, None, logprob=-0.1),
    }
    state = {"tree": tree, "visits": {ROOT: 2, "1.0": 1, "1.1": 1}, "value_sums": {ROOT: 1.0, "1.0": 0.5, "1.1": 0.5}}
    assert select_leaf(state, Runtime(), c_puct=1.0, prior="logprob")["selected"] == "1.1"  # type: ignore[arg-type]
    assert select_leaf(state, Runtime(), c_puct=1.0, prior="uniform")["selected"] == "1.0"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"c_puct": 0}, "c_puct"),
        ({"c_puct": -1}, "c_puct"),
        ({"expansions": 0}, "expansions"),
        ({"budget": 4, "expansions": 5}, "expansions"),
        ({"budget": 8, "expansions": 5, "rollout": True}, "expansions"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"prior": "flat"}, "prior"),
        ({"final": "best"}, "final"),
    ],
)
def test_bad_settings_fail_naming_the_field(values, field):
    with pytest.raises(SettingsError, match=field):
        registry.get("mcts").configure(values)


def test_default_expansions_fit_small_budgets():
    def default_k(**values: object) -> int | None:
        return MCTSSettings(**values).expansions  # type: ignore[arg-type]

    assert (default_k(budget=2), default_k(budget=3, rollout=True), default_k(budget=64)) == (2, 1, 4)


QUESTION = "Compute (12 + 5) * 2 - 3."


@pytest.mark.parametrize("rollout", [False, True])
def test_the_tree_rebuilt_from_the_database_is_the_one_in_memory(rollout, database_url):
    sink = Recorded()
    values = {"budget": 8, "expansions": 3 if not rollout else 2, "rollout": rollout, "max_iterations": 12}
    outcome = solve_question(
        QUESTION,
        strategy="mcts",
        values=values,
        models=ModelSettings(),
        database=database_url,
        reference="31",
        progress=sink,
    )
    with connect(database_url)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
        forest = queries.candidate_tree(session, trace.id)
    rebuilt: dict[str, tuple] = {}

    def walk(nodes, parent):
        for node in nodes:
            rebuilt[node.key] = (parent, node.text, node.kind, node.finished, node.answer, round(node.score, 6))
            walk(node.children, node.key)

    walk(forest, None)
    in_memory = {
        k: (c.parent, c.text, c.kind, c.finished, c.answer, round(c.score, 6)) for k, c in sink.candidates.items()
    }
    assert rebuilt == in_memory
    assert trace.status == "done" and 0 < trace.generations <= 8
    assert any(c.kind == "rollout" for c in trace.candidates) == rollout
    # what `ttc trace` shows: every step node with its final visits, adding up as the backup promises
    stats = search_statistics(trace)
    steps = {k: c for k, c in sink.candidates.items() if c.kind == "step"}
    assert set(stats) == {ROOT, *steps}
    children: dict[str, list[str]] = defaultdict(list)
    for key, c in steps.items():
        children[c.parent or ROOT].append(key)
    for key, (visits, _) in stats.items():
        assert visits == (key != ROOT) + sum(stats[k][0] for k in children[key])


def test_ttc_trace_shows_visits_and_values(tmp_path):
    database = f"sqlite:///{tmp_path / 'ttc.db'}"
    runner = CliRunner()
    solved = runner.invoke(
        app, ["solve", QUESTION, "-s", "mcts", "-n", "4", "--run-name", "m", "--db", database, "--json"]
    )
    assert solved.exit_code == 0, solved.output
    shown = runner.invoke(app, ["trace", "m", "--db", database])
    assert shown.exit_code == 0, shown.output
    assert " n=" in shown.output and " v=0." in shown.output


@pytest.mark.parametrize(
    ("setting", "field"), [("c_puct=0", "c_puct"), ("expansions=0", "expansions"), ("expansions=17", "expansions")]
)
def test_ttc_solve_refuses_bad_mcts_settings_in_one_line(setting, field, tmp_path):
    result = CliRunner().invoke(
        app, ["solve", QUESTION, "-s", "mcts", "--set", setting, "--db", f"sqlite:///{tmp_path / 'ttc.db'}"]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0]
