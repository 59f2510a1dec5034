"""Strategies that are a straight line of nodes, START → n1 → n2 → … → END (majority, best-of-N, and
most strategies a user writes first). A strategy lists its nodes; a user inserts one of their own
into that list to get the same strategy with one more step (examples/custom_node.py)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from ttc_nodes.state import SolveContext, SolveState

Steps = list[tuple[str, Any]]
"""(node name, node) in the order they run."""


def linear_graph(name: str, steps: Sequence[tuple[str, Any]]) -> StrategyGraph:
    """The compiled graph that runs `steps` one after another."""
    if not steps:
        raise ValueError(f"strategy {name!r} has no nodes")
    graph = StateGraph(SolveState, context_schema=SolveContext)
    for node, action in steps:
        graph.add_node(node, action)
    names = [START, *(node for node, _ in steps), END]
    for source, target in itertools.pairwise(names):
        graph.add_edge(source, target)
    return graph.compile(name=name)
