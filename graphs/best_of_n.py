"""Best-of-N: sample N answers, score each with the PRM, return the highest-scored answer, or
(weighted) the answer whose group of equal answers has the largest summed score."""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from graphs.sampling import answer_sampler
from graphs.settings import BestOfNSettings
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify
from ttc_nodes.vote import select_answer


def build(settings: BestOfNSettings) -> StrategyGraph:
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node("propose", answer_sampler(settings))
    graph.add_node("verify", partial(verify, aggregation=settings.aggregation))
    graph.add_node("select", partial(select_answer, method="weighted" if settings.weighted else "best_of_n"))
    graph.add_edge(START, "propose")
    graph.add_edge("propose", "verify")
    graph.add_edge("verify", "select")
    graph.add_edge("select", END)
    return graph.compile(name="best_of_n_weighted" if settings.weighted else "best_of_n")
