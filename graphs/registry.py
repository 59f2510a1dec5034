"""Strategies by name: each a settings model and a builder of its compiled graph.

A user strategy is a builder plus a settings model, registered once; it is then run, budgeted and
traced exactly like a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from graphs import beam_search, best_of_n, dvts, lookahead, majority, particle_filtering, revisions
from graphs.runner import StrategyGraph
from graphs.settings import (
    BeamSettings,
    BestOfNSettings,
    DVTSSettings,
    LookaheadSettings,
    MajoritySettings,
    ParticleFilteringSettings,
    RevisionSettings,
    StrategySettings,
    WeightedBestOfNSettings,
)


class UnknownStrategy(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class SettingsError(ValueError):
    """Strategy settings failed validation; the message names each bad field."""


@dataclass(frozen=True)
class Strategy:
    name: str
    settings: type[StrategySettings]
    build: Callable[[Any], StrategyGraph]
    summary: str

    def configure(self, values: Mapping[str, Any]) -> StrategySettings:
        """Validated settings from user values; errors name the field and the strategy."""
        try:
            return self.settings(**values)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                for e in error.errors()
            )
            raise SettingsError(f"invalid settings for strategy {self.name!r}: {problems}") from None


_strategies: dict[str, Strategy] = {}


def register(
    name: str, settings: type[StrategySettings], build: Callable[[Any], StrategyGraph], summary: str = ""
) -> Strategy:
    """Make a strategy available by name to the CLI, the flows and `get`."""
    strategy = Strategy(name, settings, build, summary or (build.__doc__ or "").strip().split("\n")[0])
    _strategies[name] = strategy
    _compiled.cache_clear()
    return strategy


def get(name: str) -> Strategy:
    if name not in _strategies:
        raise UnknownStrategy(f"unknown strategy {name!r}; known: {', '.join(sorted(_strategies))}")
    return _strategies[name]


def names() -> list[str]:
    return sorted(_strategies)


def all_strategies() -> list[Strategy]:
    return [_strategies[name] for name in names()]


@lru_cache(maxsize=256)
def _compiled(name: str, settings: StrategySettings) -> StrategyGraph:
    return get(name).build(settings)


def compile_graph(name: str, settings: StrategySettings) -> StrategyGraph:
    """The compiled graph of a strategy, built once per distinct settings."""
    return _compiled(name, settings)


register("majority", MajoritySettings, majority.build, "sample N answers, majority vote (no verifier)")
register("best_of_n", BestOfNSettings, best_of_n.build, "sample N answers, keep the highest PRM score")
register(
    "best_of_n_weighted",
    WeightedBestOfNSettings,
    best_of_n.build,
    "sample N answers, sum PRM scores per answer, keep the largest sum",
)
register("beam", BeamSettings, beam_search.build, "beam search over steps: keep N/M prefixes, expand each M times")
register("lookahead", LookaheadSettings, lookahead.build, "beam search scored after a k-step greedy rollout")
register("dvts", DVTSSettings, dvts.build, "N/M independent subtrees, each grown greedily by PRM score")
register("revisions", RevisionSettings, revisions.build, "chains of revisions, selected across each chain")
register(
    "particle_filtering",
    ParticleFilteringSettings,
    particle_filtering.build,
    "N partial solutions resampled each step by PRM weight",
)
