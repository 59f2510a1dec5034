"""Beam search against a PRM (lookahead 0), and the loop lookahead search shares with it.

Round 1 samples N first steps. Each round the PRM scores the candidates, finished answers leave,
the top N/M prefixes stay and each is expanded M times, until no beam is live or 40 rounds have
run; then best-of-N weighted over the finished answers.
"""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.runner import StrategyGraph
from graphs.settings import BeamSettings
from ttc_nodes.propose import expand_steps
from ttc_nodes.select import prune_beams, select_answer
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify, verify_with_lookahead


def beams_live(state: SolveState) -> str:
    """Loop while any prefix is still being searched."""
    return "expand" if state.get("pool") else "select"


def build(settings: BeamSettings) -> StrategyGraph:
    assert settings.beam_width is not None
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node(
        "expand",
        partial(
            expand_steps,
            first_round=settings.beams,
            max_tokens=settings.max_step_tokens,
            temperature=settings.temperature,
            lane_factor=settings.lookahead + 1,
        ),
    )
    if settings.lookahead:
        scorer = partial(
            verify_with_lookahead,
            lookahead=settings.lookahead,
            max_tokens=settings.max_step_tokens,
            aggregation=settings.aggregation,
        )
    else:
        scorer = partial(verify, aggregation=settings.aggregation)
    graph.add_node("verify", scorer)
    graph.add_node(
        "prune",
        partial(prune_beams, budget=settings.beams, beam_width=settings.beam_width, max_rounds=settings.max_rounds),
    )
    graph.add_node("select", partial(select_answer, method="weighted", source="finished"))
    graph.add_edge(START, "expand")
    graph.add_edge("expand", "verify")
    graph.add_edge("verify", "prune")
    graph.add_conditional_edges("prune", beams_live, ["expand", "select"])
    graph.add_edge("select", END)
    return graph.compile(name="lookahead" if settings.lookahead else "beam")
