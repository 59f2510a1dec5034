"""Revise nodes: chains of revisions, each conditioned on the chain's most recent answers."""

from __future__ import annotations

from typing import Any

from ttc_nodes.propose import answer_candidate, call_spend
from ttc_nodes.state import Candidate, NodeRuntime, SolveState


def start_chains(
    state: SolveState, runtime: NodeRuntime, *, chains: int, max_tokens: int, temperature: float
) -> dict[str, Any]:
    """The first answer of each of `chains` parallel chains, sampled from the proposer."""
    context = runtime.context
    [completions] = context.proposer.generate(
        [context.prompt_format.solution(state["question"])],
        chains,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=context.seed_for("chains"),
    )
    heads = [
        answer_candidate(
            completion,
            key=f"1.{index}",
            round=1,
            kind="answer",
            split=context.prompt_format.split_steps,
            lineage=index,
        )
        for index, completion in enumerate(completions)
    ]
    return {
        "chains": [[head] for head in heads],
        "round": 1,
        "spend": call_spend(context.proposer, completions, generations=chains),
    }


def revise(state: SolveState, runtime: NodeRuntime, *, max_tokens: int, temperature: float) -> dict[str, Any]:
    """Append one revision to every chain; the reviser sees the chain's last (at most 4) answers."""
    context = runtime.context
    reviser = context.require_reviser()
    chains = state["chains"]
    round_number = state.get("round", 0) + 1
    prompts = [context.prompt_format.revision(state["question"], [answer.text for answer in chain]) for chain in chains]
    results = reviser.generate(
        prompts,
        1,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=context.seed_for("revise", round_number),
    )
    grown: list[list[Candidate]] = []
    for index, (chain, [completion]) in enumerate(zip(chains, results, strict=True)):
        revision = answer_candidate(
            completion,
            key=f"{round_number}.{index}",
            round=round_number,
            kind="revision",
            split=context.prompt_format.split_steps,
            parent=chain[-1].key,
            lineage=index,
        )
        grown.append([*chain, revision])
    return {
        "chains": grown,
        "round": round_number,
        "spend": call_spend(reviser, [r[0] for r in results], generations=len(chains)),
    }
