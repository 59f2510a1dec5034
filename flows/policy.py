"""The compute-optimal policy (Snell et al. 2024, §3–§4): difficulty bins, the table θ*(bin, N) fitted with
two-fold cross-validation inside each bin, and, beyond the paper, a split of a whole dataset's budget
across bins.

Pure functions and pydantic models: the calibration flow feeds in outcomes, stores what comes out.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Plan(BaseModel):
    """One θ of the grid: a strategy and its settings, without the budget, e.g. label "beam M=4"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: str
    settings: dict[str, Any] = Field(default_factory=dict)
    label: str

    @field_validator("settings")
    @classmethod
    def _no_budget(cls, settings: dict[str, Any]) -> dict[str, Any]:
        if "budget" in settings:
            raise ValueError("settings must not hold the budget: a plan is chosen per budget")
        return settings


# Difficulty bins


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


# Fitting θ*(bin, N)


def fold_assignment(bins: Mapping[str, int], *, folds: int = 2, seed: int = 0) -> dict[str, int]:
    """Problem key -> fold 0..folds−1, balanced inside each bin (sizes differ by at most one).

    Depends only on the keys, their bins and the seed: each bin's keys are sorted, then shuffled by a
    generator seeded with (seed, bin), so adding a bin never reshuffles the others."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    members: dict[int, list[str]] = defaultdict(list)
    for key, bin_ in bins.items():
        members[bin_].append(key)
    result: dict[str, int] = {}
    for bin_, keys in members.items():
        keys.sort()
        rng = np.random.default_rng([seed, bin_ % 2**32])
        for position, index in enumerate(rng.permutation(len(keys))):
            result[keys[index]] = position % folds
    return result


class PolicyFit(BaseModel):
    """θ*(bin, N) and the cross-validated accuracy behind it.

    `choices` is fitted on all of a bin's problems (what a deployment uses); `fold_choices[b][N][f]`
    is fitted on the bin's problems outside fold f and scored only on fold f; `cv_accuracy` is the
    mean over the bin's problems of those held-out scores."""

    choices: dict[int, dict[int, str]]
    fold_choices: dict[int, dict[int, list[str]]]
    cv_accuracy: dict[int, dict[int, float]]
    plan_accuracy: dict[int, dict[int, dict[str, float]]]  # bin -> N -> label -> mean over the bin
    bins: dict[str, int]  # problem key -> bin
    folds: dict[str, int]  # problem key -> fold

    def bin_sizes(self) -> dict[int, int]:
        """Calibration problems per bin."""
        sizes: dict[int, int] = defaultdict(int)
        for bin_ in self.bins.values():
            sizes[bin_] += 1
        return dict(sorted(sizes.items()))

    def overall(self, budget: int) -> float:
        """Cross-validated accuracy at `budget` over all problems (bins weighted by their size)."""
        sizes = self.bin_sizes()
        self._require_budget(budget)
        return math.fsum(n * self.cv_accuracy[b][budget] for b, n in sizes.items()) / sum(sizes.values())

    def baseline(self, label: str, budget: int) -> float:
        """A fixed plan's mean accuracy at `budget` over all problems, e.g. best-of-N weighted."""
        sizes = self.bin_sizes()
        self._require_budget(budget)
        missing = [b for b in sizes if label not in self.plan_accuracy[b][budget]]
        if missing:
            raise ValueError(f"plan {label!r} has no complete outcomes at N={budget} in bins {missing}")
        total = math.fsum(n * self.plan_accuracy[b][budget][label] for b, n in sizes.items())
        return total / sum(sizes.values())

    def _require_budget(self, budget: int) -> None:
        for b, by_budget in self.cv_accuracy.items():
            if budget not in by_budget:
                raise ValueError(f"budget {budget} was not calibrated in bin {b} (have {sorted(by_budget)})")


