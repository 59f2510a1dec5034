"""Difficulty bins (Snell et al. 2024, §3.2): quantile cut points over per-prompt difficulty values
(pass@1 or the mean PRM score) and the bin of a value, bin 1 the easiest."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from statistics import fmean


def quantile_thresholds(values: Sequence[float], bins: int = 5) -> list[float]:
    """The bins−1 cut points, ascending: t_i is the empirical i/bins quantile of `values`, the smallest
    value v with (#values ≤ v) ≥ i·n/bins (inverse of the empirical CDF, numpy's "inverted_cdf").

    Cut points are data values, so with `assign_bin` n distinct values fall into bins of
    ⌊n/bins⌋ or ⌈n/bins⌉ each, exactly n/bins when bins divides n."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("no values to cut into bins")
    if any(math.isnan(v) for v in ordered):
        raise ValueError("values contain NaN")
    n = len(ordered)
    # ceil(i·n / bins) values are at or below t_i; integer arithmetic keeps the ranks exact.
    return [ordered[-(-i * n // bins) - 1] for i in range(1, bins)]


def assign_bin(value: float, thresholds: Sequence[float]) -> int:
    """The bin of `value`, 1..len(thresholds)+1, where bin 1 holds the highest values (the easiest:
    values are pass@1 or mean PRM scores). Bin b holds (t_{B−b}, t_{B−b+1}] for B bins.

    Ties: a value equal to a cut point goes to the harder side (the higher bin number), so constant
    values all land in the hardest bin. Monotone: a higher value never gets a higher bin number."""
    if math.isnan(value):
        raise ValueError("cannot bin NaN")
    cuts = sorted(thresholds)
    return len(cuts) + 1 - bisect.bisect_left(cuts, value)


def predicted_difficulty(scores: Iterable[float | None]) -> float:
    """A prompt's predicted difficulty (Snell et al. 2024, §3.2): the mean PRM score of its samples'
    answers, unscored ones left out; 0.0 (the hardest) when none is scored."""
    scored = [s for s in scores if s is not None]
    return fmean(scored) if scored else 0.0
