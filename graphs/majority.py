"""Majority vote: sample N answers, return the most frequent one (no verifier)."""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from graphs.sampling import answer_sampler
from graphs.settings import MajoritySettings
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.vote import select_answer


def build(settings: MajoritySettings) -> StrategyGraph:
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node("propose", answer_sampler(settings))
    graph.add_node("select", partial(select_answer, method="majority"))
    graph.add_edge(START, "propose")
    graph.add_edge("propose", "select")
    graph.add_edge("select", END)
    return graph.compile(name="majority")
