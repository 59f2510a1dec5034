"""The solve state that flows through a strategy graph, and the runtime context nodes receive.

A `Candidate` is one node of the search tree: a partial or full solution with its parent, so the
tree can be rebuilt from the trace. Nodes return state updates holding candidates; the graph runner
records every candidate it sees, which is how user-built graphs get traced too.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Protocol, TypedDict

from ttc_nodes.budget import Spend
from ttc_nodes.engines.base import Proposer, Verifier
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat

CandidateKind = Literal["answer", "step", "revision", "rollout"]


@dataclass(frozen=True)
class Candidate:
    """A solution or solution prefix. `text` is what this candidate adds to its parent's path;
    `lineage` numbers the independent line of search it belongs to (a revision chain, a DVTS
    subtree), None where a strategy has only one."""

    key: str
    parent: str | None
    steps: tuple[str, ...]
    text: str
    round: int
    kind: CandidateKind
    finished: bool
    answer: str | None
    lineage: int | None = None
    logprob: float = 0.0
    tokens: int = 0
    step_scores: tuple[float, ...] | None = None
    score: float | None = None
    truncated: bool = False

    @property
    def depth(self) -> int:
        return len(self.steps)

    def scored(self, step_scores: Sequence[float], score: float, truncated: bool = False) -> Candidate:
        return replace(self, step_scores=tuple(step_scores), score=score, truncated=truncated)


def appended(left: list[Candidate], right: list[Candidate]) -> list[Candidate]:
    """Reducer that appends, for lists that only ever grow (finished answers)."""
    return operator.add(left, right)


class SolveState(TypedDict, total=False):
    """What a strategy graph carries. Only `question` is required on input."""

    question: str
    round: int
    pool: list[Candidate]
    expansions: list[int]
    finished: Annotated[list[Candidate], appended]
    chains: list[list[Candidate]]
    rollouts: list[Candidate]
    carried: list[Candidate]
    lanes: int
    spend: Annotated[Spend, operator.add]
    answer: str | None
    chosen: str | None
    votes: dict[str, float]
    detail: dict[str, Any]


@dataclass
class SolveContext:
    """The engines and settings every node can reach through `runtime.context`."""

    proposer: Proposer
    verifier: Verifier | None = None
    reviser: Proposer | None = None
    prompt_format: PromptFormat = field(default_factory=lambda: DEFAULT_FORMAT)
    seed: int | None = 0

    def seed_for(self, *parts: object) -> int | None:
        """A seed for one engine call, distinct per (node, round, ...) and reproducible."""
        if self.seed is None:
            return None
        digest = hashlib.sha256(repr((self.seed, *parts)).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def require_verifier(self, node: str) -> Verifier:
        if self.verifier is None:
            raise ValueError(f"node {node!r} needs a verifier (PRM); pass one with --verifier")
        return self.verifier

    def require_reviser(self) -> Proposer:
        return self.reviser if self.reviser is not None else self.proposer


class NodeRuntime(Protocol):
    """What a node needs from LangGraph's `Runtime`: only the context."""

    @property
    def context(self) -> SolveContext: ...
