"""Settings of each strategy: small pydantic models validated on construction.

A bad value fails here with a message naming the field (a budget of 0 or above MAX_BUDGET, a beam
width that does not divide the budget, a revision split whose product is not the budget).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ttc_nodes.scoring import Aggregation

MAX_BUDGET = 4096
"""The largest budget N a run may ask for. The paper sweeps N up to 256 (Snell et al. 2024, §5.2); 4096
bounds the compute of one solve and fits the integer column the budget is stored in."""


def _given_int(data: dict[str, Any], name: str, default: int) -> int | None:
    """`data[name]` as an int for the before-validators, or None when it is not one (the field's
    own validation then reports it, naming the field)."""
    value = data.get(name, default)
    if isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def default_beam_width(beams: int) -> int:
    """M = √N where N is a perfect square, else the largest divisor of N below √N."""
    return max(m for m in range(1, math.isqrt(beams) + 1) if beams % m == 0)


class StrategySettings(BaseModel):
    """Settings shared by every strategy. `budget` is N, in generations (full sampled answers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget: int = Field(16, ge=1, le=MAX_BUDGET, description="generations N the strategy may spend")
    temperature: float = Field(0.8, ge=0.0, description="sampling temperature of the proposer")
    max_answer_tokens: int = Field(512, ge=1, description="token limit of one full answer")
    max_step_tokens: int = Field(128, ge=1, description="token limit of one step in step-wise search")
    aggregation: Aggregation = Field("last", description="answer score from step scores: last, min or prod")

    @property
    def needs_verifier(self) -> bool:
        """Whether the strategy scores candidates with a PRM."""
        return True


EarlyStopRule = Literal["off", "posterior", "confidence"]


class EarlyStopSettings(StrategySettings):
    """Early stopping (docs/early-stopping.md): sample in rounds and stop once the leading answer is
    settled. Off by default, and then the strategy's graph is exactly the one without it."""

    early_stop: EarlyStopRule = Field(
        "off", description="stop sampling once the answer is settled: off, posterior or confidence (DeepConf)"
    )
    early_stop_threshold: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="posterior: P(the leader stays the leader); confidence: the kept samples' consensus share",
    )
    early_stop_round: int | None = Field(
        None, ge=1, description="samples per round (default max(1, N/4)); at most the budget"
    )
    early_stop_keep: float = Field(
        0.9, gt=0.0, lt=1.0, description="confidence: share of the first round kept (its confidence percentile)"
    )

    @model_validator(mode="after")
    def _check_round(self) -> EarlyStopSettings:
        if self.early_stop_round is not None and self.early_stop_round > self.budget:
            raise ValueError(f"early_stop_round={self.early_stop_round} is larger than the budget N={self.budget}")
        return self

    @property
    def round_size(self) -> int:
        """Samples per round: `early_stop_round`, default max(1, N/4)."""
        return self.early_stop_round if self.early_stop_round is not None else max(1, self.budget // 4)


class MajoritySettings(EarlyStopSettings):
    @property
    def needs_verifier(self) -> bool:
        return False


class BestOfNSettings(EarlyStopSettings):
    weighted: bool = Field(False, description="sum scores per answer (best-of-N weighted)")


class WeightedBestOfNSettings(BestOfNSettings):
    weighted: bool = Field(True, description="sum scores per answer (best-of-N weighted)")


class TreeSearchSettings(StrategySettings):
    """What beam search, lookahead search and DVTS share: N beams expanded M ways per round."""

    beam_width: int | None = Field(None, ge=1, description="M: expansions per kept beam (default √N)")
    max_rounds: int = Field(40, ge=1, description="rounds of expansion before live beams are cut")
    lookahead: int = Field(0, ge=0, description="k: greedy rollout steps before scoring")

    @property
    def beams(self) -> int:
        """N: parallel candidates per round (the budget split over the k+1 lanes of lookahead)."""
        return self.budget // (self.lookahead + 1)

    @model_validator(mode="before")
    @classmethod
    def _fill_beam_width(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("beam_width") is None:
            budget = _given_int(data, "budget", cls.model_fields["budget"].default)
            lookahead = _given_int(data, "lookahead", cls.model_fields["lookahead"].default)
            if budget is None or lookahead is None or lookahead < 0:
                return data
            beams = budget // (lookahead + 1)
            # Out-of-range budgets are left for the field to refuse (√N of a huge N takes long).
            if 1 <= beams <= MAX_BUDGET:
                data = {**data, "beam_width": default_beam_width(beams)}
        return data

    @model_validator(mode="after")
    def _check_split(self) -> TreeSearchSettings:
        if self.budget % (self.lookahead + 1):
            raise ValueError(
                f"budget N={self.budget} must be a multiple of lookahead+1={self.lookahead + 1} "
                f"(lookahead search costs N·(k+1) generations)"
            )
        assert self.beam_width is not None
        if self.beams % self.beam_width:
            raise ValueError(f"beam_width M={self.beam_width} does not divide the {self.beams} beams N")
        return self


class BeamSettings(TreeSearchSettings):
    # The paper ends beam search "with N final answer candidates" (Snell et al. 2024, §5.2): shrinking
    # keeps exactly that, so it is the default; refill is how search-and-learn runs it.
    refill: bool = Field(
        False,
        description="keep N lanes busy after beams finish (search-and-learn) instead of shrinking to N − finished",
    )


class LookaheadSettings(BeamSettings):
    lookahead: int = Field(1, ge=1, description="k: greedy rollout steps before scoring")


class DVTSSettings(TreeSearchSettings):
    """DVTS: N/M independent subtrees, each expanded M ways and kept greedily by PRM score."""

    final_vote: Literal["subtree_winners", "all_leaves"] = Field(
        "subtree_winners",
        description="vote over each subtree's final answer, or over all M leaves of each subtree's last "
        "expansion (search-and-learn)",
    )


class RevisionSettings(EarlyStopSettings):
    chains: int | None = Field(None, ge=1, description="parallel revision chains")
    chain_length: int | None = Field(None, ge=1, description="answers per chain (1 + revisions)")
    selection: Literal["verifier", "majority"] = Field(
        "verifier", description="hierarchical PRM vote, or one flat majority vote"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_split(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        budget = _given_int(data, "budget", cls.model_fields["budget"].default)
        if budget is None:
            return data
        chains, length = data.get("chains"), data.get("chain_length")
        if chains is None and length is None:
            # At equal budget, sequential revisions slightly beat parallel sampling (Snell et al. 2024, §6.2).
            length = min(budget, 4)
        if chains is None and length:
            chains = max(1, budget // int(length))
        if length is None and chains:
            length = max(1, budget // int(chains))
        return {**data, "chains": chains, "chain_length": length}

    @model_validator(mode="after")
    def _check_split(self) -> RevisionSettings:
        assert self.chains is not None and self.chain_length is not None
        if self.chains * self.chain_length != self.budget:
            raise ValueError(
                f"chains × chain_length = {self.chains} × {self.chain_length} must equal budget N={self.budget}"
            )
        return self

    @property
    def needs_verifier(self) -> bool:
        return self.selection == "verifier"

    @property
    def ratio(self) -> float:
        """The sequential/parallel ratio: chain length over number of chains."""
        assert self.chains is not None and self.chain_length is not None
        return self.chain_length / self.chains


class ParticleFilteringSettings(EarlyStopSettings):
    resample_temperature: float = Field(
        1.0, gt=0.0, description="temperature of the resampling weights (score^(1/T)); higher keeps diversity"
    )
    max_rounds: int = Field(40, ge=1, description="rounds of extension before live particles are cut")
    # Resampling already draws particles in proportion to their PRM weight; counting copies in the
    # weighted vote would weigh each answer by its score twice, so by default each particle votes once.
    final_vote: Literal["unique", "multiplicity"] = Field(
        "unique",
        description="weighted vote over the distinct final particles, or over all N with their copies (its_hub)",
    )


class MCTSSettings(StrategySettings):
    """Monte-Carlo tree search over steps: PUCT selection, k-way expansion, PRM evaluation, mean backup."""

    expansions: int | None = Field(
        None, ge=1, description="k: next steps sampled per expanded leaf (default min(4, N), N/2 with rollout)"
    )
    c_puct: float = Field(1.0, gt=0.0, description="exploration constant of PUCT")
    prior: Literal["logprob", "uniform"] = Field(
        "logprob", description="PUCT prior: softmax of the siblings' step log-probabilities, or uniform (UCT)"
    )
    rollout: bool = Field(False, description="value a new step by a greedy rollout to an answer, not its own score")
    final: Literal["most_visited", "weighted_vote"] = Field(
        "most_visited", description="answer of the most-visited complete path, or a weighted vote over finished leaves"
    )
    parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="leaves expanded per iteration, in one proposer call, chosen by PUCT with a virtual loss",
    )
    # Four graph steps per iteration under the runner's recursion limit of 1000.
    max_iterations: int = Field(200, ge=1, le=240, description="select-expand-evaluate-backup iterations at most")

    @model_validator(mode="before")
    @classmethod
    def _fill_expansions(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("expansions") is None:
            budget = _given_int(data, "budget", cls.model_fields["budget"].default)
            if budget is not None:
                parallel = _given_int(data, "parallel", 1) or 1
                rollout = data.get("rollout") in (True, "true", "True", 1, "1")
                lanes = budget // (1 + parallel) if rollout else budget
                data = {**data, "expansions": max(1, min(4, lanes))}
        return data

    @model_validator(mode="after")
    def _check_expansions(self) -> MCTSSettings:
        assert self.expansions is not None
        lanes = (1 + self.parallel) * self.expansions if self.rollout else self.expansions
        if lanes > self.budget:
            rollouts = (" and P·k" if self.parallel > 1 else " and k") + " rollout lanes" if self.rollout else ""
            raise ValueError(
                f"expansions k={self.expansions} does not fit the budget N={self.budget}: the first expansion "
                f"opens k lanes{rollouts}"
            )
        return self
