"""A proposer wrapper the benchmarks share: it counts the seconds spent inside the engine it wraps,
the prompt tokens sent to it and the completion tokens it returned."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ttc_nodes.engines import Completion, Proposer


class Timed:
    """A proposer that counts the seconds, prompt tokens sent and completion tokens of the engine it wraps."""

    def __init__(self, engine: Proposer) -> None:
        self.engine = engine
        self.uri = engine.uri
        self.parameters = engine.parameters
        self.seconds = 0.0
        self.sent = 0
        self.tokens = 0

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
        began = time.perf_counter()
        rows = self.engine.generate(prompts, n, max_tokens=max_tokens, temperature=temperature, stop=stop, seed=seed)
        self.seconds += time.perf_counter() - began
        self.sent += sum(c.prompt_tokens for row in rows for c in row)
        self.tokens += sum(c.completion_tokens for row in rows for c in row)
        return rows
