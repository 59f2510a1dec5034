"""How much of the engine's speed `ttc evaluate` turns into solved prompts, measured in one run on the
same testbed:arith prompts and the same engines (testbed:proposer, testbed:prm).

Every evaluation is the `evaluate` flow run in this process, as `ttc evaluate` runs it (a thread task
runner of the given concurrency, a temporary Prefect server, a temporary SQLite database), each as a
new run. The proposer's `generate` is wrapped to count what the strategies ask of it: calls,
completions ("answers"), prompt tokens sent (`Completion.prompt_tokens`, once per sampled row) and
completion tokens. It prints:

- prompts/s of best-of-N weighted (N=16) at concurrency 1, 4 and 8, and the ratio 8 ÷ 1;
- wall time of beam search (beam_width M=4) ÷ best-of-N weighted at N=16 and N=64 (concurrency 8);
- engine utilisation: answers/s and completion tokens/s during the N=16 evaluations at concurrency 8
  (best-of-N weighted, and beam search, whose answers are steps), each ÷ the same engine's rate on
  one batched `generate` call of every prompt × 16 (the calls best-of-N made, merged; the engine
  splits it at its own `max_batch`);
- prefill tokens per generated token during beam search (prompt tokens sent ÷ completion tokens);
  "with prefix reuse" is the prompt tokens the engine computed (its `prefix_cache()` counters: each
  distinct prompt once, less what its prefix cache served) ÷ completion tokens, n/a for an engine
  without one.

Run: python benchmarks/throughput.py [--prompts 32] [--quick] [--json]  (or `make bench-throughput`)
`--quick` (about 2-3 minutes on 2 cores) runs the N=64 evaluations on a quarter of the prompts and
concurrency 1 on half of them; the full mode runs every evaluation on every prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: intra-op threads only fight the solves' threads

import torch
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness

from db.session import dispose
from flows.pipelines.evaluate import evaluate
from ttc_nodes.engines import Completion, load_proposer, load_verifier

PROPOSER = "testbed:proposer"
VERIFIER = "testbed:prm"
BEAM_WIDTH = 4


@dataclass
class Counts:
    """What the strategies asked of the proposer, and the calls best-of-N made (replayed as one)."""

    calls: int = 0
    answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: list[tuple[list[str], int, dict[str, Any]]] = field(default_factory=list)

    def minus(self, before: Counts) -> Counts:
        return Counts(
            self.calls - before.calls,
            self.answers - before.answers,
            self.prompt_tokens - before.prompt_tokens,
            self.completion_tokens - before.completion_tokens,
            self.requests[len(before.requests) :],
        )


class CountingProposer:
    """Wraps the proposer engine's `generate` (on the cached engine object every solve uses) to count."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.counts = Counts()
        self._lock = threading.Lock()
        inner: Callable[..., list[list[Completion]]] = engine.generate

        def generate(prompts: Sequence[str], n: int, **options: Any) -> list[list[Completion]]:
            result = inner(prompts, n, **options)
            rows = [completion for group in result for completion in group]
            with self._lock:
                self.counts.calls += 1
                self.counts.answers += len(rows)
                self.counts.prompt_tokens += sum(c.prompt_tokens for c in rows)
                self.counts.completion_tokens += sum(c.completion_tokens for c in rows)
                self.counts.requests.append((list(prompts), n, dict(options)))
            return result

        engine.generate = generate
        self.raw_generate = inner

    def snapshot(self) -> Counts:
        with self._lock:
            return Counts(**{**self.counts.__dict__, "requests": list(self.counts.requests)})

    def cache_stats(self) -> Mapping[str, float] | None:
        """The prompt tokens the engine computed so far (those its prefix cache did not serve), for an
        engine that reports them (`prefix_cache()`: the cached sampler, vLLM)."""
        stats = getattr(self.engine, "prefix_cache", None)
        if not callable(stats):
            return None
        snapshot = stats()
        return {"prefill_tokens": float(snapshot.prompt_tokens - snapshot.cached_tokens)}


@dataclass(frozen=True)
class Evaluation:
    strategy: str
    budget: int
    concurrency: int
    prompts: int
    seconds: float
    counts: Counts
    cache: dict[str, float] | None

    @property
    def prompts_per_second(self) -> float:
        return self.prompts / self.seconds


