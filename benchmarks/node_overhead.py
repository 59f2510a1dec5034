"""Per-node overhead of the graph runner and the trace writes, against a plain Python loop that
calls the same node functions and the same engine.

Two engines: a zero-cost scripted one (isolates the overhead) and a tiny random-weight Llama
through transformers (overhead as a share of real engine time). Prints a table of seconds per
solve, node executions, and overhead per node in milliseconds, with ratios to the plain loop.

    python benchmarks/node_overhead.py [--repeats 5] [--postgres postgresql://postgres@127.0.0.1/test]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from db.recorder import Recorder
from db.session import connect
from flows.service.tracing import DatabaseSink
from graphs import registry
from graphs.runner import run_graph
from graphs.settings import BeamSettings
from tests.model_fixtures import save_tiny_model
from tests.scripted import ScriptedProposer, ScriptedVerifier
from ttc_nodes.engines import load_proposer, load_verifier
from ttc_nodes.propose import expand_steps
from ttc_nodes.prune import prune_beams
from ttc_nodes.state import SolveContext
from ttc_nodes.verify import verify
from ttc_nodes.vote import select_answer


class Runtime:
    def __init__(self, context: SolveContext) -> None:
        self.context = context


def plain_beam_search(question: str, context: SolveContext, settings: BeamSettings) -> tuple[Any, int]:
    """Beam search as a hand-written loop over the same node functions: no graph, no trace."""
    runtime = Runtime(context)
    state: dict[str, Any] = {"question": question, "finished": []}
    nodes = 0
    while True:
        for step in (
            lambda s: expand_steps(
                s, runtime, first_round=settings.beams, max_tokens=settings.max_step_tokens, temperature=0.8
            ),
            lambda s: verify(s, runtime, aggregation="last"),
            lambda s: prune_beams(
                s, runtime, budget=settings.beams, beam_width=settings.beam_width or 1, max_rounds=settings.max_rounds
            ),
        ):
            update = step(state)
            finished = state["finished"] + update.pop("finished", [])
            state.update(update, finished=finished)
            nodes += 1
        if not state["pool"]:
            break
    state.update(select_answer(state, runtime, method="weighted", source="finished"))
    return state.get("answer"), nodes + 1


def interleaved(variants: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run round-robin so machine load hits them all alike."""
    for function in variants.values():
        function()  # warm-up: first-call costs (caches, connections) are not overhead
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():
            start = time.perf_counter()
            function()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def measure(label: str, context: SolveContext, settings: BeamSettings, urls: dict[str, str], repeats: int) -> list:
    graph = registry.compile_graph("beam", settings)
    question = "What is 1+2?"
    answer, nodes = plain_beam_search(question, context, settings)
    result = run_graph(graph, question, context)
    assert (result.answer, result.steps) == (answer, nodes), "the loop and the graph must do the same work"
    variants: dict[str, Any] = {
        "plain loop": lambda: plain_beam_search(question, context, settings),
        "graph runner": lambda: run_graph(graph, question, context),
    }
    for name, url in urls.items():
        recorder = Recorder(connect(url))
        run_id = recorder.open_run(None, {"benchmark": label})

        def traced(recorder: Recorder = recorder, run_id: str = run_id) -> None:
            problem = recorder.problem("bench", f"{time.perf_counter_ns()}", question, None)
            solve_id = recorder.start_solve(run_id, problem, "beam", settings.model_dump(), settings.budget)
            run_graph(graph, question, context, DatabaseSink(recorder, solve_id, verifier="v", aggregation="last"))

        variants[f"graph runner + {name} trace"] = traced
    return [(label, name, seconds, nodes) for name, seconds in interleaved(variants, repeats).items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--postgres", default=None, help="also trace into this PostgreSQL URL")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ttc-bench-"))
    urls = {"SQLite": f"sqlite:///{workdir / 'bench.db'}"}
    if args.postgres:
        urls["PostgreSQL"] = args.postgres
    settings = BeamSettings(budget=args.budget, max_step_tokens=8, max_rounds=8)
    scripted = SolveContext(proposer=ScriptedProposer(finish_rate=0.15), verifier=ScriptedVerifier(), seed=1)
    lm = save_tiny_model(workdir / "lm", classifier=False)
    prm = save_tiny_model(workdir / "prm", classifier=True, seed=1)
    tiny = SolveContext(proposer=load_proposer(f"hf:{lm}"), verifier=load_verifier(f"hf:{prm}"), seed=1)

    rows = measure("scripted engine", scripted, settings, urls, args.repeats)
    rows += measure("tiny Llama (transformers, CPU)", tiny, settings, urls, max(1, args.repeats // 2))

    table = Table(title=f"beam search N={args.budget}: per-solve time and per-node overhead (median)")
    for column in ("engine", "runner", "s / solve", "nodes", "overhead ms / node", "× plain loop"):
        table.add_column(column, justify="left" if column in ("engine", "runner") else "right")
    baselines = {label: seconds for label, runner, seconds, _ in rows if runner == "plain loop"}
    for label, runner, seconds, nodes in rows:
        overhead = (seconds - baselines[label]) / nodes * 1000
        table.add_row(
            label, runner, f"{seconds:.4f}", str(nodes), f"{overhead:.3f}", f"{seconds / baselines[label]:.2f}"
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
