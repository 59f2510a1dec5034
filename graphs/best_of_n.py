"""Best-of-N: sample N answers, score each with the PRM, return the highest-scored answer, or
(weighted) the answer whose group of equal answers has the largest summed score. With `early_stop`
set, the answers are sampled and scored in rounds until the PRM-weighted vote is settled."""

from __future__ import annotations

from functools import partial

from graphs.early_stopping import in_rounds
from graphs.linear import Steps, linear_graph
from graphs.runner import StrategyGraph
from graphs.sampling import answer_sampler
from graphs.settings import BestOfNSettings
from ttc_nodes.verify import verify
from ttc_nodes.vote import select_answer


def steps(settings: BestOfNSettings) -> Steps:
    return [
        ("propose", answer_sampler(settings)),
        ("verify", partial(verify, aggregation=settings.aggregation)),
        ("select", partial(select_answer, method="weighted" if settings.weighted else "best_of_n")),
    ]


def build(settings: BestOfNSettings) -> StrategyGraph:
    name = "best_of_n_weighted" if settings.weighted else "best_of_n"
    if settings.early_stop != "off":
        # Both settle on the PRM-weighted vote shares; best_of_n still selects its single best answer.
        return in_rounds(name, steps(settings), settings, weighting="score")
    return linear_graph(name, steps(settings))
