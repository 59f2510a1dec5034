"""A new strategy in a few lines: sample N answers, let the PRM drop the weaker half, then take a
majority vote among the answers that remain.

Run it on the testbed (the defaults) or on your own models (`TTC_PROPOSER`, `TTC_VERIFIER`):

    .venv/bin/python examples/top_half_majority.py "Compute (12 + 5) * 2 - 3." --budget 8
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from pydantic import Field

from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from graphs import registry
from graphs.linear import linear_graph
from graphs.runner import StrategyGraph
from graphs.sampling import answer_sampler
from graphs.settings import StrategySettings
from ttc_nodes.state import NodeRuntime, SolveState
from ttc_nodes.verify import verify
from ttc_nodes.vote import select_answer


class TopHalfSettings(StrategySettings):
    keep: float = Field(0.5, gt=0.0, le=1.0, description="fraction of answers kept by PRM score")


def keep_top(state: SolveState, runtime: NodeRuntime, *, keep: float) -> dict[str, Any]:
    """Our own node: keep the best-scored fraction of the pool."""
    ranked = sorted(state["pool"], key=lambda c: -(c.score or 0.0))
    kept = ranked[: max(1, round(len(ranked) * keep))]
    return {"pool": kept, "detail": {"kept": [c.key for c in kept]}}


def build(settings: TopHalfSettings) -> StrategyGraph:
    return linear_graph(
        "top_half_majority",
        [
            ("propose", answer_sampler(settings)),
            ("verify", partial(verify, aggregation=settings.aggregation)),
            ("keep_top", partial(keep_top, keep=settings.keep)),
            ("select", partial(select_answer, method="majority")),
        ],
    )


registry.register("top_half_majority", TopHalfSettings, build, "PRM keeps the best half, then majority vote")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--db", default=None, help="database URL (default: TTC_DATABASE_URL or SQLite)")
    args = parser.parse_args()
    outcome = solve_question(
        args.question,
        strategy="top_half_majority",
        values={"budget": args.budget},
        models=ModelSettings(),
        database=args.db,
    )
    print(f"answer {outcome.answer} · run {outcome.run_id} · `ttc trace {outcome.run_id}` shows the steps")
