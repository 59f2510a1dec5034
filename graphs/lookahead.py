"""Lookahead search: beam search whose candidates are scored after a k-step greedy rollout.

With budget B and lookahead k it runs N = B / (k+1) beams, since each round's rollouts cost k more
generations per beam: N·(k+1) = B in all (Snell et al. 2024, §5.2). It shares beam search's `refill`
choice: with it every round runs all N·(k+1) lanes, which still costs B generations.
"""

from __future__ import annotations

from graphs import beam_search
from graphs.runner import StrategyGraph
from graphs.settings import LookaheadSettings


def build(settings: LookaheadSettings) -> StrategyGraph:
    return beam_search.build(settings)
