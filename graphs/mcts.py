"""Monte-Carlo tree search over solution steps, one iteration per round of the loop:

    START → select_leaf → expand → evaluate → backup ─┬─ a live leaf left, iterations left → select_leaf
                                                      └─ otherwise                         → select → END

select_leaf walks down by PUCT (prior: the step log-probability, or uniform for UCT) to a leaf; expand
samples k next steps of it; evaluate scores them with the PRM (after a greedy rollout, with
`rollout`); backup adds their values to the leaf's path (means). The answer is the most-visited
complete path's, or a weighted vote over the finished leaves. With `parallel` P, each iteration
selects P leaves (PUCT with a virtual loss) and expands them in one proposer call.
"""

from __future__ import annotations

from functools import partial
from typing import cast

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from graphs.settings import MCTSSettings
from ttc_nodes.mcts import MCTSState, backup, evaluate_children, expand_leaf, searching, select_answer, select_leaf
from ttc_nodes.state import SolveContext


def build(settings: MCTSSettings) -> StrategyGraph:
    assert settings.expansions is not None
    graph = StateGraph(MCTSState, context_schema=SolveContext)
    graph.add_node(
        "select_leaf",
        partial(select_leaf, c_puct=settings.c_puct, prior=settings.prior, parallel=settings.parallel),
    )
    graph.add_node(
        "expand",
        partial(
            expand_leaf,
            budget=settings.budget,
            expansions=settings.expansions,
            rollout=settings.rollout,
            max_tokens=settings.max_step_tokens,
            temperature=settings.temperature,
            parallel=settings.parallel,
        ),
    )
    graph.add_node(
        "evaluate",
        partial(
            evaluate_children,
            aggregation=settings.aggregation,
            rollout=settings.rollout,
            max_tokens=settings.max_answer_tokens,
        ),
    )
    graph.add_node("backup", backup)
    graph.add_node("select", partial(select_answer, final=settings.final))
    graph.add_edge(START, "select_leaf")
    graph.add_edge("select_leaf", "expand")
    graph.add_edge("expand", "evaluate")
    graph.add_edge("evaluate", "backup")
    graph.add_conditional_edges(
        "backup", partial(searching, max_iterations=settings.max_iterations), ["select_leaf", "select"]
    )
    graph.add_edge("select", END)
    return cast(StrategyGraph, graph.compile(name="mcts"))
