"""`Proposer.generate` written once, for the engines whose model call takes a batch of prompts.

A call is checked (`n`, `max_tokens`, prompts that fit), its prompts are laid out as rows, the rows
go to the model `max_batch` at a time, and the completions come back grouped `n` per prompt. An
engine writes its model call on one batch (`_generate_batch`); what the call as a whole needs around
it (a lock, a seeded RNG, requests in flight at once) goes in an override of `_run`.

Every row carries a seed of its own, derived from the call's seed, the prompt's position and the
sample's index. An engine whose rows depend on nothing but their prompt, the sampling parameters and
that seed (`row_seeded`) has its rows merged with those of concurrent calls (`engines.batcher`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from ttc_nodes.engines.base import Completion
from ttc_nodes.engines.batcher import Batcher, chunks, shared_batcher

__all__ = ["BatchedProposer", "Row", "Sampling", "chunks", "row_seed"]


@dataclass(frozen=True)
class Row:
    """One row of a call's batches: a prompt, its index among the call's prompts, and the row's own
    seed (None when the call has none)."""

    position: int
    prompt: str
    seed: int | None = None


@dataclass(frozen=True)
class Sampling:
    """How every row of one `generate` call is sampled: `samples` completions a row."""

    samples: int
    max_tokens: int
    temperature: float
    stop: tuple[str, ...]
    seed: int | None


def row_seed(seed: int | None, position: int, sample: int) -> int | None:
    """The seed of a call's row: 32 bits of a hash of (call seed, prompt position, sample index),
    the same in every process; None for a call without a seed."""
    if seed is None:
        return None
    digest = hashlib.sha256(repr((seed, position, sample)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class BatchedProposer:
    """The `generate` of a batching proposer. Subclasses set `max_batch` (rows per model call; None:
    the whole call at once) and write `_generate_batch`; they may refine `_check_prompts` and `_run`."""

    max_batch: int | None = None
    # True: every sample is a row of its own (each prompt n times, one completion a row), as
    # `model.generate` needs, whose greedy decoding cannot return several sequences for one row.
    # False: a row is a prompt asking for n samples, and a greedy row for one, copied n times.
    one_row_per_sample: ClassVar[bool] = True
    # True promises that a row's completions depend only on its prompt, the sampling parameters and
    # `row.seed`, never on its batch-mates: rows of concurrent calls then share model calls, and
    # `_run` sees `sampling.seed` None. False: one call's rows at a time, seeded by `sampling.seed`.
    row_seeded: ClassVar[bool] = False

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
        """`n` completions of each prompt, in the prompts' order; the same `seed` gives the same ones
        (for a `row_seeded` engine, whatever calls ran beside this one)."""
        if n < 1 or max_tokens < 1:
            raise ValueError(f"n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
        if not prompts:
            return []
        self._check_prompts(prompts)
        if self.one_row_per_sample:
            rows = [
                Row(position, prompt, row_seed(seed, position, sample))
                for position, prompt in enumerate(prompts)
                for sample in range(n)
            ]
            distinct, per_row = n, 1
        else:
            rows = [Row(position, prompt, row_seed(seed, position, 0)) for position, prompt in enumerate(prompts)]
            distinct = per_row = 1 if temperature == 0 else n  # greedy samples are all one sequence
        sampling = Sampling(per_row, max_tokens, temperature, tuple(stop), seed)
        grouped: list[list[Completion]] = [[] for _ in prompts]
        if self.row_seeded:
            answers = self._batcher().submit(replace(sampling, seed=None), rows)
        else:
            answers = self._run(chunks(rows, self.max_batch or len(rows)), sampling)
        for row, completions in zip(rows, answers, strict=True):
            grouped[row.position].extend(completions)
        return [completions[:distinct] * (n // distinct) for completions in grouped]

    def _batcher(self) -> Batcher[Sampling, Row, list[Completion]]:
        """The batcher every caller of this engine object shares (made on first use)."""
        return shared_batcher(
            self,
            lambda: Batcher(self._run_merged, max_rows=self.max_batch, name=getattr(self, "uri", type(self).__name__)),
        )

    def _run_merged(self, sampling: Sampling, batches: list[list[Row]]) -> list[list[Completion]]:
        """`_run` on rows of merged calls; each completion records the rows of its batch."""
        answers = self._run(batches, sampling)
        sizes = [len(batch) for batch in batches for _ in batch]
        return [
            [replace(completion, batch_rows=size) for completion in completions]
            for size, completions in zip(sizes, answers, strict=True)
        ]

    def _check_prompts(self, prompts: Sequence[str]) -> None:
        """Refuse the call (PromptTooLong) before anything is generated; by default nothing is checked."""

    def _run(self, batches: list[list[Row]], sampling: Sampling) -> list[list[Completion]]:
        """The completions of every row of `batches`, in order: by default one batch after another."""
        return [completions for batch in batches for completions in self._generate_batch(batch, sampling)]

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        """`sampling.samples` completions of each row (fewer only where `_run` asks again for the rest)."""
        raise NotImplementedError