def run_evaluation(
    counter: CountingProposer,
    database: str,
    dataset: str,
    strategy: str,
    budget: int,
    concurrency: int,
    prompts: int,
) -> Evaluation:
    """One `evaluate` flow run (a new run) of the first `prompts` prompts; fails loudly on failures."""
    settings = {"beam_width": BEAM_WIDTH} if strategy == "beam" else {}
    before, cache_before = counter.snapshot(), counter.cache_stats()
    started = time.perf_counter()
    runner: Any = ThreadPoolTaskRunner(max_workers=concurrency)
    summary = evaluate.with_options(task_runner=runner)(
        dataset=dataset,
        strategy=strategy,
        budget=budget,
        settings=settings,
        models={"proposer": PROPOSER, "verifier": VERIFIER},
        database=database,
        run_name=f"{strategy}-{budget}-c{concurrency}-{time.time_ns()}",
        limit=prompts,
    )
    seconds = time.perf_counter() - started
    if summary["failed"] or summary["done"] != prompts:
        raise SystemExit(
            f"{strategy} N={budget}: {summary['failed']} failed, {summary['done']} done: {summary['failures']}"
        )
    cache_after = counter.cache_stats()
    cache = None
    if cache_before is not None and cache_after is not None:
        cache = {key: float(cache_after[key]) - float(cache_before.get(key, 0)) for key in cache_after}
    return Evaluation(strategy, budget, concurrency, prompts, seconds, counter.snapshot().minus(before), cache)


def batched_rate(counter: CountingProposer, requests: list[tuple[list[str], int, dict[str, Any]]]) -> dict[str, float]:
    """Answers/s and completion tokens/s of one `generate` call holding every request's prompts."""
    prompts = [prompt for request_prompts, _, _ in requests for prompt in request_prompts]
    n, options = requests[0][1], {k: v for k, v in requests[0][2].items() if k != "seed"}
    started = time.perf_counter()
    result = counter.raw_generate(prompts, n, seed=0, **options)
    seconds = time.perf_counter() - started
    rows = [completion for group in result for completion in group]
    return {
        "rows": len(rows),
        "seconds": seconds,
        "answers_per_second": len(rows) / seconds,
        "tokens_per_second": sum(c.completion_tokens for c in rows) / seconds,
    }


def prefill_with_reuse(run: Evaluation) -> float | None:
    """Prompt tokens the engine computed per generated token, from its cache counters (None: none)."""
    if not run.cache or not run.counts.completion_tokens:
        return None
    if "prefill_tokens" in run.cache:
        return run.cache["prefill_tokens"] / run.counts.completion_tokens
    if "reused_tokens" in run.cache:
        return (run.counts.prompt_tokens - run.cache["reused_tokens"]) / run.counts.completion_tokens
    return None


