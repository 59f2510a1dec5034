"""Proposer nodes configured from a strategy's settings (its temperature and token limits), so that
each builder says only what is its own: how many answers, how a step is expanded."""

from __future__ import annotations

from functools import partial
from typing import Any

from graphs.settings import StrategySettings
from ttc_nodes.propose import expand_steps, propose_answers


def answer_sampler(settings: StrategySettings, n: int | None = None) -> Any:
    """A node that samples `n` (default: the budget) complete answers in parallel."""
    return partial(
        propose_answers,
        n=settings.budget if n is None else n,
        max_tokens=settings.max_answer_tokens,
        temperature=settings.temperature,
    )


def step_expander(settings: StrategySettings, **options: Any) -> Any:
    """A node that samples next steps of the live prefixes; `options` are `expand_steps`' own
    (first_round, lane_factor, subtrees)."""
    return partial(expand_steps, max_tokens=settings.max_step_tokens, temperature=settings.temperature, **options)
