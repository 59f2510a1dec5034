"""Particle filtering: N partial solutions, resampled after every step in proportion to their PRM
weights (score^(1/T)); finished particles are carried until all have finished or 40 rounds. Then
best-of-N weighted over the final particles: each distinct one once (`unique`), or all N drawn with
their copies (`multiplicity`, as its_hub does)."""

from __future__ import annotations

from functools import partial

from graphs.runner import StrategyGraph
from graphs.sampling import step_expander
from graphs.settings import ParticleFilteringSettings
from graphs.stepwise import search_loop
from ttc_nodes.prune import resample_particles
from ttc_nodes.verify import verify


def build(settings: ParticleFilteringSettings) -> StrategyGraph:
    expand = step_expander(settings, first_round=settings.budget)
    resample = partial(
        resample_particles,
        budget=settings.budget,
        temperature=settings.resample_temperature,
        max_rounds=settings.max_rounds,
        final_vote=settings.final_vote,
    )
    return search_loop(
        "particle_filtering",
        expand=expand,
        verify=partial(verify, aggregation=settings.aggregation),
        prune=resample,
        prune_name="resample",
    )
