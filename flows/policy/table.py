"""The deployable compute-optimal policy (Snell et al. 2024, §3): the plans of the grid, the
difficulty cut points and the fitted table θ*(bin, N), read and written as one JSON file."""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.policy.bins import assign_bin
from flows.policy.fit import PolicyFit


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
