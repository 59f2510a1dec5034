"""MCTS against beam search at equal budget N on held-out testbed problems, by difficulty bin.

The bins are the testbed generator's levels, paired by their number of operations (levels 1-2:
1-2 operations, 3-4: 3-4, 5-6: 5-7, 7-8: 9-12); the same problems, engines (testbed proposer and
PRM) and seeds go to every strategy. Each strategy runs with its default settings at budget N.
Prints accuracy per bin with mean generations and tokens per solve, and writes JSON with --json.

    .venv/bin/python benchmarks/mcts.py --quick          # N=16, 4 problems per bin
    .venv/bin/python benchmarks/mcts.py --budgets 16 64 --problems 50
    .venv/bin/python benchmarks/mcts.py --quick --strategies "mcts,mcts P=4"   # the batched iterations
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from flows.pipelines.evaluate import wilson
from flows.service.config import ModelSettings
from flows.service.solving import engines_for, problem_seed
from graphs import registry
from graphs.runner import run_graph
from ttc_nodes.answers import same_answer
from ttc_nodes.testbed import task

BINS = {
    "1-2 ops (levels 1-2)": (1, 2),
    "3-4 ops (levels 3-4)": (3, 4),
    "5-7 ops (levels 5-6)": (5, 6),
    "9-12 ops (levels 7-8)": (7, 8),
}
STRATEGIES: dict[str, tuple[str, dict]] = {
    "beam": ("beam", {}),
    "mcts": ("mcts", {}),
    "mcts P=4": ("mcts", {"parallel": 4}),  # four leaves per iteration, one proposer call
}
SEED = 4242  # held out: the testbed trains on seeds of a million and more


def run(budgets: list[int], problems: int, strategies: list[str]) -> list[dict]:
    models = ModelSettings()
    rows = []
    for label, (low, high) in BINS.items():
        drawn = task.problems(problems, SEED + low, min_difficulty=low, max_difficulty=high)
        for budget in budgets:
            for label_of_plan in strategies:
                name, extra = STRATEGIES[label_of_plan]
                settings = registry.get(name).configure({**extra, "budget": budget})
                graph = registry.compile_graph(name, settings)
                correct, generations, tokens, begun = 0, 0.0, 0, time.perf_counter()
                for problem in drawn:
                    seed = problem_seed(models.seed, "testbed", problem.key)
                    context = engines_for(name, settings, models, seed=seed)
                    result = run_graph(graph, problem.question, context)
                    correct += result.answer is not None and same_answer(result.answer, problem.answer)
                    generations += result.spend.generations
                    tokens += result.spend.tokens
                rows.append(
                    {
                        "bin": label,
                        "budget": budget,
                        "strategy": label_of_plan,
                        "problems": len(drawn),
                        "correct": correct,
                        "accuracy": correct / len(drawn),
                        "generations": generations / len(drawn),
                        "tokens": tokens / len(drawn),
                        "seconds": (time.perf_counter() - begun) / len(drawn),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--problems", type=int, default=20, help="problems per difficulty bin")
    parser.add_argument("--quick", action="store_true", help="N=16 and 4 problems per bin")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"of {', '.join(STRATEGIES)}")
    args = parser.parse_args()
    budgets, problems = ([16], 4) if args.quick else (args.budgets, args.problems)
    chosen = args.strategies.split(",")
    unknown = [s for s in chosen if s not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    rows = run(budgets, problems, chosen)
    table = Table(title=f"accuracy by difficulty, {problems} problems per bin")
    for column in ("bin", "N", "strategy", "accuracy", "95% interval", "gens/solve", "tokens/solve", "s/solve"):
        table.add_column(column, justify="left" if column in {"bin", "strategy"} else "right")
    for row in rows:
        table.add_row(
            row["bin"],
            str(row["budget"]),
            row["strategy"],
            f"{row['accuracy']:.2f}",
            "{:.2f}–{:.2f}".format(*wilson(row["correct"], row["problems"])),
            f"{row['generations']:.1f}",
            f"{row['tokens']:.0f}",
            f"{row['seconds']:.2f}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
