"""The two engine protocols every model backend implements.

Both are batch-first: one call carries every prompt of a search round, so a continuous-batching
backend (vLLM, an OpenAI-compatible server) sees the whole round at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable


class EngineError(RuntimeError):
    """A model backend failed: unreachable, misconfigured, or returned something unusable."""


class TransientEngineError(EngineError):
    """A failure worth retrying: a timeout, a dropped connection, a server error (5xx)."""


class PromptTooLong(EngineError):
    """A prompt (or a verifier's question) that leaves no room in the engine's context; refused before
    any generation. Never retried: the same prompt is as long the next time."""

    def __init__(self, engine: str, tokens: int, context: int, what: str = "a prompt") -> None:
        super().__init__(f"{engine}: {what} of {tokens} tokens does not fit the engine's context of {context} tokens")
        self.engine, self.tokens, self.context = engine, tokens, context


def check_fits(engine: str, tokens: int, context: int | None, what: str = "a prompt") -> None:
    """Raise PromptTooLong unless `tokens` leave at least one position of `context` (None: unknown,
    so nothing is checked) to generate or score in."""
    if context is not None and tokens >= context:
        raise PromptTooLong(engine, tokens, context, what)


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of one prompt.

    `finish_reason` follows the OpenAI/vLLM convention: "stop" when a stop string or the end-of-sequence
    token ended it, "length" when `max_tokens` did. `stop_reason` is the stop string that matched,
    or None when the model emitted end-of-sequence (or ran out of tokens). `batch_rows` is the rows
    of the model call that produced it, where a batcher merged calls (None: not recorded); it is
    trace, not result, so two completions equal but for it compare equal.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    logprob: float
    finish_reason: Literal["stop", "length"]
    stop_reason: str | None = None
    batch_rows: int | None = field(default=None, compare=False)

    @property
    def ended_sequence(self) -> bool:
        """True when the model itself ended the answer (end-of-sequence token)."""
        return self.finish_reason == "stop" and self.stop_reason is None


@dataclass(frozen=True)
class Scored:
    """A verifier's output for one candidate: one score in [0, 1] per step, and tokens read;
    `batch_rows` as for `Completion`."""

    step_scores: list[float]
    tokens: int
    truncated: bool = False
    batch_rows: int | None = field(default=None, compare=False)


@runtime_checkable
class Proposer(Protocol):
    """Samples continuations. Returns, per prompt, `n` completions."""

    uri: str
    parameters: int

    def generate(
        self,
        prompts: Sequence[str],
        n: int,
        *,
        max_tokens: int,
        temperature: float,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[list[Completion]]: ...


@runtime_checkable
class Verifier(Protocol):
    """A process reward model: scores every step prefix of each candidate solution."""

    uri: str
    parameters: int

    def score(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]: ...
