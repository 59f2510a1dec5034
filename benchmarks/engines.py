"""Proposer throughput through the `hf:` and `vllm:` engines, and beam search with and without vLLM's
prefix cache, measured in one run on the same model and prompts.

The model is the testbed proposer (and PRM) when the checkpoints are present, else the tiny
random-weight Llama of the tests. Two measurements, each on every engine:
- batched sampling: every question's prompt × n samples in one `generate` call (tokens per second);
- beam search (graphs.registry's `beam`, the PRM through transformers) over the same questions:
  seconds inside the proposer, its tokens per second, and the prefix-cache hit rate vLLM reports.
Rounds alternate between the engines, so other load on the machine falls on all of them alike.
Ratios are to `hf`, and for the prefix cache to vLLM without it.

Run it with the vLLM virtualenv's python (`make vllm-venv`):

    HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python benchmarks/engines.py [--questions 8] [--n 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# In-process engine (no engine-core process to feed over IPC, as the hf engine runs) unless asked otherwise.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its INFO lines would bury the tables

import torch

from benchmarks.timed import Timed
from graphs import registry
from graphs.runner import StrategyGraph, run_graph
from ttc_nodes.engines import Proposer, Verifier, load_proposer, load_verifier
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.state import SolveContext
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import checkpoint_dir


@dataclass
class Row:
    engine: str
    seconds: float
    tokens: int
    hit_rate: float | None = None
    answers: int | None = None

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def models() -> tuple[Path, Path, str]:
    """The proposer and PRM directories to measure, and what they are."""
    shipped = checkpoint_dir()
    if (shipped / "proposer" / "config.json").is_file() and (shipped / "prm" / "config.json").is_file():
        return shipped / "proposer", shipped / "prm", f"testbed checkpoints ({shipped})"
    from tests.model_fixtures import save_tiny_model

    scratch = Path(tempfile.mkdtemp(prefix="ttc-bench-"))
    lm = save_tiny_model(scratch / "lm", classifier=False)
    prm = save_tiny_model(scratch / "prm", classifier=True, seed=1)
    return lm, prm, "tiny random-weight Llama (no testbed checkpoints found)"


def prefix_stats(engine: Proposer) -> tuple[int, int]:
    """(prompt tokens, of which cached) so far, for an engine that reports them (the vllm: engine)."""
    stats = getattr(engine, "prefix_cache", None)
    if stats is None:
        return 0, 0
    snapshot = stats()
    return snapshot.prompt_tokens, snapshot.cached_tokens


def hit_rate(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of the prompt tokens sent between two snapshots that vLLM found in its prefix cache."""
    prompt_tokens, cached = after[0] - before[0], after[1] - before[1]
    return cached / prompt_tokens if prompt_tokens else None


class Measured:
    """One engine under test: its timed wrapper and what it has been measured doing so far."""

    def __init__(self, name: str, engine: Proposer) -> None:
        self.name = name
        self.engine = engine
        self.timed = Timed(engine)

    def sample(self, prompts: list[str], n: int, max_tokens: int, seed: int) -> None:
        self.timed.generate(prompts, n, max_tokens=max_tokens, temperature=0.8, seed=seed)

    def solve(self, graph: StrategyGraph, question: str, verifier: Verifier, seed: int) -> bool:
        result = run_graph(graph, question, SolveContext(proposer=self.timed, verifier=verifier, seed=seed))
        return result.answer is not None

    def row(self, since: tuple[float, int, tuple[int, int]], answers: int | None = None) -> Row:
        seconds, tokens, cache = since
        return Row(
            self.name,
            self.timed.seconds - seconds,
            self.timed.tokens - tokens,
            hit_rate(cache, prefix_stats(self.engine)),
            answers,
        )

    def mark(self) -> tuple[float, int, tuple[int, int]]:
        return self.timed.seconds, self.timed.tokens, prefix_stats(self.engine)


