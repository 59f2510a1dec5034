"""`Proposer.generate` written once, for the engines whose model call takes a batch of prompts.

A call is checked (`n`, `max_tokens`, prompts that fit), its prompts are laid out as rows, the rows
go to the model `max_batch` at a time, and the completions come back grouped `n` per prompt. An
engine writes its model call on one batch (`_generate_batch`); what the call as a whole needs around
it (a lock, a seeded RNG, requests in flight at once) goes in an override of `_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from ttc_nodes.engines.base import Completion

T = TypeVar("T")


@dataclass(frozen=True)
class Row:
    """One row of a call's batches: a prompt, and its index among the call's prompts."""

    position: int
    prompt: str


@dataclass(frozen=True)
class Sampling:
    """How every row of one `generate` call is sampled: `samples` completions a row."""

    samples: int
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    seed: int | None


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """`items` in consecutive slices of at most `size`."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


class BatchedProposer:
    """The `generate` of a batching proposer. Subclasses set `max_batch` (rows per model call; None:
    the whole call at once) and write `_generate_batch`; they may refine `_check_prompts` and `_run`."""

    max_batch: int | None = None
    # True: every sample is a row of its own (each prompt n times, one completion a row), as
    # `model.generate` needs, whose greedy decoding cannot return several sequences for one row.
    # False: a row is a prompt asking for n samples, and a greedy row for one, copied n times.
    one_row_per_sample: ClassVar[bool] = True

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
        """`n` completions of each prompt, in the prompts' order; the same `seed` gives the same ones."""
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
        if not prompts:
            return []
        self._check_prompts(prompts)
        if self.one_row_per_sample:
            rows = [Row(position, prompt) for position, prompt in enumerate(prompts) for _ in range(n)]
            distinct, per_row = n, 1
        else:
            rows = [Row(position, prompt) for position, prompt in enumerate(prompts)]
            distinct = per_row = 1 if temperature == 0 else n  # greedy samples are all one sequence
        sampling = Sampling(per_row, max_tokens, temperature, tuple(stop), seed)
        grouped: list[list[Completion]] = [[] for _ in prompts]
        answers = self._run(chunks(rows, self.max_batch or len(rows)), sampling)
        for row, completions in zip(rows, answers, strict=True):
            grouped[row.position].extend(completions)
        return [completions[:distinct] * (n // distinct) for completions in grouped]

    def _check_prompts(self, prompts: Sequence[str]) -> None:
        """Refuse the call (PromptTooLong) before anything is generated; by default nothing is checked."""

    def _run(self, batches: list[list[Row]], sampling: Sampling) -> list[list[Completion]]:
        """The completions of every row of `batches`, in order: by default one batch after another."""
        return [completions for batch in batches for completions in self._generate_batch(batch, sampling)]

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        """`sampling.samples` completions of each row (fewer only where `_run` asks again for the rest)."""
        raise NotImplementedError
