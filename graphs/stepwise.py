"""The loop every step-wise search shares (beam, lookahead, DVTS, particle filtering):

    START → expand → verify → prune ─┬─ prefixes still live → expand
                                     └─ none live           → select → END

Each strategy brings its own expand, verify and prune nodes; select is best-of-N weighted over the
finished answers.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.vote import select_answer


def searching(state: SolveState) -> str:
    """Loop while any prefix is still being searched."""
    return "expand" if state.get("pool") else "select"


def search_loop(name: str, *, expand: Any, verify: Any, prune: Any, prune_name: str = "prune") -> StrategyGraph:
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node("expand", expand)
    graph.add_node("verify", verify)
    graph.add_node(prune_name, prune)
    graph.add_node("select", partial(select_answer, method="weighted", source="finished"))
    graph.add_edge(START, "expand")
    graph.add_edge("expand", "verify")
    graph.add_edge("verify", prune_name)
    graph.add_conditional_edges(prune_name, searching, ["expand", "select"])
    graph.add_edge("select", END)
    return graph.compile(name=name)
