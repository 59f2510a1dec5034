import math
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from ttc_nodes.prune import prune_beams, prune_subtrees, resample_particles
from ttc_nodes.state import Candidate, SolveContext
from ttc_nodes.vote import hierarchical_vote, vote

answers = st.one_of(st.none(), st.sampled_from(["1", "2", "3", "0.5", r"\frac{1}{2}", "2.0"]))
scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def candidate(
    index: int, answer: str | None, score: float | None, finished: bool = True, lineage: int | None = None
) -> Candidate:
    base = Candidate(f"1.{index}", None, ("s",), "s", 1, "answer", finished, answer, lineage=lineage)
    return base if score is None else base.scored([score], score)


def value(answer: str) -> float:
    return 0.5 if answer in ("0.5", r"\frac{1}{2}") else float(answer)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(answers, scores), min_size=1, max_size=24))
def test_weighted_vote_equals_the_brute_force_sum(pairs):
    pool = [candidate(i, a, s) for i, (a, s) in enumerate(pairs)]
    totals: dict[float, float] = {}
    for a, s in pairs:
        if a is not None:
            totals[value(a)] = totals.get(value(a), 0.0) + s
    selection = vote(pool, "weighted")
    if not totals:
        assert selection.answer is None
        return
    assert math.isclose(totals[value(selection.answer)], max(totals.values()), rel_tol=1e-9)
    assert sorted(selection.votes.values()) == sorted(totals.values()) or all(
        math.isclose(a, b) for a, b in zip(sorted(selection.votes.values()), sorted(totals.values()), strict=True)
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(answers, scores), min_size=1, max_size=24))
def test_majority_and_best_of_n_follow_their_definitions(pairs):
    pool = [candidate(i, a, s) for i, (a, s) in enumerate(pairs)]
    answered = [(value(a), s) for a, s in pairs if a is not None]
    majority, best = vote(pool, "majority"), vote(pool, "best_of_n")
    if not answered:
        assert majority.answer is None and best.answer is None
        return
    counts: dict[float, int] = {}
    for v, _ in answered:
        counts[v] = counts.get(v, 0) + 1
    assert counts[value(majority.answer)] == max(counts.values())
    assert max(s for v, s in answered if v == value(best.answer)) == max(s for _, s in answered)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(answers, scores), min_size=1, max_size=6), min_size=1, max_size=5))
def test_hierarchical_vote_is_weighted_within_then_across_chains(chains):
    pools = [
        [candidate(10 * c + i, a, s, lineage=c) for i, (a, s) in enumerate(chain)] for c, chain in enumerate(chains)
    ]
    across: dict[float, float] = {}
    for chain in chains:
        inner: dict[float, float] = {}
        for a, s in chain:
            if a is not None:
                inner[value(a)] = inner.get(value(a), 0.0) + s
        if inner:
            best = max(inner.values())
            winner = next(v for v, total in inner.items() if total == best)
            across[winner] = across.get(winner, 0.0) + best
    selection = hierarchical_vote(pools)
    if not across:
        assert selection.answer is None
    else:
        assert math.isclose(across[value(selection.answer)], max(across.values()), rel_tol=1e-9)


RUNTIME = SimpleNamespace(context=SolveContext(proposer=None, seed=3))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([(4, 2), (8, 2), (16, 4), (16, 2), (9, 3)]),
    st.lists(st.tuples(scores, st.booleans()), min_size=1, max_size=16),
    st.integers(0, 6),
)
def test_beam_pruning_keeps_the_top_n_over_m_live_prefixes_within_budget(shape, pool_spec, already_finished):
    budget, width = shape
    already_finished = min(already_finished, budget - 1)
    # A round never holds more candidates than the lanes left after earlier finished answers.
    room = budget - already_finished
    pool = [candidate(i, "1" if done else None, s, finished=done) for i, (s, done) in enumerate(pool_spec[:room])]
    finished_before = [candidate(100 + i, "2", 0.5) for i in range(already_finished)]
    update = prune_beams(
        {"pool": pool, "finished": finished_before, "round": 1},
        RUNTIME,
        budget=budget,
        beam_width=width,
        max_rounds=40,
    )
    kept, counts = update["pool"], update["expansions"]
    live = sorted((c for c in pool if not c.finished), key=lambda c: -(c.score or 0))
    assert len(kept) <= budget // width
    assert all(1 <= n <= width for n in counts)
    assert len(finished_before) + len([c for c in pool if c.finished]) + sum(counts) <= budget
    assert [c.score for c in kept] == [c.score for c in live[: len(kept)]]
    assert {c.key for c in update["finished"]} >= {c.key for c in pool if c.finished}


