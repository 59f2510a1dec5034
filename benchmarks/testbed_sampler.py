"""Sampling throughput of the testbed proposer: `testbed:proposer` (which samples through
`CachedSampler`, as `ttc testbed train` and `ttc testbed report` do) against `HFProposer`
(`model.generate`) on the same checkpoint, prompts, samples and seeds, rounds alternating so that
other load on the machine falls on both alike. Two kinds of call:

- answers: whole answers, as best-of-N and majority voting ask for them (no stop string);
- steps: one step of every prefix, as beam search, DVTS and particle filtering ask for them (the
  step separator as stop string, `max_tokens` about one step), prefixes of 0..all reference steps.

And the prefix cache (`--mode beam`): beam search (graphs.registry's `beam`, the testbed PRM) on the
same questions through `testbed:proposer` with its prefix cache and without (`prefix_cache_mb=0`),
question by question alternating which goes first: seconds inside the proposer, prompt tokens sent
and prompt tokens read (those not served from the cache) per generated token, and the hit rate.

    python benchmarks/testbed_sampler.py [--mode calls|beam|both] [--questions 32] [--n 16] [--rounds 2]
        [--beam-questions 8] [--budget 16] [--beam-width 4] [--threads 1]

Prints answers and generated tokens per second for each engine and the ratio to `HFProposer`; for
beam search, each engine's counts and the proposer time without the cache ÷ with it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.timed import Timed
from graphs import registry
from graphs.runner import run_graph
from ttc_nodes.engines import Proposer, load_proposer, load_verifier
from ttc_nodes.engines.cached_sampler import CachedProposer
from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.state import SolveContext
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import checkpoint_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["calls", "beam", "both"], default="both")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=192, help="of a whole answer")
    parser.add_argument("--step-tokens", type=int, default=32, help="of one step")
    parser.add_argument("--beam-questions", type=int, default=8, help="questions solved by beam search per engine")
    parser.add_argument("--budget", type=int, default=16, help="beam search budget N")
    parser.add_argument("--beam-width", type=int, default=4, help="beam search width M")
    # One thread by default: on shared cores, intra-op threads spin-wait on each other.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode in ("calls", "both"):
        calls(args)
    if args.mode in ("beam", "both"):
        beam(args)


def calls(args: argparse.Namespace) -> None:
    problems = task.problems(args.questions, 5)
    rng = random.Random(0)
    calls = {
        "answers": ([DEFAULT_FORMAT.solution(p.question) for p in problems], args.max_tokens, ()),
        "steps": (
            [DEFAULT_FORMAT.solution(p.question, p.steps[: rng.randint(0, len(p.steps) - 1)]) for p in problems],
            args.step_tokens,
            (DEFAULT_FORMAT.step_separator,),
        ),
    }
    engines: dict[str, Proposer] = {
        "HFProposer (max_batch 64)": HFProposer(str(checkpoint_dir() / "proposer"), device="cpu", max_batch=64),
        # Without the prefix cache: every round would otherwise find its prompts cached by the first.
        "testbed:proposer (max_batch 64)": load_proposer("testbed:proposer?device=cpu&prefix_cache_mb=0"),
    }
    print(f"{args.questions} questions x {args.n} samples x {args.rounds} rounds per engine and call", end="")
    print(f", {args.threads} torch thread(s)")
    print(f"{'call':<10}{'engine':<34}{'answers/s':>12}{'tokens/s':>12}{'ratio':>8}")
    for kind, (prompts, max_tokens, stop) in calls.items():
        seconds = dict.fromkeys(engines, 0.0)
        tokens = dict.fromkeys(engines, 0)
        for round_ in range(args.rounds):
            for name, engine in engines.items():
                started = time.perf_counter()
                rows = engine.generate(prompts, args.n, max_tokens=max_tokens, temperature=1.0, stop=stop, seed=round_)
                seconds[name] += time.perf_counter() - started
                tokens[name] += sum(c.completion_tokens for row in rows for c in row)
        answers = args.rounds * len(prompts) * args.n
        baseline = answers / seconds[next(iter(engines))]
        for name in engines:
            rate = answers / seconds[name]
            print(f"{kind:<10}{name:<34}{rate:>12.1f}{tokens[name] / seconds[name]:>12.0f}{rate / baseline:>8.2f}")


def beam(args: argparse.Namespace) -> None:
    settings = registry.get("beam").configure({"budget": args.budget, "beam_width": args.beam_width})
    graph = registry.compile_graph("beam", settings)
    verifier = load_verifier("testbed:prm?device=cpu")
    questions = [p.question for p in task.problems(args.beam_questions, seed=2024)]
    engines = {}
    for name, uri in [
        ("cache on", "testbed:proposer?device=cpu"),
        ("cache off", "testbed:proposer?device=cpu&prefix_cache_mb=0"),
    ]:
        engine = load_proposer(uri)
        assert isinstance(engine, CachedProposer)
        engine.generate(["Question: 1 + 1"], 2, max_tokens=4, temperature=1.0, seed=0)  # warm-up, not counted
        engines[name] = Timed(engine)
    before = {name: counted.engine.prefix_cache() for name, counted in engines.items()}
    answers = dict.fromkeys(engines, 0)
    for index, question in enumerate(questions):
        order = list(engines) if index % 2 == 0 else list(reversed(engines))  # alternate who goes first
        for name in order:
            context = SolveContext(proposer=engines[name], verifier=verifier, seed=index)
            answers[name] += run_graph(graph, question, context).answer is not None
    print(
        f"\nbeam search: {len(questions)} questions, N={args.budget}, M={args.beam_width}, "
        f"{args.threads} torch thread(s) (proposer time only)"
    )
    print(
        f"{'engine':<12}{'seconds':>9}{'generated':>11}{'sent/gen':>10}{'read/gen':>10}{'hit rate':>10}{'answers':>9}"
    )
    for name, counted in engines.items():
        stats = counted.engine.prefix_cache() - before[name]
        read = stats.prompt_tokens - stats.cached_tokens  # prompt tokens the model computed
        print(
            f"{name:<12}{counted.seconds:>9.2f}{counted.tokens:>11d}{counted.sent / counted.tokens:>10.2f}"
            f"{read / counted.tokens:>10.2f}{stats.hit_rate:>10.1%}{answers[name]:>9d}"
        )
    on, off = engines["cache on"], engines["cache off"]
    print(f"prefix cache: {off.seconds / on.seconds:.2f}× less proposer time")


if __name__ == "__main__":
    main()
