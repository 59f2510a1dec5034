"""An LLM as the process reward model: any proposer engine rates each step prefix in words.

URI: `judge:<proposer URI>`, e.g. `judge:openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct?concurrency=8`
or `judge:gguf:/path/model.gguf?chat=1`. Options that start with `judge_` are the judge's own
(`judge_max_tokens`, `judge_max_chars`); the others belong to the proposer URI.

Every prefix of every candidate goes into one `generate` call at temperature 0. The reply is read as
a rating from 0 to 10 (scaled to [0, 1]) or as yes / no; a reply that says neither scores 0.5 and is
logged as a warning that quotes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from ttc_nodes.engines.base import Proposer, Scored
from ttc_nodes.engines.uris import masked_uri

log = logging.getLogger(__name__)

UNREADABLE = 0.5  # the score of a step whose rating could not be read
MAX_RATING = 10.0

JUDGE_TEMPLATE = (
    "Question: {question}\n\n"
    "Solution so far:\n{steps}\n\n"
    "Is the last step of this solution correct? Rate it from 0 (wrong) to 10 (certainly right).\n"
    "Rating:"
)

_VERDICT = re.compile(r"\b(yes|no|correct|incorrect|wrong|right)\b|(\d+(?:\.\d+)?)(\s*/\s*(\d+(?:\.\d+)?))?", re.I)
_WORDS = {"yes": 1.0, "correct": 1.0, "right": 1.0, "no": 0.0, "incorrect": 0.0, "wrong": 0.0}


def parse_rating(reply: str) -> float | None:
    """The judge's verdict in [0, 1]: the first number (out of 10, or `a/b`) or yes/no word, else None."""
    match = _VERDICT.search(reply)
    if match is None:
        return None
    if match.group(1):
        return _WORDS[match.group(1).lower()]
    value = float(match.group(2))
    scale = float(match.group(4)) if match.group(4) else MAX_RATING
    if scale <= 0 or value > scale:
        return None
    return value / scale


class JudgePRM:
    """A verifier that asks a proposer engine to rate each step prefix, all in one batched call."""

    def __init__(
        self,
        proposer: Proposer,
        *,
        template: str = JUDGE_TEMPLATE,
        max_tokens: int = 8,
        max_chars: int = 8000,
        uri: str | None = None,
    ) -> None:
        if max_tokens < 1 or max_chars < 1:
            raise ValueError(f"judge_max_tokens and judge_max_chars must be >= 1, got {max_tokens}, {max_chars}")
        self.proposer = proposer
        self.template = template
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.uri = masked_uri(uri or f"judge:{proposer.uri}")
        self.parameters = proposer.parameters
        # A chat model gets the judge's prompt as its user turn (see PromptFormat.for_chat).
        prompt_format = getattr(proposer, "prompt_format", None)
        self._wrap = prompt_format.question_template if prompt_format is not None and prompt_format.chat else None

    def prompt(self, question: str, steps: Sequence[str]) -> tuple[str, bool]:
        """The judge's prompt for the last of `steps`, and whether the question had to be shortened."""
        body = "\n\n".join(steps)
        text = self.template.format(question=question, steps=body)
        truncated = len(text) > self.max_chars
        if truncated:
            # Keep the steps whole and the end of the question: drop the question's beginning.
            keep = max(0, len(question) - (len(text) - self.max_chars))
            text = self.template.format(question="…" + question[len(question) - keep :], steps=body)
        if self._wrap is not None:
            text = self._wrap.format(question=text)
        return text, truncated

    def score(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        prefixes = [(row, k) for row, steps in enumerate(solutions) for k in range(1, len(steps) + 1)]
        prompts = [self.prompt(question, solutions[row][:k]) for row, k in prefixes]
        replies = (
            self.proposer.generate(
                [text for text, _ in prompts], 1, max_tokens=self.max_tokens, temperature=0.0, stop=["\n"]
            )
            if prompts
            else []
        )
        scores: list[list[float]] = [[] for _ in solutions]
        tokens = [0] * len(solutions)
        truncated = [False] * len(solutions)
        for (row, k), (_, cut), [reply] in zip(prefixes, prompts, replies, strict=True):
            rating = parse_rating(reply.text)
            if rating is None:
                log.warning(
                    "%s: unreadable rating %r for step %d; scoring it %.1f", self.uri, reply.text, k, UNREADABLE
                )
                rating = UNREADABLE
            scores[row].append(rating)
            tokens[row] += reply.prompt_tokens + reply.completion_tokens
            truncated[row] = truncated[row] or cut
        for row in range(len(solutions)):
            if truncated[row]:
                log.warning("%s: question shortened to fit %d characters in a judge prompt", self.uri, self.max_chars)
        return [
            Scored(step_scores=scores[row], tokens=tokens[row], truncated=truncated[row])
            for row in range(len(solutions))
        ]