def fit_policy(
    outcomes: Mapping[tuple[str, str, int], float],
    bins: Mapping[str, int],
    *,
    folds: int = 2,
    seed: int = 0,
) -> PolicyFit:
    """Fit θ*(bin, N) by `folds`-fold cross-validation inside each bin (Snell et al. 2024, §4).

    `outcomes[(problem, plan label, N)]` is that plan's accuracy on that problem (0/1 or an expected
    value in [0, 1]); `bins[problem]` its difficulty bin. Budgets are those that occur in `outcomes`.

    A plan is eligible in (bin, N) only if it has an outcome for every problem of the bin, so each
    fold's choice (fitted on the other folds) can be scored on its own held-out problems; eligibility
    reads which cells exist, never their values. The choice maximises mean accuracy; ties go to the
    label first in sorted order. A fold's problems never influence the choice they are scored with.

    Raises ValueError for outcomes of problems without a bin, a bin with fewer problems than folds,
    or a (bin, N) where no plan is eligible."""
    unbinned = sorted({p for p, _, _ in outcomes} - bins.keys())
    if unbinned:
        raise ValueError(f"outcomes for problems without a bin: {unbinned[:5]}")
    invalid = [cell for cell, value in outcomes.items() if not 0.0 <= value <= 1.0]
    if invalid:
        raise ValueError(f"outcomes must lie in [0, 1]; {len(invalid)} do not, e.g. {invalid[0]}")
    fold_of = fold_assignment(bins, folds=folds, seed=seed)
    budgets = sorted({n for _, _, n in outcomes})
    labels = sorted({label for _, label, _ in outcomes})
    members: dict[int, list[str]] = defaultdict(list)
    for key in sorted(bins):
        members[bins[key]].append(key)

    choices: dict[int, dict[int, str]] = defaultdict(dict)
    fold_choices: dict[int, dict[int, list[str]]] = defaultdict(dict)
    cv_accuracy: dict[int, dict[int, float]] = defaultdict(dict)
    plan_accuracy: dict[int, dict[int, dict[str, float]]] = defaultdict(dict)
    for bin_, problems in sorted(members.items()):
        if len(problems) < folds:
            raise ValueError(f"bin {bin_} has {len(problems)} problems, fewer than the {folds} folds")
        for budget in budgets:
            eligible = [lb for lb in labels if all((p, lb, budget) in outcomes for p in problems)]
            if not eligible:
                raise ValueError(f"no plan has outcomes for all {len(problems)} problems of bin {bin_} at N={budget}")
            held_out: list[float] = []
            for fold in range(folds):
                training = [p for p in problems if fold_of[p] != fold]
                choice = _argmax({lb: _mean(outcomes[(p, lb, budget)] for p in training) for lb in eligible})
                fold_choices[bin_].setdefault(budget, []).append(choice)
                held_out += [outcomes[(p, choice, budget)] for p in problems if fold_of[p] == fold]
            cv_accuracy[bin_][budget] = _mean(held_out)
            plan_accuracy[bin_][budget] = {lb: _mean(outcomes[(p, lb, budget)] for p in problems) for lb in eligible}
            choices[bin_][budget] = _argmax(plan_accuracy[bin_][budget])
    return PolicyFit(
        choices=choices,
        fold_choices=fold_choices,
        cv_accuracy=cv_accuracy,
        plan_accuracy=plan_accuracy,
        bins=dict(bins),
        folds=fold_of,
    )


def _mean(values: Iterable[float]) -> float:
    # fsum is exact before the division, so plans with equal outcomes tie exactly.
    collected = [float(v) for v in values]
    return math.fsum(collected) / len(collected)


def _argmax(table: Mapping[str, float]) -> str:
    """The label with the highest value; ties go to the first label in sorted order."""
    return min(table, key=lambda label: (-table[label], label))


# The deployable policy


class PolicyFileError(ValueError):
    """A policy file that cannot be read, named with what is wrong."""


