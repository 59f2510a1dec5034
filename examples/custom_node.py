r"""A node of your own in an existing graph: best-of-N weighted (graphs/best_of_n.py) with one more
node between the PRM and the vote, `drop_long`, which drops the answers longer than K steps so that
only short answers vote.

The node is a plain function of (state, runtime) that returns a state update. That is all the graph
runner needs to trace it like a built-in node: it gets its own row in `steps`, with the `detail` it
returns (here, the keys of the answers it dropped). Registered as a strategy, it is solved by name,
budgeted and stored like any built-in one. Run it (testbed models; the default database, or
`TTC_DATABASE_URL`) with:

    .venv/bin/python examples/custom_node.py
    .venv/bin/python examples/custom_node.py "Compute 10 + 6 - 4 + 3 + 7 - 3 - 5 + 1 - 9 + 7 - 4 + 8 - 1." \
        --reference 16 --max-steps 11 --budget 8

With `--set early_stop=posterior` (or `confidence`) the same steps run in rounds with a settle node
after each round (`graphs.early_stopping.in_rounds`, docs/early-stopping.md): two lines in `build`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from functools import partial
from typing import Any

from pydantic import Field

from db import queries
from db.session import connect
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from graphs import best_of_n, registry
from graphs.early_stopping import in_rounds
from graphs.linear import linear_graph
from graphs.runner import StrategyGraph
from graphs.settings import WeightedBestOfNSettings
from ttc_nodes.state import NodeRuntime, SolveState


class ShortAnswerSettings(WeightedBestOfNSettings):
    max_steps: int = Field(8, ge=1, description="K: answers with more steps than this do not vote")


def drop_long(state: SolveState, runtime: NodeRuntime, *, max_steps: int) -> dict[str, Any]:
    """Keep the answers of at most `max_steps` steps (the shortest ones, if none is that short)."""
    pool = state["pool"]
    limit = max(max_steps, min((c.depth for c in pool), default=0))
    kept = [c for c in pool if c.depth <= limit]
    dropped = [c.key for c in pool if c.depth > limit]
    return {"pool": kept, "detail": {"max_steps": max_steps, "dropped": dropped}}


def build(settings: ShortAnswerSettings) -> StrategyGraph:
    """Best-of-N weighted's own steps (propose, verify, select), with `drop_long` before the vote."""
    steps = best_of_n.steps(settings)
    at = [name for name, _ in steps].index("select")
    steps.insert(at, ("drop_long", partial(drop_long, max_steps=settings.max_steps)))
    if settings.early_stop != "off":  # sample in rounds; stop once the weighted vote is settled
        return in_rounds("short_best_of_n", steps, settings, weighting="score")
    return linear_graph("short_best_of_n", steps)


registry.register("short_best_of_n", ShortAnswerSettings, build, "best-of-N weighted over the answers of ≤ K steps")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", default="Compute (12 + 5) * 2 - 3.")
    parser.add_argument("--reference", default="31", help="reference answer, to grade the result")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=3)
    parser.add_argument("--db", default=None, help="database URL (default: TTC_DATABASE_URL or SQLite)")
    args = parser.parse_args()
    outcome = solve_question(
        args.question,
        strategy="short_best_of_n",
        values={"budget": args.budget, "max_steps": args.max_steps},
        models=ModelSettings(),
        database=args.db,
        reference=args.reference,
    )
    with connect(args.db)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
    dropped = next(step for step in trace.steps if step.node == "drop_long").detail["dropped"]
    lengths = Counter(candidate.depth for candidate in trace.candidates)
    print(f"steps traced: {' → '.join(step.node for step in trace.steps)}")
    print(f"answer lengths (steps: answers): {dict(sorted(lengths.items()))}")
    print(f"drop_long dropped {len(dropped)} of {args.budget} answers (more than {args.max_steps} steps)")
    print(f"answer: {outcome.answer} (correct: {outcome.correct}) · `ttc trace {outcome.run_id}` shows every step")
