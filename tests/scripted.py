"""Deterministic engines for property tests of the search algorithms.

They stand in for models only where a test is about the algorithm (budget, pruning, votes):
every output is a seeded function of the prompt, so hypothesis can explore thousands of runs.
Engine behaviour itself is tested against real transformers models in test_engines_hf.py.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from ttc_nodes.engines.base import Completion, Scored


def _unit(*parts: object) -> float:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class ScriptedProposer:
    """Writes numbered steps; a step finishes with a boxed answer with probability `finish_rate`."""

    uri = "scripted:proposer"
    parameters = 1_000

    def __init__(self, finish_rate: float = 0.3, answers: Sequence[str] = ("1", "2", "3")) -> None:
        self.finish_rate = finish_rate
        self.answers = list(answers)
        self.calls: list[tuple[list[str], int, float]] = []

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[list[Completion]]:
        self.calls.append((list(prompts), n, temperature))
        results = []
        for row, prompt in enumerate(prompts):
            rng = random.Random(f"{seed}|{row}|{prompt}|{temperature}")
            samples = []
            for _ in range(n):
                answer = rng.choice(self.answers)
                if stop and rng.random() >= self.finish_rate:
                    text, reason = f"step {rng.randint(0, 99)}", stop[0]
                elif stop:
                    text, reason = f"so \\boxed{{{answer}}}", None
                else:
                    text, reason = f"step {rng.randint(0, 9)}\n\nso \\boxed{{{answer}}}", None
                samples.append(
                    Completion(
                        text=text,
                        prompt_tokens=len(prompt) // 4 + 1,
                        completion_tokens=len(text) // 4 + 1,
                        logprob=-1.0,
                        finish_reason="stop",
                        stop_reason=reason,
                    )
                )
            results.append(samples)
        return results


class ScriptedVerifier:
    """Scores each step prefix by a hash of the prefix: deterministic, spread over (0, 1)."""

    uri = "scripted:prm"
    parameters = 500

    def score(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        return [
            Scored(
                step_scores=[0.01 + 0.98 * _unit(question, tuple(steps[: i + 1])) for i in range(len(steps))],
                tokens=sum(len(s) for s in steps) // 4 + 1,
            )
            for steps in solutions
        ]
