"""Every strategy end to end through real (tiny, random-weight) transformers models, traced into
SQLite and PostgreSQL, with the stored trace checked against the algorithm."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from db import queries
from db.session import connect
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from graphs import registry
from graphs.registry import SettingsError
from graphs.runner import run_graph
from tests.scripted import ScriptedProposer, ScriptedVerifier
from ttc_nodes.answers import group_answers, same_answer
from ttc_nodes.engines import load_proposer
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.state import SolveContext

SMALL = {
    "majority": {"budget": 4, "max_answer_tokens": 24},
    "best_of_n": {"budget": 4, "max_answer_tokens": 24},
    "best_of_n_weighted": {"budget": 4, "max_answer_tokens": 24},
    "beam": {"budget": 8, "beam_width": 2, "max_step_tokens": 6, "max_rounds": 4},
    "lookahead": {"budget": 8, "lookahead": 1, "beam_width": 2, "max_step_tokens": 6, "max_rounds": 3},
    "dvts": {"budget": 8, "beam_width": 2, "max_step_tokens": 6, "max_rounds": 4},
    "revisions": {"budget": 6, "chains": 1, "max_answer_tokens": 16},
    "particle_filtering": {"budget": 4, "max_step_tokens": 6, "max_rounds": 4},
    "mcts": {"budget": 8, "expansions": 3, "max_step_tokens": 6, "max_iterations": 10},
}


@pytest.fixture
def models(tiny_lm, tiny_prm) -> ModelSettings:
    return ModelSettings(proposer=f"hf:{tiny_lm}", verifier=f"hf:{tiny_prm}", reviser=f"hf:{tiny_lm}", seed=7)


def solve(strategy: str, models: ModelSettings, database_url: str, **overrides):
    outcome = solve_question(
        "What is 1+2?",
        strategy=strategy,
        values={**SMALL[strategy], **overrides},
        models=models,
        database=database_url,
        reference="3",
    )
    with connect(database_url)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
        tree = queries.candidate_tree(session, trace.id)
        paths = queries.paths(session, trace.id)
    return outcome, trace, tree, paths


def latest_scores(trace) -> dict[str, float]:
    return {score.candidate_key: score.value for score in sorted(trace.scores, key=lambda s: s.id)}


def test_registry_has_every_strategy_of_the_cli_contract():
    assert set(SMALL) <= set(registry.names())


@pytest.mark.parametrize("strategy", sorted(SMALL))
def test_strategy_solves_within_budget_and_trace_matches_the_outcome(strategy, models, database_url):
    outcome, trace, _, _ = solve(strategy, models, database_url)
    budget = SMALL[strategy]["budget"]
    assert trace.status == "done" and trace.error is None
    assert 0 < outcome.spend.generations <= budget
    assert (trace.answer, trace.generations, trace.tokens) == (
        outcome.answer,
        outcome.spend.generations,
        outcome.spend.tokens,
    )
    assert trace.flops == pytest.approx(outcome.spend.flops)
    assert sum(s.generations for s in trace.steps) == trace.generations
    assert sum(s.tokens for s in trace.steps) == trace.tokens
    assert [s.seq for s in trace.steps] == list(range(len(trace.steps)))
    assert trace.steps[-1].node == "select"
    assert trace.correct == (outcome.answer is not None and same_answer(outcome.answer, "3"))


@pytest.mark.parametrize("strategy", ["best_of_n_weighted", "beam", "dvts", "particle_filtering"])
def test_weighted_vote_in_the_database_equals_a_brute_force_recount(strategy, models, database_url):
    _outcome, trace, _, _ = solve(strategy, models, database_url, temperature=1.5)
    scores = latest_scores(trace)
    source = {"best_of_n_weighted": {"answer"}}.get(strategy, {"step"})
    voters = [c for c in trace.candidates if c.kind in source and c.finished and c.answer is not None]
    if strategy != "best_of_n_weighted":
        select_step = next(s for s in trace.steps if s.node == "select")
        assert select_step.detail["candidates"] >= len({c for c in select_step.detail["votes"]})
    groups = group_answers([c.answer for c in voters])
    totals: dict[int, float] = defaultdict(float)
    for voter, group in zip(voters, groups, strict=True):
        totals[group] += scores[voter.key]
    stored = trace.detail["votes"]
    if strategy == "best_of_n_weighted":
        assert sorted(stored.values()) == pytest.approx(sorted(totals.values()))
    if totals:
        winner = max(totals.values())
        assert stored[trace.answer] == pytest.approx(max(stored.values()))
        assert trace.answer is not None and max(stored.values()) <= winner + 1e-9
    else:
        assert trace.answer is None


def test_beam_search_keeps_top_n_over_m_prefixes_and_expands_each_m_times(models, database_url):
    n, m = 8, 2
    _, trace, _, _ = solve("beam", models, database_url, temperature=1.2, max_rounds=5)
    scores = latest_scores(trace)
    by_round: dict[int, list] = defaultdict(list)
    for c in trace.candidates:
        by_round[c.round].append(c)
    assert len(by_round[1]) == n and all(c.parent_key is None for c in by_round[1])
    finished = sum(c.finished for c in by_round[1])
    for r in sorted(by_round)[1:]:
        children = Counter(c.parent_key for c in by_round[r])
        previous_live = sorted((c for c in by_round[r - 1] if not c.finished), key=lambda c: -scores[c.key])
        assert len(children) <= n // m
        assert all(count <= m for count in children.values())
        assert sum(children.values()) <= n - finished
        # the kept prefixes are exactly the best-scored live candidates of the round before
        top = {c.key for c in previous_live[: len(children)]}
        assert set(children) == top or sorted(scores[k] for k in children) == sorted(scores[k] for k in top)
        finished += sum(c.finished for c in by_round[r])


@pytest.mark.parametrize("strategy", ["beam", "mcts"])
def test_search_tree_rebuilt_from_rows_matches_every_engine_call(strategy, models, database_url, monkeypatch):
    engine = load_proposer(models.proposer)
    calls: list[tuple[str, str]] = []
    original = engine.generate

    def recording(prompts, n, **kwargs):
        results = original(prompts, n, **kwargs)
        for prompt, completions in zip(prompts, results, strict=True):
            calls.extend((prompt, c.text.strip()) for c in completions)
        return results

    monkeypatch.setattr(engine, "generate", recording)
    _, trace, tree, paths = solve(strategy, models, database_url, temperature=1.2)
    rebuilt = Counter((DEFAULT_FORMAT.solution(trace.problem.question, path[:-1]), path[-1]) for path in paths.values())
    assert rebuilt == Counter(calls)

    def count(nodes) -> int:
        return sum(1 + count(node.children) for node in nodes)

    assert count(tree) == len(trace.candidates) == len(paths)


def test_lookahead_rollouts_are_children_of_the_candidates_they_score(models, database_url):
    _, trace, _, paths = solve("lookahead", models, database_url)
    by_key = {c.key: c for c in trace.candidates}
    rollouts = [c for c in trace.candidates if c.kind == "rollout"]
    assert rollouts
    for rollout in rollouts:
        parent = by_key[rollout.parent_key]
        assert parent.kind == "step"
        assert paths[rollout.key][: len(paths[parent.key])] == paths[parent.key]
        assert 1 <= len(paths[rollout.key]) - len(paths[parent.key]) <= 1  # k = 1


def test_revision_chains_link_each_answer_to_the_one_before_and_show_at_most_four(models, database_url, monkeypatch):
    engine = load_proposer(models.reviser or "")
    prompts_seen: list[str] = []
    original = engine.generate

    def recording(prompts, n, **kwargs):
        prompts_seen.extend(prompts)
        return original(prompts, n, **kwargs)

    monkeypatch.setattr(engine, "generate", recording)
    _, _trace, tree, _ = solve("revisions", models, database_url)
    assert len(tree) == 1
    node, length = tree[0], 1
    while node.children:
        [node] = node.children
        length += 1
    assert length == 6
    revision_prompts = [p for p in prompts_seen if "Revised solution" in p]
    assert len(revision_prompts) == 5
    assert [p.count("Attempt ") for p in revision_prompts] == [1, 2, 3, 4, 4]


def test_particle_filtering_records_the_effective_sample_size_each_round(models, database_url):
    _, trace, _, _ = solve("particle_filtering", models, database_url)
    resamples = [s for s in trace.steps if s.node == "resample"]
    assert resamples
    assert all(1.0 - 1e-6 <= s.detail["ess"] <= 4 + 1e-6 for s in resamples)


def test_a_failing_node_is_traced_and_earlier_steps_are_kept(models, database_url, monkeypatch):
    from graphs.runner import SolveError
    from ttc_nodes.engines import load_verifier

    verifier = load_verifier(models.verifier)

    def broken(question, solutions):
        raise RuntimeError("PRM exploded")

    monkeypatch.setattr(verifier, "score", broken)
    with pytest.raises(SolveError, match="PRM exploded"):
        solve_question(
            "What is 1+2?",
            strategy="beam",
            values=SMALL["beam"],
            models=models,
            database=database_url,
            run_name="broken",
        )
    with connect(database_url)() as session:
        run = queries.find_run(session, "broken")
        [trace] = queries.trace_of(session, run.id)
        failed = queries.failed_steps(session, run.id)
    assert trace.status == "failed" and "PRM exploded" in (trace.error or "")
    assert next(s.node for s in trace.steps) == "expand" and len(trace.candidates) == 8
    assert [f.node for f in failed] == ["verify"]


# The three choices users compare with the open reproductions (refill, final votes): properties on
# scripted engines, where thousands of searches run in seconds, then each end to end through the database.


class Recorded:
    """A trace sink keeping every step event and the latest version of every candidate."""

    def __init__(self) -> None:
        self.events: list = []
        self.candidates: dict = {}

    def step(self, event) -> None:
        self.events.append(event)
        for candidate in [*event.new, *event.scored]:
            self.candidates[candidate.key] = candidate

    def expanded(self) -> dict[int, list]:
        """Step candidates by the round that sampled them (latest, scored versions)."""
        rounds: dict[int, list] = defaultdict(list)
        for event in self.events:
            if event.node == "expand":
                for c in event.new:
                    rounds[c.round].append(self.candidates[c.key])
        return rounds


def run_scripted(name: str, values: dict, finish_rate: float, seed: int):
    settings = registry.get(name).configure(values)
    proposer = ScriptedProposer(finish_rate=finish_rate)
    context = SolveContext(proposer=proposer, verifier=ScriptedVerifier(), seed=seed)
    sink = Recorded()
    return settings, run_graph(registry.compile_graph(name, settings), "q?", context, sink), sink, proposer


def weighted_totals(voters) -> dict[str, float]:
    """Brute-force best-of-N weighted: the scripted answers are canonical, so equal strings group."""
    totals: dict[str, float] = defaultdict(float)
    for voter in voters:
        if voter.answer is not None:
            totals[voter.answer] += voter.score
    return dict(totals)


def assert_wins(result, totals: dict[str, float]) -> None:
    assert result.votes == pytest.approx(totals)
    if totals:
        assert totals[result.answer] == pytest.approx(max(totals.values()))
    else:
        assert result.answer is None


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([("beam", 8, 2, 0), ("beam", 16, 4, 0), ("beam", 16, 2, 0), ("lookahead", 16, 2, 1)]),
    st.floats(0.05, 0.9),
    st.integers(0, 10_000),
    st.integers(1, 12),
)
def test_refill_keeps_n_live_lanes_each_round_while_prefixes_remain_and_never_exceeds_the_budget(
    shape, finish_rate, seed, max_rounds
):
    name, budget, width, k = shape
    values = {"budget": budget, "beam_width": width, "max_rounds": max_rounds, "refill": True}
    settings, result, sink, proposer = run_scripted(name, {**values, "lookahead": k}, finish_rate, seed)
    n = settings.beams
    rounds = sink.expanded()
    assert all(len(rounds[r]) == n for r in rounds)  # every round runs all N lanes
    answers = 0
    for r in sorted(rounds):
        answers += sum(c.finished for c in rounds[r])
        live = [c for c in rounds[r] if not c.finished]
        if r < max(rounds):  # it went on only while answers were missing and prefixes were live
            assert answers < n and live and r < max_rounds
        else:
            assert answers >= n or not live or r == max_rounds
    assert len(result.state["finished"]) <= n  # the paper's N final answer candidates, at most
    sampled = [len(prompts) * count for prompts, count, temperature in proposer.calls if temperature > 0]
    assert max(sampled) == n
    assert result.spend.generations == n * (k + 1) <= budget


# Fixed-seed outcomes of the default (shrinking) beam search, DVTS and particle filtering, recorded
# before refill and the final-vote choices were added: the defaults must keep them.
DEFAULTS_BEFORE = [
    (
        "beam",
        {"budget": 16, "beam_width": 4},
        0.3,
        5,
        "1",
        "4.2",
        1383,
        [16, 13, 8, 4, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1],
    ),
    ("beam", {"budget": 8, "beam_width": 2, "max_rounds": 6}, 0.2, 11, "2", "1.2", 675, [8, 6, 5, 5, 5, 5]),
    ("lookahead", {"budget": 16, "beam_width": 2}, 0.3, 2, "2", "8.2", 1753, [8, 5, 4, 4, 4, 3, 3, 3, 2, 2, 1, 1]),
    ("dvts", {"budget": 16, "beam_width": 4}, 0.3, 4, "3", "4.2", 914, [16, 12, 12, 8, 4]),
    ("particle_filtering", {"budget": 8}, 0.3, 9, "3", "2.3", 250, [8, 6, 3]),
]


@pytest.mark.parametrize(("name", "values", "rate", "seed", "answer", "chosen", "tokens", "lanes"), DEFAULTS_BEFORE)
def test_default_choices_keep_the_search_they_ran_before(name, values, rate, seed, answer, chosen, tokens, lanes):
    settings, result, sink, _ = run_scripted(name, values, rate, seed)
    rounds = sink.expanded()
    assert [len(rounds[r]) for r in sorted(rounds)] == lanes
    assert (result.answer, result.chosen, result.spend.tokens) == (answer, chosen, tokens)
    assert result.spend.generations == settings.budget


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(8, 2), (16, 4), (16, 2), (9, 3)]), st.floats(0.05, 0.9), st.integers(0, 10_000))
def test_shrinking_beams_run_n_minus_finished_lanes(shape, finish_rate, seed):
    budget, width = shape
    _, result, sink, _ = run_scripted("beam", {"budget": budget, "beam_width": width}, finish_rate, seed)
    rounds = sink.expanded()
    finished = 0
    for r in sorted(rounds):
        assert len(rounds[r]) <= budget - finished
        finished += sum(c.finished for c in rounds[r])
    assert len(result.state["finished"]) <= budget and result.spend.generations == budget


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([4, 8, 16]), st.floats(0.05, 0.9), st.integers(0, 10_000), st.integers(1, 10))
def test_particle_vote_by_multiplicity_equals_a_count_over_the_final_particles(budget, finish_rate, seed, max_rounds):
    values = {"budget": budget, "max_rounds": max_rounds}
    runs = {
        vote: run_scripted("particle_filtering", {**values, "final_vote": vote}, finish_rate, seed)
        for vote in ("unique", "multiplicity")
    }
    _, unique, sink, _ = runs["unique"]
    _, counted, counted_sink, _ = runs["multiplicity"]
    [last] = [e for e in sink.events if e.node == "resample"][-1:]
    copies = Counter(last.detail["drawn"])
    assert [e.detail for e in counted_sink.events if e.node == "resample"][-1]["drawn"] == last.detail["drawn"]
    assert sum(copies.values()) == budget
    particles = sink.candidates
    assert_wins(counted, weighted_totals(particles[key] for key, count in copies.items() for _ in range(count)))
    assert_wins(unique, weighted_totals(particles[key] for key in copies))
    assert max(unique.spend.generations, counted.spend.generations) <= budget


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([(8, 2), (16, 4), (16, 2), (9, 3)]), st.floats(0.05, 0.9), st.integers(0, 10_000))
def test_dvts_all_leaves_vote_equals_a_weighted_vote_over_every_leaf(shape, finish_rate, seed):
    budget, width = shape
    values = {"budget": budget, "beam_width": width, "max_rounds": 8}
    _, winners, sink, _ = run_scripted("dvts", {**values, "final_vote": "subtree_winners"}, finish_rate, seed)
    _, leaves, leaves_sink, _ = run_scripted("dvts", {**values, "final_vote": "all_leaves"}, finish_rate, seed)
    assert sorted(leaves_sink.candidates) == sorted(sink.candidates)  # the vote does not steer the search
    by_subtree: dict[int, list] = defaultdict(list)
    for candidates in sink.expanded().values():
        for c in candidates:
            by_subtree[c.lineage].append(c)
    last_expansions = [
        [c for c in members if c.round == max(m.round for m in members)] for members in by_subtree.values()
    ]
    assert len(by_subtree) == budget // width and all(len(leaf_set) == width for leaf_set in last_expansions)
    assert_wins(leaves, weighted_totals(c for leaf_set in last_expansions for c in leaf_set))
    assert_wins(winners, weighted_totals(max(leaf_set, key=lambda c: c.score) for leaf_set in last_expansions))
    assert leaves.spend.generations == winners.spend.generations == budget


CHOICES = [
    ("beam", {"refill": False}),
    ("beam", {"refill": True}),
    ("lookahead", {"refill": False}),
    ("lookahead", {"refill": True}),
    ("dvts", {"final_vote": "subtree_winners"}),
    ("dvts", {"final_vote": "all_leaves"}),
    ("particle_filtering", {"final_vote": "unique"}),
    ("particle_filtering", {"final_vote": "multiplicity"}),
]


@hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(CHOICES),
    st.sampled_from([1, 2, 4, 8, 16, 32]),
    st.sampled_from([1, 2, 4]),
    st.floats(0.0, 1.0),
    st.integers(0, 10_000),
)
def test_every_choice_spends_at_most_its_budget(choice, budget, width, finish_rate, seed):
    name, chosen = choice
    values = {"budget": budget, **chosen, "max_rounds": 10}
    if name != "particle_filtering":
        values["beam_width"] = width
    try:
        settings = registry.get(name).configure(values)
    except SettingsError:
        assume(False)
    _, result, _, proposer = run_scripted(name, settings.model_dump(), finish_rate, seed)
    sampled = [len(prompts) * count for prompts, count, temperature in proposer.calls if temperature > 0]
    assert 0 < result.spend.generations <= budget
    assert max(sampled) * (getattr(settings, "lookahead", 0) + 1) == result.spend.generations


@pytest.mark.parametrize(("strategy", "chosen"), CHOICES[1::2])  # the choices that are not the default
def test_each_choice_solves_within_budget_through_the_database(strategy, chosen, models, database_url):
    outcome, trace, _, _ = solve(strategy, models, database_url, temperature=1.2, **chosen)
    assert trace.status == "done" and trace.error is None
    assert 0 < outcome.spend.generations <= SMALL[strategy]["budget"] == trace.budget
    assert trace.generations == outcome.spend.generations and trace.answer == outcome.answer
    assert trace.steps[-1].node == "select"
