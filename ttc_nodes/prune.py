"""Select nodes that prune step-wise search: keep the best beams and spread their expansions (beam
search, lookahead), keep each DVTS subtree's best (Snell et al. 2024, §5.2), resample particles by PRM
weight (particle filtering)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from ttc_nodes.state import Candidate, NodeRuntime, SolveState


def _ranked(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Highest score first; equal scores keep their sampling order."""
    return sorted(candidates, key=lambda c: -(c.score if c.score is not None else -math.inf))


def prune_beams(
    state: SolveState,
    runtime: NodeRuntime,
    *,
    budget: int,
    beam_width: int,
    max_rounds: int,
    refill: bool = False,
) -> dict[str, Any]:
    """Beam search's selection: finished candidates leave the beam; of the rest keep the top
    N/M prefixes, each to be expanded M times. At `max_rounds` the live prefixes end as they are.

    Shrink (default): each finished answer holds one of the N places, so the next round runs
    N − finished lanes and the search ends with exactly N answers. Refill (search-and-learn): every round runs N lanes,
    spread over the kept prefixes; the search ends in the round the N-th answer finishes, keeping
    the best-scored of that round's answers, so it too ends with at most N answers.
    """
    if refill:
        return _refilled_beams(state, budget=budget, beam_width=beam_width, max_rounds=max_rounds)
    pool = state.get("pool", [])
    done = [c for c in pool if c.finished]
    live = _ranked([c for c in pool if not c.finished])
    slots = budget - len(state.get("finished", [])) - len(done)
    if slots <= 0 or not live or state.get("round", 0) >= max_rounds:
        return _stop(done, live)
    kept = live[: math.ceil(slots / beam_width)]
    counts = [beam_width] * len(kept)
    counts[-1] -= beam_width * len(kept) - min(slots, beam_width * len(kept))
    return {
        "pool": kept,
        "expansions": counts,
        "finished": done,
        "detail": {"kept": [c.key for c in kept], "expansions": counts, "slots": slots},
    }


def _refilled_beams(state: SolveState, *, budget: int, beam_width: int, max_rounds: int) -> dict[str, Any]:
    """Refill: the top min(N/M, live) prefixes share all N lanes (M each while N/M are live)."""
    pool = state.get("pool", [])
    room = max(0, budget - len(state.get("finished", [])))
    done = _ranked([c for c in pool if c.finished])
    live = _ranked([c for c in pool if not c.finished])
    if len(done) >= room or not live or state.get("round", 0) >= max_rounds:
        ending = [*done, *live]
        return _stop(ending[:room], [], dropped=[c.key for c in ending[room:]])
    kept = live[: budget // beam_width]
    counts = [budget // len(kept) + (1 if i < budget % len(kept) else 0) for i in range(len(kept))]
    return {
        "pool": kept,
        "expansions": counts,
        "finished": done,
        "detail": {"kept": [c.key for c in kept], "expansions": counts, "slots": budget, "answers_left": room},
    }


def prune_subtrees(
    state: SolveState,
    runtime: NodeRuntime,
    *,
    beam_width: int,
    max_rounds: int,
    final_vote: Literal["subtree_winners", "all_leaves"] = "subtree_winners",
) -> dict[str, Any]:
    """DVTS selection: each independent subtree keeps only its best candidate; a subtree whose best
    candidate has finished is done. Every kept subtree is expanded M times.

    A subtree that ends hands on its best candidate (`subtree_winners`), or all M candidates of its
    last expansion (`all_leaves`, as search-and-learn does), to the final vote.
    """
    by_subtree: dict[int, list[Candidate]] = {}
    for candidate in state.get("pool", []):
        by_subtree.setdefault(candidate.lineage or 0, []).append(candidate)
    ranked = [_ranked(members) for _, members in sorted(by_subtree.items())]
    done = [members for members in ranked if members[0].finished]
    live = [members for members in ranked if not members[0].finished]

    def handed(subtrees: list[list[Candidate]]) -> list[Candidate]:
        return [c for members in subtrees for c in (members if final_vote == "all_leaves" else members[:1])]

    if not live or state.get("round", 0) >= max_rounds:
        return _stop(handed(done), handed(live))
    return {
        "pool": [members[0] for members in live],
        "expansions": [beam_width] * len(live),
        "finished": handed(done),
        "detail": {"kept": [members[0].key for members in live], "subtrees_done": len(done)},
    }


def resample_particles(
    state: SolveState,
    runtime: NodeRuntime,
    *,
    budget: int,
    temperature: float,
    max_rounds: int,
    final_vote: Literal["unique", "multiplicity"] = "unique",
) -> dict[str, Any]:
    """Particle filtering: draw N particles with replacement, each with probability proportional to
    score^(1/temperature). Finished particles are carried, live ones are extended next round. The
    effective sample size of the weights is recorded, since an overconfident PRM collapses it.

    When the search ends, the final vote sees each distinct particle once (`unique`) or all N drawn
    particles, copies included (`multiplicity`, as its_hub's population does).
    """
    particles = [*state.get("carried", []), *state.get("pool", [])]
    scores = np.array([max(c.score if c.score is not None else 0.0, 1e-6) for c in particles])
    logits = np.log(scores) / temperature
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    ess = float(1.0 / np.sum(weights**2))
    seed = runtime.context.seed_for("resample", state.get("round", 0))
    draws = np.random.default_rng(seed).choice(len(particles), size=budget, replace=True, p=weights)
    drawn = [particles[i] for i in sorted(draws)]
    carried = [c for c in drawn if c.finished]
    live = [c for c in drawn if not c.finished]
    detail = {
        "ess": ess,
        "weights": {c.key: float(w) for c, w in zip(particles, weights, strict=True)},
        "drawn": [c.key for c in drawn],
    }
    if not live or state.get("round", 0) >= max_rounds:
        final = drawn if final_vote == "multiplicity" else list({c.key: c for c in drawn}.values())
        return {"pool": [], "carried": [], "finished": final, "expansions": [], "detail": detail}
    return {"pool": live, "carried": carried, "expansions": [1] * len(live), "detail": detail}


def _stop(done: list[Candidate], live: list[Candidate], **detail: Any) -> dict[str, Any]:
    return {"pool": [], "expansions": [], "finished": [*done, *live], "detail": {"stopped": True, **detail}}
