"""Early stopping: sample in rounds, and after each round decide whether the leading answer is
settled (docs/early-stopping.md).

Two rules decide it:

- `posterior` (adaptive self-consistency, Aggarwal et al. 2023): a Dirichlet(1 + votes) posterior over
  the answer groups' vote shares, with one more group for "an answer not seen yet"; stop when the
  probability that the leader's share is the largest is at least the threshold. With two groups the
  posterior is a Beta. The probability is a Monte-Carlo estimate with a seed from the context's seed.
- `confidence` (DeepConf, Fu et al. 2025): a sample's confidence is its mean token log-probability;
  samples below the confidence percentile of the first round are dropped, and the vote stops when
  the kept samples' leader holds at least the threshold share of their votes.

Votes are counts for majority; for PRM votes a sample's vote is its score, rescaled so the votes
sum to the number of samples (the shares are PRM-weighted, the evidence is still counted in samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ttc_nodes.answers import group_answers
from ttc_nodes.budget import Spend
from ttc_nodes.propose import answer_candidate, batch_detail, call_spend
from ttc_nodes.scoring import Aggregation
from ttc_nodes.state import Candidate, NodeRuntime, SolveState
from ttc_nodes.verify import score_candidates

Rule = Literal["posterior", "confidence"]
Weighting = Literal["count", "score"]
DRAWS = 4000
"""Monte-Carlo draws of the posterior: its estimate is within ±0.01 of the probability (95%)."""


def propose_round(
    state: SolveState, runtime: NodeRuntime, *, round_size: int, budget: int, max_tokens: int, temperature: float
) -> dict[str, Any]:
    """Sample the next round of complete answers: `round_size`, or what is left of the budget."""
    context = runtime.context
    pool = list(state.get("pool", []))
    round_number = state.get("round", 0) + 1
    # What is left is read off the spend: a node between rounds may have dropped answers from the pool.
    n = max(0, min(round_size, budget - int(state.get("spend", Spend()).generations)))
    [completions] = context.proposer.generate(
        [context.prompt_format.solution(state["question"])],
        n,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=context.seed_for("answers", round_number),
    )
    answers = [
        answer_candidate(
            c, key=f"{round_number}.{i}", round=round_number, kind="answer", split=context.prompt_format.split_steps
        )
        for i, c in enumerate(completions)
    ]
    return {
        "pool": [*pool, *answers],
        "round": round_number,
        "lanes": state.get("lanes", 0) + n,
        "spend": call_spend(context.proposer, completions, generations=n),
        **batch_detail(completions),
    }


def verify_round(state: SolveState, runtime: NodeRuntime, *, aggregation: Aggregation = "last") -> dict[str, Any]:
    """Score the pool's answers that have no score yet (this round's), so no answer is read twice."""
    verifier = runtime.context.require_verifier("verify_round")
    pool = list(state.get("pool", []))
    fresh = [c for c in pool if c.score is None]
    scored, spend = score_candidates(state["question"], fresh, verifier, aggregation)
    by_key = {c.key: c for c in scored}
    return {"pool": [by_key.get(c.key, c) for c in pool], "spend": spend}


def leader_probability(votes: Sequence[float], *, seed: int | None, draws: int = DRAWS) -> float:
    """P(the group with the most votes has the largest share) under Dirichlet(1 + votes), with one
    more group of no votes standing for answers not seen yet."""
    if not votes:
        return 0.0
    alpha = np.array([*votes, 0.0]) + 1.0
    leader = int(np.argmax(alpha))
    shares = np.random.default_rng(seed).dirichlet(alpha, size=draws)
    return float(np.mean(np.argmax(shares, axis=1) == leader))


def confidence(candidate: Candidate) -> float:
    """A sample's confidence: its mean log-probability per token. The engines return one total
    log-probability per completion, so this stands in for DeepConf's lowest sliding-window mean."""
    return candidate.logprob / max(1, candidate.tokens)


def group_votes(candidates: Sequence[Candidate], weighting: Weighting) -> dict[str, float]:
    """Votes per answer group (keyed by the group's first answer); unanswered samples do not vote.
    `score` votes are the samples' scores rescaled to sum to the number of samples."""
    answered = [c for c in candidates if c.answer is not None]
    weights = [1.0 if weighting == "count" else max(float(c.score or 0.0), 0.0) for c in answered]
    total = sum(weights)
    if weighting == "score" and total > 0:
        weights = [w * len(answered) / total for w in weights]
    votes: dict[int, float] = {}
    names: dict[int, str] = {}
    for candidate, group, weight in zip(answered, group_answers([c.answer for c in answered]), weights, strict=True):
        assert group is not None and candidate.answer is not None
        names.setdefault(group, candidate.answer)
        votes[group] = votes.get(group, 0.0) + weight
    return {names[g]: votes[g] for g in sorted(votes)}


