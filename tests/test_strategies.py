"""Every strategy end to end through real (tiny, random-weight) transformers models, traced into
SQLite and PostgreSQL, with the stored trace checked against the algorithm."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from db import queries
from db.session import connect
from flows.config import ModelSettings
from flows.solving import solve_question
from graphs import registry
from ttc_nodes.answers import group_answers, same_answer
from ttc_nodes.engines import load_proposer
from ttc_nodes.prompts import DEFAULT_FORMAT

SMALL = {
    "majority": {"budget": 4, "max_answer_tokens": 24},
    "best_of_n": {"budget": 4, "max_answer_tokens": 24},
    "best_of_n_weighted": {"budget": 4, "max_answer_tokens": 24},
    "beam": {"budget": 8, "beam_width": 2, "max_step_tokens": 6, "max_rounds": 4},
    "lookahead": {"budget": 8, "lookahead": 1, "beam_width": 2, "max_step_tokens": 6, "max_rounds": 3},
    "dvts": {"budget": 8, "beam_width": 2, "max_step_tokens": 6, "max_rounds": 4},
    "revisions": {"budget": 6, "chains": 1, "max_answer_tokens": 16},
    "particle_filtering": {"budget": 4, "max_step_tokens": 6, "max_rounds": 4},
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


def test_beam_tree_rebuilt_from_rows_matches_every_engine_call(models, database_url, monkeypatch):
    engine = load_proposer(models.proposer)
    calls: list[tuple[str, str]] = []
    original = engine.generate

    def recording(prompts, n, **kwargs):
        results = original(prompts, n, **kwargs)
        for prompt, completions in zip(prompts, results, strict=True):
            calls.extend((prompt, c.text.strip()) for c in completions)
        return results

    monkeypatch.setattr(engine, "generate", recording)
    _, trace, tree, paths = solve("beam", models, database_url, temperature=1.2)
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
