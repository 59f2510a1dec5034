"""`BatchedProposer.generate`, the loop every batching engine shares: the call is checked, its prompts
laid out as rows (a row per sample, or a row per prompt asking for n), sent `max_batch` rows at a
time, and the completions grouped back n per prompt in the prompts' order."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ttc_nodes.engines import Completion, PromptTooLong
from ttc_nodes.engines.base import check_fits
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling, row_seed


class Recording(BatchedProposer):
    """Answers each row with its prompt, its position and a sample counter; records every batch."""

    uri = "recording:"

    def __init__(self, max_batch: int | None) -> None:
        self.max_batch = max_batch
        self.batches: list[list[Row]] = []
        self.sampled: list[Sampling] = []

    def _check_prompts(self, prompts: Sequence[str]) -> None:
        check_fits(self.uri, max(len(prompt) for prompt in prompts), 10)

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        self.batches.append(list(rows))
        self.sampled.append(sampling)
        start = sum(len(batch) for batch in self.batches[:-1])
        return [[self._answer(row, start + i, j) for j in range(sampling.samples)] for i, row in enumerate(rows)]

    @staticmethod
    def _answer(row: Row, index: int, sample: int) -> Completion:
        return Completion(f"{row.prompt}@{row.position}#{index}.{sample}", 1, 1, 0.0, "stop")


class RecordingPerPrompt(Recording):
    one_row_per_sample = False


def texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[completion.text for completion in row] for row in rows]


def test_every_sample_is_a_row_sent_max_batch_at_a_time() -> None:
    engine = Recording(max_batch=4)
    got = engine.generate(["a", "b", "c"], 3, max_tokens=5, temperature=0.7, stop=["\n"], seed=9)
    assert texts(got) == [
        ["a@0#0.0", "a@0#1.0", "a@0#2.0"],
        ["b@1#3.0", "b@1#4.0", "b@1#5.0"],
        ["c@2#6.0", "c@2#7.0", "c@2#8.0"],
    ]
    assert [len(batch) for batch in engine.batches] == [4, 4, 1]
    assert engine.sampled[0] == Sampling(samples=1, max_tokens=5, temperature=0.7, stop=("\n",), seed=9)


def test_a_row_per_prompt_asks_for_n_samples_and_a_greedy_row_for_one_copied() -> None:
    engine = RecordingPerPrompt(max_batch=None)
    sampled = engine.generate(["a", "b"], 2, max_tokens=5, temperature=1.0)
    assert texts(sampled) == [["a@0#0.0", "a@0#0.1"], ["b@1#1.0", "b@1#1.1"]]
    greedy = engine.generate(["a", "b"], 3, max_tokens=5, temperature=0.0)
    assert texts(greedy) == [["a@0#2.0"] * 3, ["b@1#3.0"] * 3]
    assert [len(batch) for batch in engine.batches] == [2, 2]  # max_batch None: the whole call at once


def test_bad_calls_are_refused_before_any_batch() -> None:
    engine = Recording(max_batch=2)
    with pytest.raises(ValueError, match="n and max_tokens must be >= 1, got n=0, max_tokens=4"):
        engine.generate(["a"], 0, max_tokens=4, temperature=1.0)
    with pytest.raises(PromptTooLong):
        engine.generate(["a", "x" * 10], 1, max_tokens=4, temperature=1.0)
    assert engine.generate([], 3, max_tokens=4, temperature=1.0) == []
    assert engine.batches == []


def test_every_row_carries_its_own_seed_from_the_call_seed_position_and_sample() -> None:
    engine, per_prompt = Recording(max_batch=None), RecordingPerPrompt(max_batch=None)
    engine.generate(["a", "b"], 2, max_tokens=5, temperature=1.0, seed=9)
    per_prompt.generate(["a", "b"], 2, max_tokens=5, temperature=1.0, seed=9)
    engine.generate(["a"], 2, max_tokens=5, temperature=1.0)

    seeded, unseeded = engine.batches
    assert [row.seed for row in seeded] == [row_seed(9, p, s) for p in range(2) for s in range(2)]
    assert [row.seed for row in per_prompt.batches[0]] == [row_seed(9, 0, 0), row_seed(9, 1, 0)]
    assert [row.seed for row in unseeded] == [None, None]
    assert engine.sampled[0].seed == 9  # an engine that is not row-seeded still seeds the call as a whole
