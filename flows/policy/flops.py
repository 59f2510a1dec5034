"""The FLOPs-matched exchange of test-time compute for model size (Snell et al. 2024, §7, restated in
PAPER.md §5), as pure functions.

A model of P parameters pretrained on D_pretrain tokens costs X = 6·P·D_pretrain FLOPs, and serving
D_inference tokens costs Y = 2·P·D_inference. A model M times larger costs M·(X + Y). With
R = D_inference / D_pretrain, the small model matches that total by spending

    M + 3·(M − 1) / R

times its own base inference compute: that many generations per prompt where the larger model makes
one (14 + 39/R for M = 14: ≈ 256 at R = 0.16, ≈ 64 at R = 0.79, ≈ 16 at R = 22).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Exchange:
    """One inference ratio R of the exchange: the FLOPs of both models, and what the small model may
    spend at test time to match the larger one's total."""

    inference_ratio: float  # R = D_inference / D_pretrain
    inference_tokens: float  # D_inference = R · D_pretrain
    multiplier: float  # M + 3(M − 1)/R: the small model's matched inference compute, in base units
    matched_budget: int  # the power of two nearest the multiplier (log scale): the paper's budget N
    small_pretrain_flops: float  # X_small = 6 · P_small · D_pretrain
    small_inference_flops: float  # Y_small = 2 · P_small · D_inference (one generation per prompt)
    large_pretrain_flops: float
    large_inference_flops: float
    matched_small_total_flops: float  # X_small + multiplier · Y_small, equal to the large model's total

    @property
    def large_total_flops(self) -> float:
        return self.large_pretrain_flops + self.large_inference_flops


@dataclass(frozen=True)
class Comparison:
    """Who wins one difficulty bin at one inference ratio: the small model with its FLOPs-matched test
    time compute (at the run budget nearest the matched budget), or the larger model."""

    inference_ratio: float
    bin: str
    small_budget: int
    small_strategy: str
    small_accuracy: float
    small_prompts: int
    large_accuracy: float
    large_prompts: int

    @property
    def winner(self) -> str:
        if self.small_accuracy > self.large_accuracy:
            return "test-time compute"
        if self.small_accuracy < self.large_accuracy:
            return "larger model"
        return "tie"


def parameter_multiplier(small_params: float, large_params: float) -> float:
    """M = large / small parameters; refuses sizes that are not positive or a 'larger' model that is not."""
    for name, value in (("--small-params", small_params), ("--large-params", large_params)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number of parameters, got {value:g}")
    if large_params <= small_params:
        raise ValueError(f"--large-params ({large_params:g}) must be larger than --small-params ({small_params:g})")
    return large_params / small_params


def flops_multiplier(multiplier: float, inference_ratio: float) -> float:
    """M + 3(M − 1)/R: how many times its base inference compute the small model may spend so that its
    pretraining plus inference FLOPs equal those of the model M times larger (Snell et al. 2024, §7)."""
    if not math.isfinite(inference_ratio) or inference_ratio <= 0:
        raise ValueError(f"an inference ratio R must be positive, got {inference_ratio:g}")
    return multiplier + 3.0 * (multiplier - 1.0) / inference_ratio


def nearest_budget(generations: float, budgets: Sequence[int] | None = None) -> int:
    """The budget nearest `generations` on a log₂ scale, from `budgets` (default: powers of two from 1);
    of two equally near, the smaller (never credit the small model with more than a tie's worth)."""
    if generations <= 0:
        raise ValueError(f"generations must be positive, got {generations:g}")
    if budgets is None:
        low = 2 ** math.floor(math.log2(generations))
        budgets = [max(1, low), max(1, low) * 2]
    if not budgets:
        raise ValueError("no budgets to choose from")
    return min(sorted(budgets), key=lambda b: abs(math.log2(b) - math.log2(generations)))


def exchange(small_params: float, large_params: float, pretrain_tokens: float, inference_ratio: float) -> Exchange:
    """The FLOPs-matched exchange at one inference ratio R, with D_inference = R · D_pretrain."""
    multiplier = parameter_multiplier(small_params, large_params)
    if not math.isfinite(pretrain_tokens) or pretrain_tokens <= 0:
        raise ValueError(f"--pretrain-tokens must be a positive number of tokens, got {pretrain_tokens:g}")
    matched = flops_multiplier(multiplier, inference_ratio)
    inference_tokens = inference_ratio * pretrain_tokens
    small_pretrain = 6.0 * small_params * pretrain_tokens
    small_inference = 2.0 * small_params * inference_tokens
    return Exchange(
        inference_ratio=inference_ratio,
        inference_tokens=inference_tokens,
        multiplier=matched,
        matched_budget=nearest_budget(matched),
        small_pretrain_flops=small_pretrain,
        small_inference_flops=small_inference,
        large_pretrain_flops=6.0 * large_params * pretrain_tokens,
        large_inference_flops=2.0 * large_params * inference_tokens,
        matched_small_total_flops=small_pretrain + matched * small_inference,
    )


def parse_ratios(text: str) -> list[float]:
    """`0.16,0.79,22` → [0.16, 0.79, 22.0]; each must be a positive number."""
    ratios = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"--inference-ratio expects comma-separated numbers, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"an inference ratio R must be positive, got {part.strip()!r}")
        ratios.append(value)
    return ratios


def compare(
    exchanges: Sequence[Exchange],
    small: Mapping[tuple[str, int, str], tuple[int, int]],
    large: Mapping[str, tuple[int, int]],
    large_budget: int = 1,
) -> list[Comparison]:
    """Per ratio and difficulty bin, the small model at its FLOPs-matched budget against the larger model.

    `small` maps (strategy, budget, bin) → (correct, graded) of the small model's runs; `large` maps
    bin → (correct, graded) of the larger model's run at `large_budget` generations per prompt. The
    small model's budget is the one of its runs nearest multiplier × `large_budget` (log scale)."""
    budgets = sorted({budget for _, budget, _ in small})
    comparisons = []
    for matched in exchanges:
        budget = nearest_budget(matched.multiplier * large_budget, budgets)
        for (strategy, at, bin_), (correct, graded) in sorted(small.items()):
            if at != budget or not graded or bin_ not in large or not large[bin_][1]:
                continue
            large_correct, large_graded = large[bin_]
            comparisons.append(
                Comparison(
                    inference_ratio=matched.inference_ratio,
                    bin=bin_,
                    small_budget=budget,
                    small_strategy=strategy,
                    small_accuracy=correct / graded,
                    small_prompts=graded,
                    large_accuracy=large_correct / large_graded,
                    large_prompts=large_graded,
                )
            )
    return comparisons
