"""Particle filtering: N partial solutions, resampled after every step in proportion to their PRM
weights (score^(1/T)); finished particles are carried until all have finished or 40 rounds."""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.beam_search import beams_live
from graphs.runner import StrategyGraph
from graphs.settings import ParticleFilteringSettings
from ttc_nodes.propose import expand_steps
from ttc_nodes.select import resample_particles, select_answer
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify


def build(settings: ParticleFilteringSettings) -> StrategyGraph:
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node(
        "expand",
        partial(
            expand_steps,
            first_round=settings.budget,
            max_tokens=settings.max_step_tokens,
            temperature=settings.temperature,
        ),
    )
    graph.add_node("verify", partial(verify, aggregation=settings.aggregation))
    graph.add_node(
        "resample",
        partial(
            resample_particles,
            budget=settings.budget,
            temperature=settings.resample_temperature,
            max_rounds=settings.max_rounds,
        ),
    )
    graph.add_node("select", partial(select_answer, method="weighted", source="finished"))
    graph.add_edge(START, "expand")
    graph.add_edge("expand", "verify")
    graph.add_edge("verify", "resample")
    graph.add_conditional_edges("resample", beams_live, ["expand", "select"])
    graph.add_edge("select", END)
    return graph.compile(name="particle_filtering")
