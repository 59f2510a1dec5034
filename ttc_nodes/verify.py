"""Verify nodes: PRM step scores for candidates, optionally after a greedy lookahead rollout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ttc_nodes.budget import Spend, verifier_spend
from ttc_nodes.engines.base import Completion, Scored
from ttc_nodes.prompts import check_question_size
from ttc_nodes.propose import batch_rows, call_spend, step_candidate
from ttc_nodes.scoring import Aggregation, aggregate
from ttc_nodes.state import Candidate, NodeRuntime, SolveState


def verify(
    state: SolveState, runtime: NodeRuntime, *, aggregation: Aggregation = "last", source: str = "pool"
) -> dict[str, Any]:
    """Score every candidate in `state[source]` with the PRM; the answer score aggregates its steps."""
    verifier = runtime.context.require_verifier("verify")
    candidates: list[Candidate] = list(state.get(source, []))  # type: ignore[call-overload]
    scored, spend, results = scored_with_results(state["question"], candidates, verifier, aggregation)
    return {source: scored, "spend": spend, **detail_of(verifier=results)}


def score_candidates(
    question: str, candidates: Sequence[Candidate], verifier: Any, aggregation: Aggregation
) -> tuple[list[Candidate], Spend]:
    """The candidates with step scores and aggregated score filled in, and the verifier's spend.
    A question over MAX_QUESTION_CHARS is refused (QuestionTooLong) before any verifier reads it."""
    scored, spend, _ = scored_with_results(question, candidates, verifier, aggregation)
    return scored, spend


def scored_with_results(
    question: str, candidates: Sequence[Candidate], verifier: Any, aggregation: Aggregation
) -> tuple[list[Candidate], Spend, list[Scored]]:
    """`score_candidates`, and the verifier's results themselves (for the batch they rode in)."""
    check_question_size(question)
    if not candidates:
        return [], Spend(), []
    results = verifier.score(question, [list(c.steps) for c in candidates])
    if len(results) != len(candidates):
        raise ValueError(f"verifier returned {len(results)} results for {len(candidates)} candidates")
    scored = []
    for candidate, result in zip(candidates, results, strict=True):
        if len(result.step_scores) != len(candidate.steps):
            raise ValueError(f"verifier gave {len(result.step_scores)} step scores for {len(candidate.steps)} steps")
        value = aggregate(result.step_scores, aggregation)
        scored.append(candidate.scored(result.step_scores, value, result.truncated))
    return scored, verifier_spend(verifier.parameters, sum(r.tokens for r in results)), results


def detail_of(*, verifier: Sequence[Scored], rollouts: Sequence[Completion] = ()) -> dict[str, Any]:
    """A verify step's `detail` update: the rows of the largest model call its scores (`batch_rows`)
    and its rollouts (`rollout_batch_rows`) rode in, where the engines record them."""
    rows = {"batch_rows": batch_rows(verifier), "rollout_batch_rows": batch_rows(rollouts)}
    detail = {name: count for name, count in rows.items() if count is not None}
    return {"detail": detail} if detail else {}


def verify_with_lookahead(
    state: SolveState,
    runtime: NodeRuntime,
    *,
    lookahead: int,
    max_tokens: int,
    aggregation: Aggregation = "last",
) -> dict[str, Any]:
    """Score each candidate by rolling it out `lookahead` more steps at temperature 0 and taking the
    PRM's score at the end of the rollout (lookahead 0 is plain beam search scoring).

    Each rollout is recorded as a `rollout` child of the candidate it continues.
    """
    context = runtime.context
    verifier = context.require_verifier("verify_with_lookahead")
    question = state["question"]
    pool = list(state.get("pool", []))
    # The rollout tip of each candidate, keyed by the candidate it started from.
    tips = {c.key: c for c in pool}
    spend = Spend()
    rolled: list[Completion] = []
    for depth in range(lookahead):
        live = [key for key, tip in tips.items() if not tip.finished]
        if not live:
            break
        prompts = [context.prompt_format.solution(question, tips[key].steps) for key in live]
        completions = context.proposer.generate(
            prompts,
            1,
            max_tokens=max_tokens,
            temperature=0.0,
            stop=[context.prompt_format.step_separator],
            seed=context.seed_for("lookahead", state.get("round", 0), depth),
        )
        spend += call_spend(context.proposer, [c[0] for c in completions], generations=0)
        rolled += [c[0] for c in completions]
        for key, [completion] in zip(live, completions, strict=True):
            tip = step_candidate(completion, tips[key], key=key, round=tips[key].round, kind="rollout")
            tips[key] = replace(tip, tokens=tips[key].tokens + tip.tokens if depth else tip.tokens)
    ends = [
        _rollout(candidate, tips[candidate.key]) if tips[candidate.key] is not candidate else candidate
        for candidate in pool
    ]
    scored_ends, verifier_cost, results = scored_with_results(question, ends, verifier, aggregation)
    scored_pool = []
    for candidate, end in zip(pool, scored_ends, strict=True):
        own = (end.step_scores or ())[: candidate.depth]
        scored_pool.append(candidate.scored(own, end.score or 0.0, end.truncated))
    rollouts = [end for end in scored_ends if end.kind == "rollout"]
    update = {"pool": scored_pool, "rollouts": rollouts, "spend": spend + verifier_cost}
    return {**update, **detail_of(verifier=results, rollouts=rolled)}


def _rollout(candidate: Candidate, tip: Candidate) -> Candidate:
    """The rolled-out continuation of `candidate`, recorded as a child of it."""
    return replace(
        tip,
        key=f"{candidate.key}+",
        parent=candidate.key,
        text="\n\n".join(tip.steps[candidate.depth :]),
        kind="rollout",
    )


def verify_chains(state: SolveState, runtime: NodeRuntime, *, aggregation: Aggregation = "last") -> dict[str, Any]:
    """Score every answer of every revision chain in one verifier call."""
    verifier = runtime.context.require_verifier("verify_chains")
    chains = state.get("chains", [])
    flat = [answer for chain in chains for answer in chain]
    scored, spend, results = scored_with_results(state["question"], flat, verifier, aggregation)
    rebuilt, start = [], 0
    for chain in chains:
        rebuilt.append(scored[start : start + len(chain)])
        start += len(chain)
    return {"chains": rebuilt, "spend": spend, **detail_of(verifier=results)}
