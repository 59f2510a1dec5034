"""Sampling throughput of the testbed proposer: `CachedSampler` (what `ttc testbed train` and
`ttc testbed report` sample with) against `HFProposer` (`model.generate`), on the same prompts,
samples and seeds, rounds alternating so that other load on the machine falls on both alike.

    python benchmarks/testbed_sampler.py [--questions 32] [--n 16] [--rounds 2]

Prints samples and generated tokens per second for each and the ratio to `HFProposer`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import checkpoint_dir
from ttc_nodes.testbed.sampler import CachedSampler
from ttc_nodes.testbed.train import load_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=192)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    directory = checkpoint_dir() / "proposer"
    prompts = [DEFAULT_FORMAT.solution(p.question) for p in task.problems(args.questions, 5)]
    engines: dict[str, HFProposer | CachedSampler] = {
        "HFProposer (max_batch 64)": HFProposer(str(directory), device="cpu", max_batch=64),
        "CachedSampler (max_batch 512)": load_sampler(directory),
    }
    seconds = dict.fromkeys(engines, 0.0)
    tokens = dict.fromkeys(engines, 0)
    for round_ in range(args.rounds):
        for name, engine in engines.items():
            started = time.perf_counter()
            rows = engine.generate(prompts, args.n, max_tokens=args.max_tokens, temperature=1.0, seed=round_)
            seconds[name] += time.perf_counter() - started
            tokens[name] += sum(c.completion_tokens for row in rows for c in row)

    samples = args.rounds * len(prompts) * args.n
    baseline = samples / seconds[next(iter(engines))]
    print(f"{samples} samples per engine ({args.questions} questions x {args.n} x {args.rounds} rounds), 2 threads")
    print(f"{'engine':<32}{'samples/s':>12}{'tokens/s':>12}{'ratio':>8}")
    for name in engines:
        rate = samples / seconds[name]
        print(f"{name:<32}{rate:>12.1f}{tokens[name] / seconds[name]:>12.0f}{rate / baseline:>8.2f}")


if __name__ == "__main__":
    main()
