"""The graph runner: invokes a compiled strategy graph and turns LangGraph's stream of node
updates into trace events, so every graph — built-in or user-made — is traced the same way."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StreamMode

from ttc_nodes.budget import Spend
from ttc_nodes.state import Candidate, SolveContext, SolveState

StrategyGraph = CompiledStateGraph[SolveState, SolveContext, SolveState, SolveState]
"""What every strategy builder returns: a compiled graph over the solve state and context."""


class SolveError(RuntimeError):
    """A node failed; the failing step has already been traced."""


@dataclass(frozen=True)
class StepEvent:
    """One node execution: what it created, what it scored, what it cost."""

    seq: int
    node: str
    round: int
    started_at: datetime
    seconds: float
    spend: Spend
    new: list[Candidate] = field(default_factory=list)
    scored: list[Candidate] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class TraceSink(Protocol):
    def step(self, event: StepEvent) -> None: ...


@dataclass
class SolveResult:
    answer: str | None
    chosen: str | None
    votes: dict[str, float]
    spend: Spend
    seconds: float
    steps: int
    state: dict[str, Any]


def candidates_in(update: Mapping[str, Any]) -> Iterator[Candidate]:
    """Every candidate in a node's update, however the graph nests them (lists, chains)."""
    for value in update.values():
        stack = [value]
        while stack:
            item = stack.pop(0)
            if isinstance(item, Candidate):
                yield item
            elif isinstance(item, list | tuple):
                stack[:0] = list(item)


def run_graph(
    graph: StrategyGraph,
    question: str,
    context: SolveContext,
    sink: TraceSink | None = None,
    *,
    recursion_limit: int = 1000,
) -> SolveResult:
    """Solve one question with a strategy graph, reporting each node execution to `sink`.

    LangGraph's task events give each node's start, result or error; the runner times them and
    diffs the candidates each result carries against those already seen.
    """
    known: dict[str, Candidate] = {}
    spend = Spend()
    seq = 0
    round_number = 0
    final: dict[str, Any] = {"question": question}
    begun = time.perf_counter()
    started: dict[str, tuple[float, datetime]] = {}
    modes: list[StreamMode] = ["tasks", "values"]
    stream = graph.stream(
        {"question": question},
        context=context,
        stream_mode=modes,
        config={"recursion_limit": recursion_limit},
    )
    failure: StepEvent | None = None
    try:
        for mode, payload in stream:
            chunk = cast(dict[str, Any], payload)
            if mode == "values":
                final = dict(chunk)
                continue
            if "input" in chunk:
                started[chunk["id"]] = (time.perf_counter(), datetime.now(UTC))
                continue
            mark, wall = started.pop(chunk["id"], (time.perf_counter(), datetime.now(UTC)))
            seconds = time.perf_counter() - mark
            if chunk.get("error") is not None:
                error = chunk["error"]
                failure = StepEvent(
                    seq,
                    chunk["name"],
                    round_number,
                    wall,
                    seconds,
                    Spend(),
                    error=f"{type(error).__name__}: {error}",
                )
                continue
            update = chunk.get("result") or {}
            round_number = int(update.get("round", round_number))
            step_spend = update.get("spend", Spend())
            spend += step_spend
            new, scored = _diff(known, update)
            if sink is not None:
                sink.step(
                    StepEvent(
                        seq=seq,
                        node=chunk["name"],
                        round=round_number,
                        started_at=wall,
                        seconds=seconds,
                        spend=step_spend,
                        new=new,
                        scored=scored,
                        detail=dict(update.get("detail", {})),
                    )
                )
            seq += 1
    except Exception as error:
        if failure is None:
            failure = StepEvent(
                seq,
                "graph",
                round_number,
                datetime.now(UTC),
                0.0,
                Spend(),
                error=f"{type(error).__name__}: {error}",
            )
        if sink is not None:
            sink.step(failure)
        raise SolveError(f"node {failure.node!r} failed: {failure.error}") from error
    return SolveResult(
        answer=final.get("answer"),
        chosen=final.get("chosen"),
        votes=dict(final.get("votes", {})),
        spend=spend,
        seconds=time.perf_counter() - begun,
        steps=seq,
        state=final,
    )


def _diff(known: dict[str, Candidate], update: Mapping[str, Any]) -> tuple[list[Candidate], list[Candidate]]:
    """Candidates not seen before, and candidates whose score is new or changed."""
    new: list[Candidate] = []
    scored: list[Candidate] = []
    for candidate in candidates_in(update):
        before = known.get(candidate.key)
        if before is None:
            new.append(candidate)
        if candidate.score is not None and (
            before is None or (before.score, before.step_scores) != (candidate.score, candidate.step_scores)
        ):
            scored.append(candidate)
        known[candidate.key] = candidate
    return new, scored
