"""Majority vote: sample N answers, return the most frequent one (no verifier). With `early_stop`
set, the answers are sampled in rounds until the vote is settled (graphs/early_stopping.py)."""

from __future__ import annotations

from functools import partial

from graphs.early_stopping import in_rounds
from graphs.linear import Steps, linear_graph
from graphs.runner import StrategyGraph
from graphs.sampling import answer_sampler
from graphs.settings import MajoritySettings
from ttc_nodes.vote import select_answer


def steps(settings: MajoritySettings) -> Steps:
    return [
        ("propose", answer_sampler(settings)),
        ("select", partial(select_answer, method="majority")),
    ]


def build(settings: MajoritySettings) -> StrategyGraph:
    if settings.early_stop != "off":
        return in_rounds("majority", steps(settings), settings, weighting="count")
    return linear_graph("majority", steps(settings))
