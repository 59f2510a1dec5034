"""Best-of-N: sample N answers, score each with the PRM, return the highest-scored answer, or
(weighted) the answer whose group of equal answers has the largest summed score."""

from __future__ import annotations

from functools import partial

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
    return linear_graph("best_of_n_weighted" if settings.weighted else "best_of_n", steps(settings))
