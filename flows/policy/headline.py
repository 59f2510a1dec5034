"""The reproduction's headline numbers (Snell et al. 2024, §3 and §5–§6), from per-prompt outcomes, each
with a 95% interval from a bootstrap over prompts (the prompts are resampled, the runs are not rerun).

An outcome table maps budget N -> problem key -> accuracy on that prompt (0/1 for a run, an expected
value for a plan read off a pool); spend tables hold the generations each prompt actually used. Every
function here is pure: the same tables and seed give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Outcomes = Mapping[int, Mapping[str, float]]
"""N -> problem key -> accuracy on that prompt."""

RESAMPLES = 1000
TOLERANCE = 1e-12


def mean_over(table: Mapping[str, float], keys: Sequence[str]) -> float:
    return math.fsum(table[k] for k in keys) / len(keys)


def interval(
    statistic: Callable[[Sequence[str]], float | None], keys: Sequence[str], *, seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """The statistic on `keys`, and its 95% percentile interval over `resamples` bootstrap resamples of
    the keys (drawn with replacement, seeded). A resample where the statistic is undefined (None) is
    counted in `undefined` and left out of the interval."""
    ordered = sorted(keys)
    point = statistic(ordered)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    undefined = 0
    for _ in range(resamples):
        drawn = [ordered[i] for i in rng.integers(0, len(ordered), len(ordered))]
        value = statistic(drawn)
        if value is None:
            undefined += 1
        else:
            values.append(value)
    low, high = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (None, None)
    return {"value": point, "ci95": [low, high], "undefined": undefined / resamples}


def matching_budget(target: float, curve: Outcomes, keys: Sequence[str]) -> int | None:
    """The smallest budget whose mean accuracy over `keys` reaches `target`, None if none does."""
    return next((n for n in sorted(curve) if mean_over(curve[n], keys) >= target - TOLERANCE), None)


def efficiency(
    baseline: Outcomes,
    optimal: Outcomes,
    optimal_spend: Outcomes,
    difficulty_spend: Mapping[str, float],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> list[dict[str, Any]]:
    """For each baseline budget B: the smallest budget at which compute-optimal matches the baseline's
    accuracy at B on the same prompts, and B over what compute-optimal spent there per prompt, without
    and with the generations spent estimating each prompt's difficulty (the paper leaves these out)."""
    keys = sorted(set.intersection(*(set(t) for t in [*baseline.values(), *optimal.values()])))
    if not keys:
        raise ValueError("the baseline and compute-optimal runs share no prompts")
    rows = []
    for budget in sorted(baseline):

        def matched(sample: Sequence[str], budget: int = budget) -> int | None:
            return matching_budget(mean_over(baseline[budget], sample), optimal, sample)

        def ratio_with(sample: Sequence[str], budget: int = budget) -> float | None:
            return ratio(sample, budget, with_difficulty=True)

        def ratio(sample: Sequence[str], budget: int = budget, with_difficulty: bool = False) -> float | None:
            found = matched(sample)
            if found is None:
                return None
            spent = mean_over(optimal_spend[found], sample)
            if with_difficulty:
                spent += mean_over(difficulty_spend, sample)
            return budget / spent if spent > 0 else None

        found = matched(keys)
        rows.append(
            {
                "budget": budget,
                "baseline_accuracy": mean_over(baseline[budget], keys),
                "matching_budget": found,
                "matching_spend": mean_over(optimal_spend[found], keys) if found is not None else None,
                "efficiency": interval(ratio, keys, seed=seed + budget, resamples=resamples),
                "efficiency_with_difficulty": interval(ratio_with, keys, seed=seed + budget, resamples=resamples),
            }
        )
    return rows


def difference_by_bin(
    first: Outcomes, second: Outcomes, bins: Mapping[str, int], *, seed: int = 0, resamples: int = RESAMPLES
) -> list[dict[str, Any]]:
    """Per bin and budget: mean accuracy of `first` minus `second` over the bin's prompts, with its
    interval (a paired bootstrap: both on the same resampled prompts)."""
    rows = []
    for bin_ in sorted(set(bins.values())):
        members = sorted(k for k, b in bins.items() if b == bin_)
        for n in sorted(set(first) & set(second)):
            keys = [k for k in members if k in first[n] and k in second[n]]
            if not keys:
                continue

            def gap(sample: Sequence[str], n: int = n) -> float:
                return mean_over(first[n], sample) - mean_over(second[n], sample)

            rows.append(
                {
                    "bin": bin_,
                    "budget": n,
                    "prompts": len(keys),
                    "first": mean_over(first[n], keys),
                    "second": mean_over(second[n], keys),
                    "difference": interval(gap, keys, seed=seed + 7919 * bin_ + n, resamples=resamples),
                }
            )
    return rows


def best_ratio_by_bin(
    ratios: Mapping[float, Outcomes],
    bins: Mapping[str, int],
    budget: int,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> list[dict[str, Any]]:
    """Per bin: the sequential/parallel ratio (chain length / chains) with the best mean accuracy at
    `budget`, every ratio's accuracy, and how often each ratio is best over bootstrap resamples of the
    bin's prompts (ties go to the more sequential ratio, which the paper finds best on easy prompts)."""
    present = sorted(r for r, table in ratios.items() if budget in table)
    if not present:
        raise ValueError(f"no revision ratio was run at budget {budget}")
    rows = []
    for bin_ in sorted(set(bins.values())):
        keys = sorted(k for k, b in bins.items() if b == bin_ and all(k in ratios[r][budget] for r in present))
        if not keys:
            continue

        def best(sample: Sequence[str]) -> float:
            return max(present, key=lambda ratio: (mean_over(ratios[ratio][budget], sample), ratio))

        rng = np.random.default_rng(seed + bin_)
        wins = dict.fromkeys(present, 0)
        for _ in range(resamples):
            wins[best([keys[i] for i in rng.integers(0, len(keys), len(keys))])] += 1
        rows.append(
            {
                "bin": bin_,
                "budget": budget,
                "prompts": len(keys),
                "best_ratio": best(keys),
                "accuracy": {r: mean_over(ratios[r][budget], keys) for r in present},
                "best_share": {r: wins[r] / resamples for r in present},
            }
        )
    return rows
