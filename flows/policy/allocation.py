"""Beyond the paper: a whole dataset's budget split across difficulty bins, so that expected correct
answers are the most a total number of generations can buy (an exact knapsack over the bins'
calibrated accuracy curves)."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict


class Allocation(BaseModel):
    """One budget per bin, what it spends over all prompts, and the expected accuracy."""

    model_config = ConfigDict(frozen=True)

    budgets: dict[int, int]  # bin -> N for each of its prompts
    spent: int  # Σ counts[b]·N_b, in generations
    expected_accuracy: float  # Σ counts[b]·accuracy_b(N_b) / Σ counts[b]


def allocate(curves: Mapping[int, Mapping[int, float]], counts: Mapping[int, int], total_budget: int) -> Allocation:
    """The per-bin budgets, each from that bin's calibrated budgets, that maximise expected correct
    answers Σ counts[b]·curves[b][N_b] subject to Σ counts[b]·N_b ≤ total_budget. Exact.

    Ties go to the smaller spend, then to smaller budgets in the lower bins. Bins of `curves` absent
    from `counts` have no prompts and are left out. Raises ValueError when even the smallest budgets
    cost more than `total_budget`, naming the minimum needed."""
    bins = sorted(counts)
    if any(counts[b] < 0 for b in bins):
        raise ValueError(f"counts must be non-negative, got {dict(counts)}")
    prompts = sum(counts[b] for b in bins)
    if prompts == 0:
        raise ValueError("no prompts to allocate a budget to")
    missing = [b for b in bins if not curves.get(b)]
    if missing:
        raise ValueError(f"no calibrated curve for bins {missing}")
    minimum = sum(counts[b] * min(curves[b]) for b in bins)
    if minimum > total_budget:
        raise ValueError(f"total budget {total_budget} is below the minimum needed, {minimum}")

    # Bin by bin, keep only partial allocations that no other beats on both spend and value: any
    # completion of a dominated one is matched by the same completion of the one dominating it.
    frontier: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    rest = minimum
    for b in bins:
        rest -= counts[b] * min(curves[b])
        grown = [
            (spent + counts[b] * n, value + counts[b] * curves[b][n], (*choice, n))
            for spent, value, choice in frontier
            for n in sorted(curves[b])
            if spent + counts[b] * n + rest <= total_budget
        ]
        grown.sort(key=lambda s: (s[0], -s[1], s[2]))
        frontier = []
        for state in grown:
            if not frontier or state[1] > frontier[-1][1]:
                frontier.append(state)
    spent, value, choice = max(frontier, key=lambda s: (s[1], -s[0]))
    return Allocation(budgets=dict(zip(bins, choice, strict=True)), spent=spent, expected_accuracy=value / prompts)
