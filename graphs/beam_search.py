"""Beam search against a PRM (lookahead 0), and lookahead search (k > 0), which shares it
(Snell et al. 2024, §5.2).

Round 1 samples N first steps. Each round the PRM scores the candidates (after a k-step greedy
rollout, for lookahead), finished answers leave, the top N/M prefixes stay and each is expanded M
times, until no beam is live or 40 rounds have run; then best-of-N weighted over the finished answers.

Finished answers shrink the next round to N − finished lanes (the paper's N final candidates); with
`refill` every round runs N lanes until N answers have finished, as search-and-learn does.
"""

from __future__ import annotations

from functools import partial

from graphs.runner import StrategyGraph
from graphs.sampling import step_expander
from graphs.settings import BeamSettings
from graphs.stepwise import search_loop
from ttc_nodes.prune import prune_beams
from ttc_nodes.verify import verify, verify_with_lookahead


def build(settings: BeamSettings) -> StrategyGraph:
    assert settings.beam_width is not None
    expand = step_expander(settings, first_round=settings.beams, lane_factor=settings.lookahead + 1)
    if settings.lookahead:
        score = partial(
            verify_with_lookahead,
            lookahead=settings.lookahead,
            max_tokens=settings.max_step_tokens,
            aggregation=settings.aggregation,
        )
    else:
        score = partial(verify, aggregation=settings.aggregation)
    prune = partial(
        prune_beams,
        budget=settings.beams,
        beam_width=settings.beam_width,
        max_rounds=settings.max_rounds,
        refill=settings.refill,
    )
    return search_loop("lookahead" if settings.lookahead else "beam", expand=expand, verify=score, prune=prune)
