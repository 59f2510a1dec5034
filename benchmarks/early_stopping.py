"""Early stopping against the full budget (docs/early-stopping.md): majority and best-of-N weighted
on testbed prompts, each rule beside the same strategy at its whole budget N. Prints accuracy and
mean generations spent per rule, and the saving where the accuracy is equal (within ±0.01).

    python benchmarks/early_stopping.py                 # quick: 32 prompts, N=16
    python benchmarks/early_stopping.py --prompts 64 --budgets 16,64
    python benchmarks/early_stopping.py --prompts 64 --budgets 64 --thresholds 0.9,0.95,0.99
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import fmean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from flows.service.datasets import load_dataset
from graphs import registry
from graphs.runner import run_graph
from ttc_nodes.answers import is_correct
from ttc_nodes.engines import load_proposer, load_verifier
from ttc_nodes.state import SolveContext

RULES = ["off", "posterior", "confidence"]
EQUAL = 0.01


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--budgets", default="16")
    parser.add_argument("--strategies", default="majority,best_of_n_weighted")
    parser.add_argument("--dataset", default="testbed:arith?n=64&seed=3")
    parser.add_argument("--thresholds", default="0.95", help="comma-separated: each rule runs at each")
    args = parser.parse_args()
    problems = load_dataset(args.dataset, limit=args.prompts)
    proposer, verifier = load_proposer("testbed:proposer"), load_verifier("testbed:prm")
    table = Table(title=f"early stopping on {len(problems)} prompts of {args.dataset}")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    runs = [("off", thresholds[0])] + [(rule, t) for rule in RULES[1:] for t in thresholds]
    for column in (
        "strategy",
        "N",
        "rule",
        "threshold",
        "accuracy",
        "mean generations",
        "saving at equal accuracy",
        "seconds",
    ):
        table.add_column(column)
    for name in args.strategies.split(","):
        for budget in map(int, args.budgets.split(",")):
            full: tuple[float, float] | None = None
            for rule, threshold in runs:
                settings = registry.get(name).configure(
                    {"budget": budget, "early_stop": rule, "early_stop_threshold": threshold}
                )
                graph = registry.compile_graph(name, settings)
                begun = time.perf_counter()
                hits, spent = [], []
                for index, problem in enumerate(problems):
                    context = SolveContext(proposer=proposer, verifier=verifier, seed=index)
                    result = run_graph(graph, problem.question, context)
                    hits.append(bool(is_correct(result.answer, problem.reference)))
                    spent.append(result.spend.generations)
                accuracy, generations = fmean(hits), fmean(spent)
                if rule == "off":
                    full, saving = (accuracy, generations), "—"
                else:
                    assert full is not None
                    gap = accuracy - full[0]
                    fewer = f"{1 - generations / full[1]:.0%} fewer"
                    saving = fewer if abs(gap) <= EQUAL else f"none: accuracy {gap:+.3f} ({fewer})"
                seconds = time.perf_counter() - begun
                shown = "—" if rule == "off" else f"{threshold:g}"
                row = [
                    name,
                    str(budget),
                    rule,
                    shown,
                    f"{accuracy:.3f}",
                    f"{generations:.2f}",
                    saving,
                    f"{seconds:.0f}",
                ]
                print(" | ".join(row), flush=True)  # as it goes: the full mode takes a while
                table.add_row(*row)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