def report(title: str, rows: list[Row], baseline: str, extra: tuple[str, str] | None = None) -> None:
    base = next(row for row in rows if row.engine == baseline)
    print(f"\n{title}")
    print(f"{'engine':<22}{'seconds':>9}{'tokens':>9}{'tok/s':>9}{'× ' + baseline:>12}{'cache hits':>12}{'answers':>9}")
    for row in rows:
        ratio = row.rate / base.rate if base.rate else 0.0
        hits = "-" if row.hit_rate is None else f"{row.hit_rate:.1%}"
        answers = "-" if row.answers is None else str(row.answers)
        print(
            f"{row.engine:<22}{row.seconds:>9.2f}{row.tokens:>9d}{row.rate:>9.1f}{ratio:>11.2f}×{hits:>12}{answers:>9}"
        )
    if extra is not None:
        on, off = (next(row for row in rows if row.engine == name) for name in extra)
        print(f"prefix caching: {off.seconds / on.seconds:.2f}× less proposer time ({on.engine} vs {off.engine})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=8, help="testbed questions (prompts of one sampling call)")
    parser.add_argument("--n", type=int, default=16, help="samples per prompt in the sampling measurement")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per sample in the sampling measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed sampling calls per engine")
    parser.add_argument("--beam-questions", type=int, default=8, help="questions solved by beam search per engine")
    parser.add_argument("--budget", type=int, default=16, help="beam search budget N")
    parser.add_argument("--beam-width", type=int, default=4, help="beam search width M")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every engine")
    parser.add_argument("--block-size", type=int, default=32, help="vLLM KV block size: the prefix-cache grain")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)  # before vLLM starts: its CPU worker then freezes the setting
    proposer, prm, what = models()
    problems = task.problems(max(args.questions, args.beam_questions), seed=2024)
    questions = [p.question for p in problems]
    prompts = [DEFAULT_FORMAT.solution(q) for q in questions[: args.questions]]
    where = "in its own process" if os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "1" else "in-process"
    print(f"model: {what}; {args.threads} torch thread(s); vLLM engine {where}")

    verifier = load_verifier(f"hf:{prm}?device=cpu")
    engines: list[tuple[str, str]] = [
        ("hf", f"hf:{proposer}?device=cpu&dtype=float32"),
        ("vllm", f"vllm:{proposer}?dtype=float32&enforce_eager=1&block_size={args.block_size}"),
        (
            "vllm, no prefix cache",
            f"vllm:{proposer}?dtype=float32&enforce_eager=1&block_size={args.block_size}&prefix_caching=0",
        ),
    ]
    measured = []
    for name, uri in engines:
        began = time.perf_counter()
        engine = load_proposer(uri)
        print(f"{name}: loaded in {time.perf_counter() - began:.1f} s ({engine.parameters:,d} parameters)", flush=True)
        engine.generate(["1+1"], 2, max_tokens=4, temperature=0.8, seed=123)  # warm-up, not timed
        measured.append(Measured(name, engine))

    # Rounds alternate between the engines, so load from other work on the machine falls on all alike.
    marks = [m.mark() for m in measured]
    for repeat in range(args.repeats):
        for m in measured:
            m.sample(prompts, args.n, args.max_tokens, seed=repeat)
    sampled = [m.row(mark) for m, mark in zip(measured, marks, strict=True)]

    settings = registry.get("beam").configure({"budget": args.budget, "beam_width": args.beam_width})
    graph = registry.compile_graph("beam", settings)
    marks = [m.mark() for m in measured]
    answers = [0] * len(measured)
    for index, question in enumerate(questions[: args.beam_questions]):
        for position, m in enumerate(measured):
            answers[position] += m.solve(graph, question, verifier, seed=index)
    searched = [m.row(mark, answered) for m, mark, answered in zip(measured, marks, answers, strict=True)]

    report(
        f"batched sampling: {len(prompts)} prompts × n={args.n}, ≤{args.max_tokens} tokens, T=0.8, "
        f"{args.repeats} call(s)",
        sampled,
        "hf",
    )
    report(
        f"beam search: {args.beam_questions} questions, N={args.budget}, M={args.beam_width} (proposer time only)",
        searched,
        "hf",
        extra=("vllm", "vllm, no prefix cache"),
    )


if __name__ == "__main__":
    main()
