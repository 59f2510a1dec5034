"""Sampling throughput of the testbed proposer: `testbed:proposer` (which samples through
`CachedSampler`, as `ttc testbed train` and `ttc testbed report` do) against `HFProposer`
(`model.generate`) on the same checkpoint, prompts, samples and seeds, rounds alternating so that
other load on the machine falls on both alike. Two kinds of call:

- answers: whole answers, as best-of-N and majority voting ask for them (no stop string);
- steps: one step of every prefix, as beam search, DVTS and particle filtering ask for them (the
  step separator as stop string, `max_tokens` about one step), prefixes of 0..all reference steps.

    python benchmarks/testbed_sampler.py [--questions 32] [--n 16] [--rounds 2] [--threads 1]

Prints answers and generated tokens per second for each engine and the ratio to `HFProposer`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ttc_nodes.engines import Proposer, load_proposer
from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import checkpoint_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=192, help="of a whole answer")
    parser.add_argument("--step-tokens", type=int, default=32, help="of one step")
    # One thread by default: on shared cores, intra-op threads spin-wait on each other.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

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
        "testbed:proposer (max_batch 64)": load_proposer("testbed:proposer?device=cpu"),
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


if __name__ == "__main__":
    main()