def test_beam_pruning_stops_at_the_round_limit_and_ends_live_beams():
    pool = [candidate(i, None, 0.5, finished=False) for i in range(4)]
    update = prune_beams({"pool": pool, "round": 40}, RUNTIME, budget=4, beam_width=2, max_rounds=40)
    assert update["pool"] == [] and len(update["finished"]) == 4


def test_dvts_keeps_the_best_candidate_of_each_subtree():
    pool = [candidate(i, None, s, finished=False, lineage=i // 2) for i, s in enumerate([0.1, 0.9, 0.8, 0.3])]
    update = prune_subtrees({"pool": pool, "round": 1}, RUNTIME, beam_width=2, max_rounds=40)
    assert [c.key for c in update["pool"]] == ["1.1", "1.2"] and update["expansions"] == [2, 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(scores, min_size=2, max_size=12), st.floats(0.1, 10.0))
def test_resampling_draws_n_particles_and_reports_a_sane_ess(particle_scores, temperature):
    pool = [candidate(i, None, s, finished=False) for i, s in enumerate(particle_scores)]
    n = len(pool)
    update = resample_particles({"pool": pool, "round": 1}, RUNTIME, budget=n, temperature=temperature, max_rounds=40)
    assert len(update["pool"]) + len(update.get("carried", [])) == n
    assert 1.0 - 1e-9 <= update["detail"]["ess"] <= n + 1e-9


def test_low_resampling_temperature_collapses_onto_the_best_particle():
    pool = [candidate(i, None, s, finished=False) for i, s in enumerate([0.2, 0.3, 0.95, 0.25])]
    cold = resample_particles({"pool": pool, "round": 1}, RUNTIME, budget=4, temperature=0.01, max_rounds=40)
    hot = resample_particles({"pool": pool, "round": 1}, RUNTIME, budget=4, temperature=100.0, max_rounds=40)
    assert {c.key for c in cold["pool"]} == {"1.2"}
    assert cold["detail"]["ess"] < 1.01 < hot["detail"]["ess"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([(4, 2), (8, 2), (16, 4), (16, 2), (9, 3), (8, 8)]),
    st.lists(st.tuples(scores, st.booleans()), min_size=1, max_size=16),
    st.integers(0, 15),
    st.booleans(),
)
def test_refill_spreads_all_n_lanes_over_the_top_live_prefixes_until_n_answers_finish(
    shape, pool_spec, already_finished, last_round
):
    budget, width = shape
    already_finished = min(already_finished, budget - 1)
    # Under refill every round holds N candidates, whatever has finished before.
    pool = [candidate(i, "1" if done else None, s, finished=done) for i, (s, done) in enumerate(pool_spec[:budget])]
    finished_before = [candidate(100 + i, "2", 0.5) for i in range(already_finished)]
    state = {"pool": pool, "finished": finished_before, "round": 40 if last_round else 1}
    update = prune_beams(state, RUNTIME, budget=budget, beam_width=width, max_rounds=40, refill=True)
    done = sorted((c for c in pool if c.finished), key=lambda c: -(c.score or 0))
    live = sorted((c for c in pool if not c.finished), key=lambda c: -(c.score or 0))
    room = budget - already_finished
    ended = len(done) >= room or not live or last_round
    assert len(finished_before) + len(update["finished"]) <= budget
    if ended:
        assert update["pool"] == [] and update["expansions"] == []
        assert [c.score for c in update["finished"]] == [c.score for c in [*done, *live][:room]]
        return
    kept, counts = update["pool"], update["expansions"]
    assert sum(counts) == budget
    assert len(kept) == min(len(live), budget // width)
    assert max(counts) - min(counts) <= 1
    assert [c.score for c in kept] == [c.score for c in live[: len(kept)]]
    assert update["finished"] == done


def test_refill_with_every_prefix_live_expands_each_kept_one_m_times():
    pool = [candidate(i, None, s, finished=False) for i, s in enumerate([0.1, 0.9, 0.8, 0.3, 0.7, 0.2, 0.6, 0.4])]
    shrink = prune_beams({"pool": pool, "round": 1}, RUNTIME, budget=8, beam_width=2, max_rounds=40)
    refill = prune_beams({"pool": pool, "round": 1}, RUNTIME, budget=8, beam_width=2, max_rounds=40, refill=True)
    assert [c.key for c in refill["pool"]] == [c.key for c in shrink["pool"]] == ["1.1", "1.2", "1.4", "1.6"]
    assert refill["expansions"] == shrink["expansions"] == [2, 2, 2, 2]


def test_refill_gives_the_lanes_of_finished_beams_to_the_live_ones_where_shrink_drops_them():
    spec = [(0.9, True), (0.8, False), (0.7, True), (0.6, False), (0.5, False), (0.4, False), (0.3, True), (0.2, False)]
    pool = [candidate(i, "1" if done else None, s, finished=done) for i, (s, done) in enumerate(spec)]
    shrink = prune_beams({"pool": pool, "round": 1}, RUNTIME, budget=8, beam_width=2, max_rounds=40)
    refill = prune_beams({"pool": pool, "round": 1}, RUNTIME, budget=8, beam_width=2, max_rounds=40, refill=True)
    assert sum(shrink["expansions"]) == 8 - 3 and [c.key for c in shrink["pool"]] == ["1.1", "1.3", "1.4"]
    assert refill["expansions"] == [2, 2, 2, 2] and [c.key for c in refill["pool"]] == ["1.1", "1.3", "1.4", "1.5"]


def test_refill_ends_at_n_answers_keeping_the_best_scored_of_the_last_round():
    pool = [candidate(i, "1", s) for i, s in enumerate([0.2, 0.9, 0.5])] + [candidate(9, None, 0.99, finished=False)]
    finished_before = [candidate(100 + i, "2", 0.5) for i in range(2)]
    update = prune_beams(
        {"pool": pool, "finished": finished_before, "round": 3},
        RUNTIME,
        budget=4,
        beam_width=2,
        max_rounds=40,
        refill=True,
    )
    assert [c.key for c in update["finished"]] == ["1.1", "1.2"] and update["pool"] == []
    assert update["detail"]["dropped"] == ["1.0", "1.9"]


def test_dvts_hands_on_the_winner_or_every_leaf_of_each_finished_subtree():
    spec = [(0.9, True), (0.4, True), (0.3, False), (0.8, False), (0.6, False), (0.5, True)]
    pool = [candidate(i, "1" if done else None, s, finished=done, lineage=i // 2) for i, (s, done) in enumerate(spec)]
    winners = prune_subtrees({"pool": pool, "round": 1}, RUNTIME, beam_width=2, max_rounds=40)
    leaves = prune_subtrees({"pool": pool, "round": 1}, RUNTIME, beam_width=2, max_rounds=40, final_vote="all_leaves")
    # subtree 0 has finished (its best is done); subtrees 1 and 2 go on from their best candidate
    assert [c.key for c in winners["finished"]] == ["1.0"]
    assert [c.key for c in leaves["finished"]] == ["1.0", "1.1"]
    assert [c.key for c in winners["pool"]] == [c.key for c in leaves["pool"]] == ["1.3", "1.4"]
    assert winners["expansions"] == leaves["expansions"] == [2, 2]
    stopped = prune_subtrees({"pool": pool, "round": 40}, RUNTIME, beam_width=2, max_rounds=40, final_vote="all_leaves")
    assert sorted(c.key for c in stopped["finished"]) == sorted(c.key for c in pool) and stopped["pool"] == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(scores, st.booleans()), min_size=1, max_size=12), st.integers(1, 16))
def test_final_particles_keep_their_copies_only_when_voting_by_multiplicity(pool_spec, n):
    pool = [candidate(i, "1", s, finished=done) for i, (s, done) in enumerate(pool_spec)]
    state = {"pool": pool, "round": 40}
    unique = resample_particles(state, RUNTIME, budget=n, temperature=1.0, max_rounds=40)
    copies = resample_particles(state, RUNTIME, budget=n, temperature=1.0, max_rounds=40, final_vote="multiplicity")
    assert unique["detail"]["drawn"] == copies["detail"]["drawn"] and len(copies["detail"]["drawn"]) == n
    assert [c.key for c in copies["finished"]] == copies["detail"]["drawn"]
    assert [c.key for c in unique["finished"]] == list(dict.fromkeys(copies["detail"]["drawn"]))
