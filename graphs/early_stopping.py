"""Early stopping as a building block (docs/early-stopping.md): a straight-line strategy sampled in
rounds, with a settle node and its edge after each round,

    START → propose → [verify …] → settle ─┬─ not settled, budget left → propose
                                           └─ settled or budget spent → select → END

`in_rounds` does this to a list of steps (as `graphs/linear.py` takes); `add_settle` draws the settle
node and edge into a graph being built (revisions and particle filtering use it).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

from langgraph.graph import END, START, StateGraph

from graphs.linear import Steps
from graphs.runner import StrategyGraph
from graphs.settings import EarlyStopSettings
from ttc_nodes.early_stop import Weighting, propose_round, settle, settled, verify_round
from ttc_nodes.propose import propose_answers
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify


def in_rounds(
    name: str, steps: Steps, settings: EarlyStopSettings, *, weighting: Weighting = "count", until: str = "select"
) -> StrategyGraph:
    """The graph of `steps` with the steps before `until` run once per round and the settle edge
    after them. A `propose_answers` step becomes one that samples `settings.round_size` answers a
    round, a `verify` step one that scores only the new answers; other nodes run as they are."""
    names = [node for node, _ in steps]
    if until not in names or names.index(until) == 0:
        raise ValueError(f"strategy {name!r} needs nodes before {until!r} to run in rounds")
    at = names.index(until)
    graph = StateGraph(SolveState, context_schema=SolveContext)
    for node, action in steps:
        graph.add_node(node, round_step(action, settings) if names.index(node) < at else action)
    for source, target in itertools.pairwise([START, *names[:at]]):
        graph.add_edge(source, target)
    add_settle(graph, settings, after=[names[at - 1]], again=names[0], done=until, weighting=weighting)
    for source, target in itertools.pairwise([*names[at:], END]):
        graph.add_edge(source, target)
    return graph.compile(name=name)


def add_settle(
    graph: StateGraph[Any, Any, Any, Any],
    settings: EarlyStopSettings,
    *,
    after: Sequence[str],
    again: str,
    done: str,
    weighting: Weighting = "count",
    source: Literal["pool", "chains", "carried"] = "pool",
    node: Any = None,
) -> None:
    """Add the `settle` node after each of `after`, and its edge: to `again` for another round, to
    `done` once settled or the budget is spent. `node` replaces the default settle node."""
    assert settings.early_stop != "off"
    graph.add_node(
        "settle",
        node
        or partial(
            settle,
            rule=settings.early_stop,
            threshold=settings.early_stop_threshold,
            budget=settings.budget,
            keep=settings.early_stop_keep,
            weighting=weighting,
            source=source,
        ),
    )
    for step in after:
        graph.add_edge(step, "settle")
    graph.add_conditional_edges("settle", settled, {"more": again, "stop": done})


def round_step(action: Any, settings: EarlyStopSettings) -> Any:
    """The round version of a step: sample `round_size` answers, or score only the new ones."""
    if isinstance(action, partial) and action.func is propose_answers:
        options = {k: v for k, v in action.keywords.items() if k != "n"}
        return partial(propose_round, round_size=settings.round_size, budget=settings.budget, **options)
    if isinstance(action, partial) and action.func is verify and action.keywords.get("source", "pool") == "pool":
        return partial(verify_round, aggregation=action.keywords.get("aggregation", "last"))
    return action
