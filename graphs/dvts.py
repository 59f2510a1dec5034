"""Diverse verifier tree search: N/M independent subtrees, each grown greedily by PRM score.

Round 1 samples N first steps dealt into N/M subtrees of M. Each round every live subtree keeps
its best candidate and expands it M times; a subtree ends when its best candidate has finished.
Then best-of-N weighted over the subtrees' answers.
"""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.beam_search import beams_live
from graphs.runner import StrategyGraph
from graphs.settings import DVTSSettings
from ttc_nodes.propose import expand_steps
from ttc_nodes.select import prune_subtrees, select_answer
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify


def build(settings: DVTSSettings) -> StrategyGraph:
    assert settings.beam_width is not None
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node(
        "expand",
        partial(
            expand_steps,
            first_round=settings.beams,
            max_tokens=settings.max_step_tokens,
            temperature=settings.temperature,
            subtrees=settings.beams // settings.beam_width,
        ),
    )
    graph.add_node("verify", partial(verify, aggregation=settings.aggregation))
    graph.add_node("prune", partial(prune_subtrees, beam_width=settings.beam_width, max_rounds=settings.max_rounds))
    graph.add_node("select", partial(select_answer, method="weighted", source="finished"))
    graph.add_edge(START, "expand")
    graph.add_edge("expand", "verify")
    graph.add_edge("verify", "prune")
    graph.add_conditional_edges("prune", beams_live, ["expand", "select"])
    graph.add_edge("select", END)
    return graph.compile(name="dvts")
