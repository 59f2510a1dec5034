"""Propose nodes: sample full answers, or the next step of every live search prefix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from ttc_nodes.answers import extract_answer
from ttc_nodes.budget import Spend, new_lanes, proposer_spend
from ttc_nodes.engines.base import Completion, Proposer, Scored
from ttc_nodes.state import Candidate, NodeRuntime, SolveState


def propose_answers(
    state: SolveState, runtime: NodeRuntime, *, n: int, max_tokens: int, temperature: float
) -> dict[str, Any]:
    """Sample `n` complete answers to the question (one generation each)."""
    context = runtime.context
    question = state["question"]
    prompt = context.prompt_format.solution(question)
    [completions] = context.proposer.generate(
        [prompt], n, max_tokens=max_tokens, temperature=temperature, seed=context.seed_for("answers")
    )
    answers = [
        answer_candidate(completion, key=f"1.{index}", round=1, kind="answer", split=context.prompt_format.split_steps)
        for index, completion in enumerate(completions)
    ]
    return {
        "pool": answers,
        "round": 1,
        "lanes": n,
        "spend": call_spend(context.proposer, completions, generations=n),
        **batch_detail(completions),
    }


def expand_steps(
    state: SolveState,
    runtime: NodeRuntime,
    *,
    first_round: int,
    max_tokens: int,
    temperature: float,
    lane_factor: int = 1,
    subtrees: int | None = None,
) -> dict[str, Any]:
    """Sample the next step of every live prefix, all prefixes in one engine call.

    Round 1 samples `first_round` first steps from the question. Later rounds expand each entry of
    `pool` by the matching count in `expansions` (the select node's plan). `lane_factor` is 1 + k
    for lookahead search, whose rollouts occupy k more lanes per candidate.
    """
    context = runtime.context
    question = state["question"]
    round_number = state.get("round", 0) + 1
    parents: list[Candidate | None]
    if round_number == 1:
        parents, counts = [None], [first_round]
    else:
        parents = list(state.get("pool", []))
        counts = list(state.get("expansions", [1] * len(parents)))
    prompts = [context.prompt_format.solution(question, p.steps if p else ()) for p in parents]
    grouped = generate_counts(
        context.proposer,
        prompts,
        counts,
        max_tokens=max_tokens,
        temperature=temperature,
        stop=[context.prompt_format.step_separator],
        seed=context.seed_for("expand", round_number),
    )
    children: list[Candidate] = []
    for parent, completions in zip(parents, grouped, strict=True):
        for completion in completions:
            key = f"{round_number}.{len(children)}"
            child = step_candidate(completion, parent, key=key, round=round_number)
            if parent is None and subtrees:
                child = replace(child, lineage=len(children) * subtrees // first_round)
            children.append(child)
    lanes_now = len(children) * lane_factor
    lanes_before = state.get("lanes", 0)
    flat = [c for group in grouped for c in group]
    return {
        "pool": children,
        "round": round_number,
        "lanes": max(lanes_before, lanes_now),
        "spend": call_spend(context.proposer, flat, generations=new_lanes(lanes_before, lanes_now)),
        **batch_detail(flat),
    }


def generate_counts(
    engine: Proposer,
    prompts: Sequence[str],
    counts: Sequence[int],
    *,
    max_tokens: int,
    temperature: float,
    stop: Sequence[str],
    seed: int | None,
) -> list[list[Completion]]:
    """Sample `counts[i]` completions of `prompts[i]` in a single engine call."""
    if not prompts:
        return []
    if len(set(counts)) == 1:
        return engine.generate(prompts, counts[0], max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed)
    # Uneven counts: one row per sample keeps it a single batched call.
    rows = [prompt for prompt, count in zip(prompts, counts, strict=True) for _ in range(count)]
    flat = engine.generate(rows, 1, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed)
    grouped, start = [], 0
    for count in counts:
        grouped.append([row[0] for row in flat[start : start + count]])
        start += count
    return grouped


def step_candidate(
    completion: Completion, parent: Candidate | None, *, key: str, round: int, kind: str = "step"
) -> Candidate:
    """A search candidate: its parent's steps plus the step just sampled."""
    text = completion.text.strip()
    answer = extract_answer(text)
    return Candidate(
        key=key,
        parent=parent.key if parent else None,
        steps=(*(parent.steps if parent else ()), text),
        text=text,
        round=round,
        kind=kind,  # type: ignore[arg-type]
        finished=answer is not None or completion.ended_sequence,
        answer=answer,
        lineage=parent.lineage if parent else None,
        logprob=completion.logprob,
        tokens=completion.completion_tokens,
    )


def answer_candidate(
    completion: Completion,
    *,
    key: str,
    round: int,
    kind: str,
    split: Any,
    parent: str | None = None,
    lineage: int | None = None,
) -> Candidate:
    """A complete answer, split into steps so a PRM can score each of them."""
    text = completion.text.strip()
    return Candidate(
        key=key,
        parent=parent,
        steps=tuple(split(text)) or (text,),
        text=text,
        round=round,
        kind=kind,  # type: ignore[arg-type]
        finished=True,
        answer=extract_answer(text),
        lineage=lineage,
        logprob=completion.logprob,
        tokens=completion.completion_tokens,
    )


def batch_rows(results: Iterable[Completion | Scored]) -> int | None:
    """The rows of the largest model call that `results` rode in, or None when the engine does not
    record them (it merges no calls)."""
    return max((r.batch_rows for r in results if r.batch_rows is not None), default=None)


def batch_detail(completions: Iterable[Completion]) -> dict[str, Any]:
    """A propose step's `detail` update: the rows of the largest model call its completions rode in
    (`batch_rows`); nothing where the engine does not record them."""
    rows = batch_rows(completions)
    return {} if rows is None else {"detail": {"batch_rows": rows}}


def call_spend(engine: Proposer, completions: Sequence[Completion], *, generations: float) -> Spend:
    tokens = sum(c.prompt_tokens + c.completion_tokens for c in completions)
    return proposer_spend(engine.parameters, tokens, generations)
