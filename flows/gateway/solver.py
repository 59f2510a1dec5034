"""The gateway's searches: each request a traced solve (the same `solve_question` as `ttc solve`),
run on a thread pool so requests search at once on the shared engines, and stoppable between two
node executions when the client goes away or the request runs out of time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from flows.gateway.requests import Plan
from flows.policy import Policy, predicted_difficulty
from flows.service.config import ModelSettings
from flows.service.solving import SolveOutcome, engines_for, solve_question
from graphs import registry
from graphs.runner import StepEvent
from ttc_nodes.budget import Spend

DIFFICULTY_STRATEGY = "best_of_n_weighted"


class SearchStopped(RuntimeError):
    """Raised inside the search to end it: the client disconnected, or the request timed out."""


class Control:
    """One request's handle on its search: `stop(reason)` ends it at the next node boundary (the
    solve is marked failed with the reason, its trace so far kept). It also counts the tokens the
    search generated and passes each node execution on to `on_step` (streaming progress)."""

    def __init__(self, on_step: Callable[[StepEvent], None] | None = None) -> None:
        self.on_step = on_step
        self.reason: str | None = None
        self.generated_tokens = 0
        self._stopped = threading.Event()
        self._raised = False

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def step(self, event: StepEvent) -> None:
        if self._stopped.is_set() and not self._raised:
            self._raised = True  # once: the runner then reports the failure through this sink too
            raise SearchStopped(f"search stopped: {self.reason}")
        self.generated_tokens += sum(candidate.tokens for candidate in event.new)
        if self.on_step is not None and event.error is None:
            self.on_step(event)


@dataclass(frozen=True)
class Solved:
    """A finished request: the solve that answers it and, for compute-optimal, the difficulty
    estimate that picked its plan (a solve of its own, in a run of its own)."""

    outcome: SolveOutcome
    generated_tokens: int
    difficulty: SolveOutcome | None = None
    chosen: dict[str, Any] = field(default_factory=dict)

    @property
    def spend(self) -> Spend:
        return self.outcome.spend + (self.difficulty.spend if self.difficulty else Spend())


class Solver:
    """Runs plans on `workers` threads against one set of engines and one database."""

    def __init__(
        self, models: ModelSettings, database: str | None, policy: Policy | None = None, workers: int = 8
    ) -> None:
        if policy is not None and policy.difficulty != "predicted":
            raise ValueError(
                "the gateway bins a prompt by its predicted difficulty (mean PRM score): "
                "this policy was fitted on oracle difficulty, which needs the reference answer"
            )
        self.models, self.database, self.policy = models, database, policy
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ttc-gateway")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._controls: set[Control] = set()

    def warm_up(self) -> None:
        """Load the engines the default plans (and every plan of the policy) use, before serving."""
        plans = [(DIFFICULTY_STRATEGY, registry.get(DIFFICULTY_STRATEGY).configure({"budget": 1}))]
        if self.policy is not None:
            plans += self.policy.configured_plans()
        for name, settings in plans:
            engines_for(name, settings, self.models)

    @property
    def in_flight(self) -> int:
        """Searches running now (queued requests not counted)."""
        return self._in_flight

    def submit(self, question: str, plan: Plan, control: Control, seed: int | None = None) -> Future[Solved]:
        return self.pool.submit(self._run, question, plan, control, seed)

    def close(self, reason: str = "the gateway stopped") -> None:
        """Stop every search (each at its next node boundary) and drop the queued ones."""
        with self._lock:
            controls = list(self._controls)
        for control in controls:
            control.stop(reason)
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, question: str, plan: Plan, control: Control, seed: int | None) -> Solved:
        if control.stopped:  # gone while queued: nothing was written
            raise SearchStopped(f"search stopped before it started: {control.reason}")
        models = self.models if seed is None else self.models.model_copy(update={"seed": seed})
        with self._lock:
            self._in_flight += 1
            self._controls.add(control)
        try:
            if plan.compute_optimal:
                return self._compute_optimal(question, plan, control, models)
            outcome = self._solve(question, plan.strategy, plan.values, control, models, {"door": "gateway"})
            return Solved(outcome, control.generated_tokens)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._controls.discard(control)

    def _solve(
        self,
        question: str,
        strategy: str,
        values: dict[str, Any],
        control: Control,
        models: ModelSettings,
        detail: dict[str, Any],
    ) -> SolveOutcome:
        return solve_question(
            question,
            strategy=strategy,
            values=values,
            models=models,
            database=self.database,
            detail=detail,
            progress=control,
        )

    def _compute_optimal(self, question: str, plan: Plan, control: Control, models: ModelSettings) -> Solved:
        """Estimate the prompt's difficulty (mean PRM score of K samples), bin it, and run θ*(bin, N)
        (Snell et al. 2024, §3), as `ttc evaluate --policy` does for each prompt."""
        policy = self.policy
        assert policy is not None
        difficulty = self._solve(
            question,
            DIFFICULTY_STRATEGY,
            {"budget": policy.difficulty_samples},
            control,
            models,
            {"door": "gateway", "purpose": "difficulty"},
        )
        predicted = predicted_difficulty(score for _, score in difficulty.samples)
        bin_ = policy.bin_of(predicted)
        chosen, calibrated = policy.plan_for(bin_, plan.budget)
        extra = {"bin": bin_, "difficulty": predicted, "plan": chosen.label, "difficulty_run": difficulty.run_id}
        values = {**chosen.settings, **plan.values, "budget": calibrated}
        outcome = self._solve(question, chosen.strategy, values, control, models, {"door": "gateway", **extra})
        return Solved(outcome, control.generated_tokens, difficulty, {**extra, "strategy": chosen.strategy})