class Policy(BaseModel):
    """What a deployment needs: difficulty cut points, the plans and the table θ*(bin, N)."""

    model_config = ConfigDict(extra="forbid")

    difficulty: Literal["predicted", "oracle"]
    difficulty_samples: int = Field(ge=1, description="K samples behind each difficulty estimate")
    thresholds: list[float]
    plans: dict[str, Plan]  # label -> plan
    fit: PolicyFit
    budgets: list[int]
    calibration: dict[str, Any] = Field(default_factory=dict)  # dataset spec, models, created_at...

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if self.thresholds != sorted(self.thresholds):
            raise ValueError(f"thresholds must be ascending, got {self.thresholds}")
        if not self.budgets or self.budgets != sorted(set(self.budgets)) or self.budgets[0] < 1:
            raise ValueError(f"budgets must be positive, ascending and distinct, got {self.budgets}")
        for label, plan in self.plans.items():
            if plan.label != label:
                raise ValueError(f"plan under key {label!r} is labelled {plan.label!r}")
        bins = len(self.thresholds) + 1
        for bin_, by_budget in self.fit.choices.items():
            if not 1 <= bin_ <= bins:
                raise ValueError(f"fit has bin {bin_}, outside 1..{bins}")
            if sorted(by_budget) != self.budgets:
                raise ValueError(f"bin {bin_} is fitted at budgets {sorted(by_budget)}, not {self.budgets}")
            unknown = sorted(set(by_budget.values()) - self.plans.keys())
            if unknown:
                raise ValueError(f"bin {bin_} chooses unknown plans {unknown}")
        if not self.fit.choices:
            raise ValueError("fit has no bins")
        return self

    def bin_of(self, value: float) -> int:
        """The difficulty bin of a pass@1 or mean PRM score (bin 1 easiest)."""
        return assign_bin(value, self.thresholds)

    def plan_for(self, bin: int, budget: int) -> tuple[Plan, int]:
        """θ*(bin, N) and the N it was calibrated at: the largest calibrated budget ≤ `budget`.

        A bin that had no calibration problems (possible when many values tie at a cut point, or for
        a value beyond every calibration value) uses the nearest bin that had some, the harder on a
        tie. A budget below the smallest calibrated one is a ValueError."""
        bins = len(self.thresholds) + 1
        if not 1 <= bin <= bins:
            raise ValueError(f"bin {bin} is outside 1..{bins}")
        position = bisect.bisect_right(self.budgets, budget)
        if position == 0:
            raise ValueError(f"budget {budget} is below the smallest calibrated budget {self.budgets[0]}")
        calibrated = self.budgets[position - 1]
        return self.plans[self.fit.choices[self._calibrated_bin(bin)][calibrated]], calibrated

    def configured_plans(self) -> list[tuple[str, Any]]:
        """(strategy, validated settings) of every plan the table chooses, at every budget it is
        chosen for; a plan a strategy refuses at its budget (a beam width that does not divide it)
        raises the strategy's SettingsError, naming the plan, before anything runs."""
        from graphs import registry
        from graphs.registry import SettingsError

        configured = []
        chosen = sorted({(label, budget) for row in self.fit.choices.values() for budget, label in row.items()})
        for label, budget in chosen:
            plan = self.plans[label]
            try:
                configured.append(
                    (plan.strategy, registry.get(plan.strategy).configure({**plan.settings, "budget": budget}))
                )
            except SettingsError as error:
                raise SettingsError(f"policy plan {label!r} at budget {budget}: {error}") from error
        return configured

    def curves(self) -> dict[int, dict[int, float]]:
        """Bin -> N -> cross-validated accuracy, for every bin 1..B: the input of `allocate`. A bin
        without calibration problems carries the curve of the bin whose table `plan_for` uses."""
        bins = range(1, len(self.thresholds) + 2)
        return {b: dict(self.fit.cv_accuracy[self._calibrated_bin(b)]) for b in bins}

    def _calibrated_bin(self, bin: int) -> int:
        """`bin` if it had calibration problems, else the nearest that had, the harder on a tie."""
        return min(self.fit.choices, key=lambda b: (abs(b - bin), -b))

    def save(self, path: str | Path) -> None:
        """Write the policy as pretty JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read a policy written by `save`; PolicyFileError names the file and what is wrong."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise PolicyFileError(f"cannot read policy file {path}: {error}") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PolicyFileError(f"policy file {path} is not JSON: {error}") from error
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
            )
            raise PolicyFileError(f"policy file {path} is not a valid policy: {problems}") from error


# Beyond the paper: a dataset's budget split across bins


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
