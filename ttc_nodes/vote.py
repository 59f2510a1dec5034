"""Select nodes that vote: group candidates by equal final answer (ttc_nodes.answers) and pick a
group by count (majority), by its best score (best-of-N) or by its summed score (best-of-N weighted),
and the hierarchical vote over revision chains (Snell et al. 2024, §5.1, §6.2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ttc_nodes.answers import group_answers
from ttc_nodes.state import Candidate, NodeRuntime, SolveState

VoteMethod = Literal["majority", "best_of_n", "weighted"]


@dataclass(frozen=True)
class Selection:
    """The chosen answer, the candidate that carries it, and the vote table behind the choice."""

    answer: str | None
    chosen: str | None
    votes: dict[str, float] = field(default_factory=dict)


def vote(candidates: Sequence[Candidate], method: VoteMethod) -> Selection:
    """Group candidates by equal final answer and pick a group.

    majority: one vote per candidate; best_of_n: the group of the highest-scored candidate;
    weighted: the group with the largest sum of scores (best-of-N weighted). Candidates with no
    answer never win. Ties go to the group seen first.
    """
    answered = [c for c in candidates if c.answer is not None]
    if not answered:
        return Selection(answer=None, chosen=None)
    if method != "majority" and any(c.score is None for c in answered):
        raise ValueError(f"{method} vote needs scored candidates; run a verify node first")
    groups = group_answers([c.answer for c in answered])
    totals: dict[int, float] = {}
    members: dict[int, list[Candidate]] = {}
    for candidate, group in zip(answered, groups, strict=True):
        assert group is not None
        members.setdefault(group, []).append(candidate)
        weight = 1.0 if method == "majority" else float(candidate.score or 0.0)
        if method == "best_of_n":
            totals[group] = max(totals.get(group, -math.inf), weight)
        else:
            totals[group] = totals.get(group, 0.0) + weight
    winner = max(totals, key=lambda g: (totals[g], -g))
    best = max(members[winner], key=lambda c: c.score if c.score is not None else 0.0)
    if method == "majority":
        best = members[winner][0]
    votes = {members[g][0].answer or "": totals[g] for g in sorted(totals)}
    return Selection(answer=members[winner][0].answer, chosen=best.key, votes=votes)


def vote_samples(samples: Sequence[tuple[str | None, float | None]], method: VoteMethod) -> Selection:
    """`vote` over bare (answer, score) samples, such as a pool read back from a trace; a missing
    score counts as 0. `int(selection.chosen)` is the index of the chosen sample."""
    candidates = [
        Candidate(f"{i}", None, (), "", 0, "answer", True, answer, score=score if score is not None else 0.0)
        for i, (answer, score) in enumerate(samples)
    ]
    return vote(candidates, method)


def hierarchical_vote(chains: Sequence[Sequence[Candidate]]) -> Selection:
    """Best-of-N weighted inside each revision chain, then across the chain winners.

    A chain winner carries the summed score of its winning group into the second vote.
    """
    winners: list[Candidate] = []
    for chain in chains:
        inner = vote(chain, "weighted")
        if inner.chosen is None:
            continue
        carrier = next(c for c in chain if c.key == inner.chosen)
        winners.append(carrier.scored(carrier.step_scores or (), max(inner.votes.values())))
    return vote(winners, "weighted")


def select_answer(
    state: SolveState, runtime: NodeRuntime, *, method: VoteMethod, source: str = "pool"
) -> dict[str, Any]:
    """Pick the final answer from `state[source]` by `method`."""
    candidates: list[Candidate] = list(state.get(source, []))  # type: ignore[call-overload]
    return _selected(vote(candidates, method), method, len(candidates))


def select_from_chains(
    state: SolveState, runtime: NodeRuntime, *, method: Literal["verifier", "majority"]
) -> dict[str, Any]:
    """Select across revision chains: hierarchical with a verifier, else one flat majority vote."""
    chains = state.get("chains", [])
    if method == "verifier":
        return _selected(hierarchical_vote(chains), "hierarchical", sum(map(len, chains)))
    flat = [answer for chain in chains for answer in chain]
    return _selected(vote(flat, "majority"), "majority", len(flat))


def _selected(selection: Selection, method: str, count: int) -> dict[str, Any]:
    return {
        "answer": selection.answer,
        "chosen": selection.chosen,
        "votes": selection.votes,
        "detail": {"method": method, "candidates": count, "votes": selection.votes},
    }
