"""Particle filtering: N partial solutions, resampled after every step in proportion to their PRM
weights (score^(1/T)); finished particles are carried until all have finished or 40 rounds. Then
best-of-N weighted over the final particles: each distinct one once (`unique`), or all N drawn with
their copies (`multiplicity`, as its_hub does). With `early_stop` set, a settle node after each
resampling ends the search once the finished particles' answers are settled."""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.graph import END, START, StateGraph

from graphs.early_stopping import add_settle
from graphs.runner import StrategyGraph
from graphs.sampling import step_expander
from graphs.settings import ParticleFilteringSettings
from graphs.stepwise import search_loop
from ttc_nodes.early_stop import settle_particles
from ttc_nodes.prune import resample_particles
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify
from ttc_nodes.vote import select_answer


def build(settings: ParticleFilteringSettings) -> StrategyGraph:
    expand = step_expander(settings, first_round=settings.budget)
    resample = partial(
        resample_particles,
        budget=settings.budget,
        temperature=settings.resample_temperature,
        max_rounds=settings.max_rounds,
        final_vote=settings.final_vote,
    )
    if settings.early_stop != "off":
        return settled_search(settings, expand, resample)
    return search_loop(
        "particle_filtering",
        expand=expand,
        verify=partial(verify, aggregation=settings.aggregation),
        prune=resample,
        prune_name="resample",
    )


def settled_search(settings: ParticleFilteringSettings, expand: Any, resample: Any) -> StrategyGraph:
    """The particle filter's loop with the settle node after resampling:
    expand → verify → resample → settle ─┬─ particles live, not settled → expand
                                         └─ settled, or none live      → select → END"""
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node("expand", expand)
    graph.add_node("verify", partial(verify, aggregation=settings.aggregation))
    graph.add_node("resample", resample)
    graph.add_node("select", partial(select_answer, method="weighted", source="finished"))
    graph.add_edge(START, "expand")
    graph.add_edge("expand", "verify")
    graph.add_edge("verify", "resample")
    rule = settings.early_stop
    assert rule != "off"
    node = partial(
        settle_particles,
        rule=rule,
        threshold=settings.early_stop_threshold,
        keep=settings.early_stop_keep,
        final_vote=settings.final_vote,
    )
    add_settle(graph, settings, after=["resample"], again="expand", done="select", node=node)
    graph.add_edge("select", END)
    return graph.compile(name="particle_filtering")
