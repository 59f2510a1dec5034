"""Strategies by name: each a settings model, a builder of its compiled graph, and what it needs.

A user strategy is a builder plus a settings model, registered once; it is then run, budgeted and
traced exactly like a built-in one. It declares what it needs beyond a proposer: a reviser, step-wise
search, or none but one vote over N independent samples (`pool_vote`), which lets calibration read
it off one shared pool. Strategies of installed packages (entry points of group `ttc.strategies`)
are found on first use; others are loaded with `graphs.plugins.load_plugins`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, get_args

from pydantic import ValidationError

from graphs import beam_search, best_of_n, dvts, lookahead, majority, mcts, particle_filtering, revisions
from graphs.runner import StrategyGraph
from graphs.settings import (
    BeamSettings,
    BestOfNSettings,
    DVTSSettings,
    LookaheadSettings,
    MajoritySettings,
    MCTSSettings,
    ParticleFilteringSettings,
    RevisionSettings,
    StrategySettings,
    WeightedBestOfNSettings,
)
from ttc_nodes.vote import VoteMethod


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
    reviser: bool = False
    """Revises answers: a reviser engine is loaded for it."""
    stepwise: bool = False
    """Searches over solution steps (the proposer is asked for one step at a time)."""
    pool_vote: VoteMethod | None = None
    """Its answer is this one vote over N independent samples, so it can be read off a shared pool."""

    def needs_verifier(self, settings: StrategySettings) -> bool:
        """Whether a PRM is loaded: the settings say (majority, or revisions selected by vote, need none)."""
        return settings.needs_verifier

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
    name: str,
    settings: type[StrategySettings],
    build: Callable[[Any], StrategyGraph],
    summary: str = "",
    *,
    reviser: bool = False,
    stepwise: bool = False,
    pool_vote: VoteMethod | None = None,
) -> Strategy:
    """Make a strategy available by name to the CLI, the flows and `get`, with what it needs."""
    if pool_vote is not None and pool_vote not in get_args(VoteMethod):
        raise ValueError(f"pool_vote of {name!r} must be one of {', '.join(get_args(VoteMethod))}, got {pool_vote!r}")
    summary = summary or (build.__doc__ or "").strip().split("\n")[0]
    strategy = Strategy(name, settings, build, summary, reviser=reviser, stepwise=stepwise, pool_vote=pool_vote)
    _strategies[name] = strategy
    _compiled.cache_clear()
    return strategy


def unregister(name: str) -> None:
    """Forget a registered strategy (a no-op for a name never registered)."""
    _strategies.pop(name, None)
    _compiled.cache_clear()


def get(name: str) -> Strategy:
    """The strategy called `name`; an unknown name first loads the installed plug-ins' strategies."""
    if name not in _strategies:
        from graphs.plugins import entry_point_failures, load_entry_points  # they register here

        load_entry_points()
        if name not in _strategies:
            broken = "".join(f"; plug-in {p} failed: {why}" for p, why in entry_point_failures().items())
            raise UnknownStrategy(
                f"unknown strategy {name!r}; known: {', '.join(sorted(_strategies))}; "
                f"a strategy of your own loads with --plugin MODULE{broken}"
            )
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


register(
    "majority", MajoritySettings, majority.build, "sample N answers, majority vote (no verifier)", pool_vote="majority"
)
register(
    "best_of_n",
    BestOfNSettings,
    best_of_n.build,
    "sample N answers, keep the highest PRM score",
    pool_vote="best_of_n",
)
register(
    "best_of_n_weighted",
    WeightedBestOfNSettings,
    best_of_n.build,
    "sample N answers, sum PRM scores per answer, keep the largest sum",
    pool_vote="weighted",
)
register(
    "beam",
    BeamSettings,
    beam_search.build,
    "beam search over steps: keep N/M prefixes, expand each M times",
    stepwise=True,
)
register(
    "lookahead", LookaheadSettings, lookahead.build, "beam search scored after a k-step greedy rollout", stepwise=True
)
register("dvts", DVTSSettings, dvts.build, "N/M independent subtrees, each grown greedily by PRM score", stepwise=True)
register(
    "revisions", RevisionSettings, revisions.build, "chains of revisions, selected across each chain", reviser=True
)
register(
    "particle_filtering",
    ParticleFilteringSettings,
    particle_filtering.build,
    "N partial solutions resampled each step by PRM weight",
    stepwise=True,
)
register(
    "mcts",
    MCTSSettings,
    mcts.build,
    "Monte-Carlo tree search over steps: PUCT by step prior, PRM values backed up",
    stepwise=True,
)
