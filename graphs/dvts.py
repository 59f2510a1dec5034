"""Diverse verifier tree search: N/M independent subtrees, each grown greedily by PRM score.

Round 1 samples N first steps dealt into N/M subtrees of M. Each round every live subtree keeps
its best candidate and expands it M times; a subtree ends when its best candidate has finished.
Then best-of-N weighted over the subtrees' answers: each subtree's winner (`subtree_winners`), or
every leaf of each subtree's last expansion, N in all (`all_leaves`, as search-and-learn does).
"""

from __future__ import annotations

from functools import partial

from graphs.runner import StrategyGraph
from graphs.sampling import step_expander
from graphs.settings import DVTSSettings
from graphs.stepwise import search_loop
from ttc_nodes.prune import prune_subtrees
from ttc_nodes.verify import verify


def build(settings: DVTSSettings) -> StrategyGraph:
    assert settings.beam_width is not None
    expand = step_expander(settings, first_round=settings.beams, subtrees=settings.beams // settings.beam_width)
    prune = partial(
        prune_subtrees,
        beam_width=settings.beam_width,
        max_rounds=settings.max_rounds,
        final_vote=settings.final_vote,
    )
    return search_loop("dvts", expand=expand, verify=partial(verify, aggregation=settings.aggregation), prune=prune)