def settle_decision(
    samples: Sequence[Candidate],
    *,
    rule: Rule,
    threshold: float,
    keep: float,
    weighting: Weighting,
    seed: int | None,
) -> dict[str, Any]:
    """Whether the answer among `samples` is settled by `rule`, and the numbers behind it."""
    if rule == "posterior":
        votes = group_votes(samples, weighting)
        value = leader_probability(list(votes.values()), seed=seed)
        return {"settled": value >= threshold, "posterior": value, "votes": votes}
    first = min((c.round for c in samples), default=0)
    # DeepConf's offline warm-up: the cut is the (1 − keep) percentile of the first round's confidences.
    warmup = [confidence(c) for c in samples if c.round == first]
    cut = float(np.percentile(warmup, 100 * (1 - keep))) if warmup else 0.0
    kept = [c for c in samples if confidence(c) >= cut]
    votes = group_votes(kept, weighting)
    total = sum(votes.values())
    value = max(votes.values()) / total if total else 0.0
    # One kept sample agrees with itself: consensus needs at least two.
    return {
        "settled": value >= threshold and len(kept) >= 2,
        "consensus": value,
        "confidence_cut": cut,
        "kept": len(kept),
        "votes": votes,
    }


def settle(
    state: SolveState,
    runtime: NodeRuntime,
    *,
    rule: Rule,
    threshold: float,
    budget: int | None,
    keep: float = 0.9,
    weighting: Weighting = "count",
    source: Literal["pool", "chains", "carried"] = "pool",
) -> dict[str, Any]:
    """Decide after a round whether to stop: the answer is settled, or the budget is spent.

    The `detail` records the rule, its value, the samples it read, the generations spent and those
    saved (budget − spent); `stop` is what the settle edge (`settled`) follows. A `budget` of None
    (particle filtering, whose N lanes are spent in the first round) stops only when settled.
    """
    samples = _samples(state, source)
    spent = state.get("spend", Spend()).generations
    decision = settle_decision(
        samples,
        rule=rule,
        threshold=threshold,
        keep=keep,
        weighting=weighting,
        seed=runtime.context.seed_for("settle", state.get("round", 0)),
    )
    exhausted = budget is not None and spent >= budget
    reason = "settled" if decision["settled"] else "budget spent" if exhausted else None
    detail = {
        "rule": rule,
        "threshold": threshold,
        **decision,
        "samples": len(samples),
        "spent": spent,
        "saved": None if budget is None else max(0.0, budget - spent),
        "stop": reason is not None,
        "reason": reason,
    }
    return {"detail": detail}


def settle_particles(
    state: SolveState, runtime: NodeRuntime, *, rule: Rule, threshold: float, keep: float, final_vote: str
) -> dict[str, Any]:
    """`settle` over the finished particles, counted with their copies (the resampled population's
    answer shares, already PRM-weighted); once settled the search ends: the live
    particles are cut and the finished ones go to the final vote, as when resampling ends it."""
    update = settle(
        state, runtime, rule=rule, threshold=threshold, budget=None, keep=keep, weighting="count", source="carried"
    )
    if not state.get("pool"):
        # Resampling ended the search itself: every particle finished, or the rounds ran out.
        update["detail"].update(stop=True, reason=update["detail"]["reason"] or "search ended")
        return update
    if not update["detail"]["stop"]:
        return update
    carried = list(state.get("carried", []))
    final = carried if final_vote == "multiplicity" else list({c.key: c for c in carried}.values())
    update["detail"]["cut"] = [c.key for c in state.get("pool", [])]
    return {**update, "pool": [], "carried": [], "finished": final, "expansions": []}


def settled(state: SolveState) -> str:
    """The settle edge: "stop" once the settle node said so, else "more" for another round."""
    return "stop" if state.get("detail", {}).get("stop") else "more"


def _samples(state: SolveState, source: str) -> list[Candidate]:
    if source == "chains":
        return [answer for chain in state.get("chains", []) for answer in chain]
    if source == "carried":
        # The population, copies included: resampling has already drawn each particle by its PRM weight.
        return [c for c in [*state.get("carried", []), *state.get("finished", [])] if c.finished]
    return list(state.get("pool", []))
