"""Majority vote: sample N answers, return the most frequent one (no verifier)."""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from graphs.settings import MajoritySettings
from ttc_nodes.propose import propose_answers
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.vote import select_answer


def build(settings: MajoritySettings) -> StrategyGraph:
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node(
        "propose",
        partial(
            propose_answers,
            n=settings.budget,
            max_tokens=settings.max_answer_tokens,
            temperature=settings.temperature,
        ),
    )
    graph.add_node("select", partial(select_answer, method="majority"))
    graph.add_edge(START, "propose")
    graph.add_edge("propose", "select")
    graph.add_edge("select", END)
    return graph.compile(name="majority")