def measure(prompts: int, quick: bool, seed: int) -> dict[str, Any]:
    dataset = f"testbed:arith?n={prompts}&seed={seed}"
    few = max(1, prompts // 4) if quick else prompts  # the N=64 evaluations
    half = max(1, prompts // 2) if quick else prompts  # concurrency 1
    counter = CountingProposer(load_proposer(PROPOSER))
    load_verifier(VERIFIER)
    with (
        tempfile.TemporaryDirectory(prefix="ttc-throughput-") as folder,
        prefect_test_harness(server_startup_timeout=120),
    ):
        database = f"sqlite:///{Path(folder) / 'ttc.db'}"
        # Warm-up, not counted: first calls of the models, the database's schema, the Prefect server.
        run_evaluation(counter, database, f"testbed:arith?n=2&seed={seed + 1}", "best_of_n_weighted", 16, 2, 2)
        runs: dict[str, Evaluation] = {}
        plan = [
            ("bon16_c8", "best_of_n_weighted", 16, 8, prompts),
            ("beam16_c8", "beam", 16, 8, prompts),
            ("bon16_c4", "best_of_n_weighted", 16, 4, prompts),
            ("bon16_c1", "best_of_n_weighted", 16, 1, half),
            ("bon64_c8", "best_of_n_weighted", 64, 8, few),
            ("beam64_c8", "beam", 64, 8, few),
        ]
        for label, strategy, budget, concurrency, count in plan:
            runs[label] = run_evaluation(counter, database, dataset, strategy, budget, concurrency, count)
            print(f"  {label}: {count} prompts in {runs[label].seconds:.1f} s", file=sys.stderr)
        reference = batched_rate(counter, runs["bon16_c8"].counts.requests)
        dispose(database)
    return summarise(runs, reference, prompts, quick, dataset)


def summarise(
    runs: dict[str, Evaluation], reference: dict[str, float], prompts: int, quick: bool, dataset: str
) -> dict[str, Any]:
    def answers_rate(run: Evaluation) -> float:
        return run.counts.answers / run.seconds

    def tokens_rate(run: Evaluation) -> float:
        return run.counts.completion_tokens / run.seconds

    def per_prompt(label: str) -> float:
        return runs[label].seconds / runs[label].prompts

    return {
        "dataset": dataset,
        "prompts": prompts,
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
        "evaluate_prompts_per_second": {c: runs[f"bon16_c{c}"].prompts_per_second for c in (1, 4, 8)},
        "concurrency_8_over_1": runs["bon16_c8"].prompts_per_second / runs["bon16_c1"].prompts_per_second,
        # Per prompt, since the N=64 runs may cover fewer prompts; the same prompts at a given N.
        "beam_over_best_of_n_wall": {n: per_prompt(f"beam{n}_c8") / per_prompt(f"bon{n}_c8") for n in (16, 64)},
        "batched_generate": reference,
        "utilisation": {
            label: {
                "answers_per_second": answers_rate(runs[label]),
                "tokens_per_second": tokens_rate(runs[label]),
                "answers_ratio": answers_rate(runs[label]) / reference["answers_per_second"],
                "tokens_ratio": tokens_rate(runs[label]) / reference["tokens_per_second"],
            }
            for label in ("bon16_c8", "beam16_c8")
        },
        "beam_prefill_per_generated_token": {
            n: {
                "sent": runs[f"beam{n}_c8"].counts.prompt_tokens / max(1, runs[f"beam{n}_c8"].counts.completion_tokens),
                "with_prefix_reuse": prefill_with_reuse(runs[f"beam{n}_c8"]),
            }
            for n in (16, 64)
        },
        "runs": {
            label: {
                "strategy": run.strategy,
                "budget": run.budget,
                "concurrency": run.concurrency,
                "prompts": run.prompts,
                "seconds": run.seconds,
                "calls": run.counts.calls,
                "answers": run.counts.answers,
                "prompt_tokens": run.counts.prompt_tokens,
                "completion_tokens": run.counts.completion_tokens,
            }
            for label, run in runs.items()
        },
    }


def show(result: dict[str, Any]) -> None:
    def cell(value: float | None, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    mode = "quick" if result["quick"] else "full"
    print(f"{result['dataset']} ({mode} mode), {PROPOSER} + {VERIFIER}, torch threads {result['torch_threads']}")
    rates = result["evaluate_prompts_per_second"]
    print("\nevaluate, best-of-N weighted N=16: prompts/s")
    ratio = cell(result["concurrency_8_over_1"])
    print(f"  concurrency 1: {cell(rates[1])}   4: {cell(rates[4])}   8: {cell(rates[8])}   8 / 1: {ratio}")
    walls = result["beam_over_best_of_n_wall"]
    print(f"\nbeam search (M={BEAM_WIDTH}) wall / best-of-N weighted wall, concurrency 8")
    print(f"  N=16: {cell(walls[16])}   N=64: {cell(walls[64])}")
    reference = result["batched_generate"]
    print(
        f"\nengine utilisation (N=16, concurrency 8) against one batched generate of "
        f"{reference['rows']} rows: {cell(reference['answers_per_second'], 1)} answers/s, "
        f"{cell(reference['tokens_per_second'], 0)} tokens/s"
    )
    print(f"  {'':26s} {'answers/s':>10s} {'ratio':>6s} {'tokens/s':>9s} {'ratio':>6s}")
    for label, name in (("bon16_c8", "best-of-N weighted"), ("beam16_c8", "beam search (steps)")):
        row = result["utilisation"][label]
        print(
            f"  {name:26s} {cell(row['answers_per_second'], 1):>10s} {cell(row['answers_ratio']):>6s} "
            f"{cell(row['tokens_per_second'], 0):>9s} {cell(row['tokens_ratio']):>6s}"
        )
    print("\nbeam search: prefill tokens per generated token")
    print(f"  {'':6s} {'sent':>6s} {'with prefix reuse':>18s}")
    for n, row in result["beam_prefill_per_generated_token"].items():
        print(f"  N={n:<4d} {cell(row['sent']):>6s} {cell(row['with_prefix_reuse']):>18s}")
    print("\nruns")
    for label, run in result["runs"].items():
        print(
            f"  {label:10s} {run['prompts']:3d} prompts {run['seconds']:7.1f} s  {run['calls']:5d} calls "
            f"{run['answers']:6d} answers {run['prompt_tokens']:8d} prompt / "
            f"{run['completion_tokens']:7d} completion tokens"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="testbed:arith prompts (default 32)")
    parser.add_argument("--quick", action="store_true", help="N=64 on a quarter, concurrency 1 on half the prompts")
    parser.add_argument("--seed", type=int, default=11, help="seed of the testbed:arith prompts")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    if args.prompts < 1:
        parser.error("--prompts must be >= 1")
    result = measure(args.prompts, args.quick, args.seed)
    print(json.dumps(result)) if args.json else show(result)


if __name__ == "__main__":
    main()
