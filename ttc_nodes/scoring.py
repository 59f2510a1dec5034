"""Turning a PRM's per-step scores into one answer score (last, min or product of steps)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Aggregation = Literal["last", "min", "prod"]
AGGREGATIONS: tuple[Aggregation, ...] = ("last", "min", "prod")


def aggregate(step_scores: Sequence[float], how: Aggregation = "last") -> float:
    """One score for a solution from its step scores; the paper uses the last step's score."""
    if not step_scores:
        raise ValueError("cannot aggregate an empty list of step scores")
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    if how == "prod":
        return float(math.prod(step_scores))
    raise ValueError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
