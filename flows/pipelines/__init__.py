"""Prefect flows over datasets: `evaluate` (one strategy, a compute-optimal policy or a total budget
over every prompt) and `calibrate` (fit the policy), their per-prompt tasks and their plots."""
