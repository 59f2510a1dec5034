"""The plan grid a calibration searches (Snell et al. 2024, §3): the plans θ by label, which of
them are read off one shared pool of samples, and a pool plan's expected accuracy at budget N."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from flows.policy.table import Plan
from graphs import registry
from graphs.registry import SettingsError
from ttc_nodes.vote import VoteMethod, vote_samples

SEARCH_PLANS: dict[str, tuple[str, dict[str, Any]]] = {
    "beam M=sqrt": ("beam", {}),
    "beam M=4": ("beam", {"beam_width": 4}),
    "lookahead k=1": ("lookahead", {"lookahead": 1}),
    "lookahead k=3": ("lookahead", {"lookahead": 3}),
    "dvts": ("dvts", {}),
    "revisions sequential": ("revisions", {"chains": 1}),
    "revisions chains=4": ("revisions", {"chains": 4}),
    "revisions parallel": ("revisions", {"chain_length": 1}),  # N chains of one answer: ratio 1/N
    # Early stopping (docs/early-stopping.md) changes what a vote spends, so these run, not read off the pool.
    "majority early_stop=posterior": ("majority", {"early_stop": "posterior"}),
    "majority early_stop=confidence": ("majority", {"early_stop": "confidence"}),
    "best_of_n_weighted early_stop=posterior": ("best_of_n_weighted", {"early_stop": "posterior"}),
    "best_of_n_weighted early_stop=confidence": ("best_of_n_weighted", {"early_stop": "confidence"}),
}
DEFAULT_PLANS = [
    "best_of_n_weighted",
    "best_of_n",
    "majority",
    "beam M=sqrt",
    "beam M=4",
    "lookahead k=1",
    "dvts",
    "revisions sequential",
]
"""The paper's grid: the three pool votes, beam search at two widths, lookahead, DVTS, revisions."""


def pool_plans() -> dict[str, VoteMethod]:
    """Every registered strategy whose answer is one vote over N independent samples, with its vote:
    calibration reads these off the shared pool instead of running them."""
    return {s.name: s.pool_vote for s in registry.all_strategies() if s.pool_vote is not None}


def plan_of(label: str) -> Plan:
    """The plan called `label`: a pool plan, a search plan of the grid, or any registered strategy
    with its default settings."""
    if label in SEARCH_PLANS:
        strategy, settings = SEARCH_PLANS[label]
        return Plan(strategy=strategy, settings=settings, label=label)
    if label in registry.names():
        return Plan(strategy=label, settings={}, label=label)
    known = ", ".join([*pool_plans(), *SEARCH_PLANS, *(n for n in registry.names() if n not in pool_plans())])
    raise ValueError(f"unknown plan {label!r}; known plans: {known}")


def plan_grid(labels: Sequence[str] | None = None, settings: Mapping[str, Any] | None = None) -> dict[str, Plan]:
    """The plans called `labels` (default: DEFAULT_PLANS), each with `settings` added to its own. A
    setting the plan's strategy lacks, or one the plan itself sets otherwise, is a ValueError."""
    shared = dict(settings or {})
    if "budget" in shared:
        raise ValueError("settings must not hold the budget: every plan runs at each of the budgets")
    grid = {}
    for label in labels or DEFAULT_PLANS:
        plan = plan_of(label)
        fields = registry.get(plan.strategy).settings.model_fields
        for key, value in shared.items():
            if key not in fields:
                raise ValueError(f"setting {key!r} is not a setting of plan {label!r} (strategy {plan.strategy})")
            if plan.settings.get(key, value) != value:
                raise ValueError(
                    f"setting {key}={value!r} conflicts with plan {label!r}, which sets {key}={plan.settings[key]!r}"
                )
        grid[label] = Plan(strategy=plan.strategy, settings={**plan.settings, **shared}, label=label)
    return grid


def valid_at(plan: Plan, budget: int) -> bool:
    """Whether the plan's settings make sense at this budget (e.g. M=4 needs 4 | N)."""
    try:
        registry.get(plan.strategy).configure({**plan.settings, "budget": budget})
    except SettingsError:
        return False
    return True


def subset_accuracy(
    samples: Sequence[tuple[str | None, float | None]],
    correct: Sequence[bool],
    budget: int,
    method: VoteMethod,
    subsets: int,
    seed: int,
) -> float:
    """Expected accuracy of a vote over N samples, estimated from random N-subsets of one pool."""
    if len(correct) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(correct)} grades")
    rng = random.Random(seed)
    everything = list(range(len(samples)))
    draws = 1 if budget >= len(samples) else subsets
    hits = []
    for _ in range(draws):
        chosen = everything if budget >= len(samples) else rng.sample(everything, budget)
        selection = vote_samples([samples[i] for i in chosen], method)
        hits.append(correct[chosen[int(selection.chosen)]] if selection.chosen is not None else False)
    return fmean(hits)
