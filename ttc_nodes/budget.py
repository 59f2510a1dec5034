"""Compute spent by a strategy: generations (the paper's unit), tokens and FLOPs.

A generation is one full sampled answer. Step-wise search counts the peak number of parallel
lanes (a beam search with N beams costs N generations however many rounds it runs; lookahead
rollouts of k steps add k lanes per candidate, so lookahead costs N·(k+1)). FLOPs follow the
inference estimate 2 × parameters × tokens, summed over every model call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


class BudgetError(ValueError):
    """A strategy was asked to spend more generations than its budget allows."""


@dataclass(frozen=True)
class Spend:
    generations: float = 0.0
    proposer_tokens: int = 0
    verifier_tokens: int = 0
    flops: float = 0.0

    @property
    def tokens(self) -> int:
        return self.proposer_tokens + self.verifier_tokens

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            generations=self.generations + other.generations,
            proposer_tokens=self.proposer_tokens + other.proposer_tokens,
            verifier_tokens=self.verifier_tokens + other.verifier_tokens,
            flops=self.flops + other.flops,
        )

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "tokens": self.tokens}


def proposer_spend(parameters: int, tokens: int, generations: float = 0.0) -> Spend:
    return Spend(generations=generations, proposer_tokens=tokens, flops=2.0 * parameters * tokens)


def verifier_spend(parameters: int, tokens: int) -> Spend:
    return Spend(verifier_tokens=tokens, flops=2.0 * parameters * tokens)


def new_lanes(lanes_so_far: int, lanes_now: int) -> int:
    """Generations added when a round runs `lanes_now` parallel lanes (only growth costs)."""
    return max(0, lanes_now - lanes_so_far)
