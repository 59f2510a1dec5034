"""The compute-optimal policy as pure functions and pydantic models, with no Prefect in them
(Snell et al. 2024, §3): `bins` cuts prompts into difficulty bins, `fit` fits θ*(bin, N) with
cross-validation, `table` is the policy a deployment loads, `allocation` splits a dataset's budget
across bins. The calibration flow feeds in outcomes and stores what comes out."""

from flows.policy.allocation import Allocation, allocate
from flows.policy.bins import assign_bin, predicted_difficulty, quantile_thresholds
from flows.policy.fit import PolicyFit, fit_policy, fold_assignment
from flows.policy.table import Plan, Policy, PolicyFileError

__all__ = [
    "Allocation",
    "Plan",
    "Policy",
    "PolicyFileError",
    "PolicyFit",
    "allocate",
    "assign_bin",
    "fit_policy",
    "fold_assignment",
    "predicted_difficulty",
    "quantile_thresholds",
]
