"""Fitting the compute-optimal table θ*(bin, N) (Snell et al. 2024, §3): for each difficulty bin and
budget, the plan with the best mean accuracy, chosen by two-fold cross-validation inside the bin so
that the accuracy reported for a choice is measured on prompts the choice never saw.

Every outcome carries what it actually spent (generations). A plan that stops early (docs/early-stopping.md)
spends less than its budget N: among plans of equal accuracy the cheaper wins, and the table reports the
chosen plans' actual mean spend beside their accuracy, so compute-optimal is credited with the savings."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
from pydantic import BaseModel


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
    # Generations actually spent, as the accuracies above: the held-out spend of the fold choices, and
    # each plan's mean over the bin. Empty in policies fitted before spend was recorded (read as N).
    cv_spend: dict[int, dict[int, float]] = {}
    plan_spend: dict[int, dict[int, dict[str, float]]] = {}

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

    def overall_spend(self, budget: int) -> float:
        """Cross-validated mean generations actually spent per problem at `budget` (at most `budget`)."""
        sizes = self.bin_sizes()
        self._require_budget(budget)
        spent = (self.cv_spend.get(b, {}).get(budget, float(budget)) for b in sizes)
        return math.fsum(n * s for n, s in zip(sizes.values(), spent, strict=True)) / sum(sizes.values())

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
    spend: Mapping[tuple[str, str, int], float] | None = None,
) -> PolicyFit:
    """Fit θ*(bin, N) by `folds`-fold cross-validation inside each bin (Snell et al. 2024, §3.1).

    `outcomes[(problem, plan label, N)]` is that plan's accuracy on that problem (0/1 or an expected
    value in [0, 1]); `bins[problem]` its difficulty bin. Budgets are those that occur in `outcomes`.
    `spend[(problem, plan label, N)]` is the generations that outcome used, in [0, N]; a cell without
    one spent its whole budget N.

    A plan is eligible in (bin, N) only if it has an outcome for every problem of the bin, so each
    fold's choice (fitted on the other folds) can be scored on its own held-out problems; eligibility
    reads which cells exist, never their values. The choice maximises mean accuracy; ties go to the
    cheaper plan (lower mean spend), then to the label first in sorted order. A fold's problems never
    influence the choice they are scored with.

    Raises ValueError for outcomes of problems without a bin, a bin with fewer problems than folds,
    a spend outside [0, N], or a (bin, N) where no plan is eligible."""
    unbinned = sorted({p for p, _, _ in outcomes} - bins.keys())
    if unbinned:
        raise ValueError(f"outcomes for problems without a bin: {unbinned[:5]}")
    invalid = [cell for cell, value in outcomes.items() if not 0.0 <= value <= 1.0]
    if invalid:
        raise ValueError(f"outcomes must lie in [0, 1]; {len(invalid)} do not, e.g. {invalid[0]}")
    spent = {cell: float(cell[2]) for cell in outcomes} | dict(spend or {})
    overspent = [cell for cell in outcomes if not 0.0 <= spent[cell] <= cell[2]]
    if overspent:
        cell = overspent[0]
        raise ValueError(f"spend must lie in [0, N]; {len(overspent)} do not, e.g. {cell} spent {spent[cell]}")
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
    cv_spend: dict[int, dict[int, float]] = defaultdict(dict)
    plan_spend: dict[int, dict[int, dict[str, float]]] = defaultdict(dict)
    for bin_, problems in sorted(members.items()):
        if len(problems) < folds:
            raise ValueError(f"bin {bin_} has {len(problems)} problems, fewer than the {folds} folds")
        for budget in budgets:
            eligible = [lb for lb in labels if all((p, lb, budget) in outcomes for p in problems)]
            if not eligible:
                raise ValueError(f"no plan has outcomes for all {len(problems)} problems of bin {bin_} at N={budget}")
            held_out: list[float] = []
            held_out_spend: list[float] = []
            for fold in range(folds):
                training = [p for p in problems if fold_of[p] != fold]
                choice = _best(
                    {lb: _mean(outcomes[(p, lb, budget)] for p in training) for lb in eligible},
                    {lb: _mean(spent[(p, lb, budget)] for p in training) for lb in eligible},
                )
                fold_choices[bin_].setdefault(budget, []).append(choice)
                tested = [p for p in problems if fold_of[p] == fold]
                held_out += [outcomes[(p, choice, budget)] for p in tested]
                held_out_spend += [spent[(p, choice, budget)] for p in tested]
            cv_accuracy[bin_][budget] = _mean(held_out)
            cv_spend[bin_][budget] = _mean(held_out_spend)
            plan_accuracy[bin_][budget] = {lb: _mean(outcomes[(p, lb, budget)] for p in problems) for lb in eligible}
            plan_spend[bin_][budget] = {lb: _mean(spent[(p, lb, budget)] for p in problems) for lb in eligible}
            choices[bin_][budget] = _best(plan_accuracy[bin_][budget], plan_spend[bin_][budget])
    return PolicyFit(
        choices=choices,
        fold_choices=fold_choices,
        cv_accuracy=cv_accuracy,
        plan_accuracy=plan_accuracy,
        bins=dict(bins),
        folds=fold_of,
        cv_spend=cv_spend,
        plan_spend=plan_spend,
    )


def _mean(values: Iterable[float]) -> float:
    # fsum is exact before the division, so plans with equal outcomes tie exactly.
    collected = [float(v) for v in values]
    return math.fsum(collected) / len(collected)


def _best(accuracy: Mapping[str, float], spend: Mapping[str, float]) -> str:
    """The label with the highest accuracy; ties go to the lower spend, then the first label in sorted order."""
    return min(accuracy, key=lambda label: (-accuracy[label], spend[label], label))
