"""Process reward models that are causal LMs judging each step with a "good" or a "bad" token.

Two layouts from the field, both read in one forward pass per solution (batched, right-padded):

- `StepTagPRM` (Math-Shepherd style): `"{question} Step 1: {step} ки\\nStep 2: {step} ки\\n..."`; the
  score of a step is softmax over the (`+`, `-`) logits at its tag token.
- `ChatJudgePRM` (RLHFlow style): a chat whose user turns are the question with the first step, then
  each next step, and whose assistant turns all say `+`; the score of a step is
  p(`+`) / (p(`+`) + p(`-`)) for the assistant's judgement token after it.

Selected by URI, e.g. `hf:/path?format=step_tag&tag=ки&good=%2B&bad=-` or `hf:/path?format=chat_judge`.
Long inputs keep the beginning-of-sequence token and the tail (the steps), drop the start of the
question, and come back with `Scored.truncated=True`; a question whose tokens alone fill the context
is refused (`PromptTooLong`, see `LocalVerifier.score`).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from typing import Any

import torch

from ttc_nodes.engines.base import EngineError, Scored
from ttc_nodes.engines.hf import LocalVerifier, ScoreRow
from ttc_nodes.engines.transformers_io import right_pad
from ttc_nodes.engines.uris import masked_uri

log = logging.getLogger(__name__)

NEUTRAL = 0.5  # the score of a step whose judgement position was cut off by truncation


def single_token(tokenizer: Any, text: str, role: str) -> int:
    """The id of `text`, which must be one token for `tokenizer` (a judgement word or a step tag)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise EngineError(f"the {role} token {text!r} is {len(ids)} tokens for this tokenizer; it must be one")
    return int(ids[0])


def keep_tail(
    ids: list[int], positions: list[int], max_length: int, bos_token_id: int | None
) -> tuple[list[int], list[int]]:
    """Cut `ids` to `max_length`, keeping a leading beginning-of-sequence token and the tail (the steps).
    Positions that fall in the cut part become -1."""
    if len(ids) <= max_length:
        return ids, positions
    head = 1 if ids and ids[0] == bos_token_id else 0
    dropped = len(ids) - max_length
    kept = ids[:head] + ids[head + dropped :]
    return kept, [p - dropped if p >= head + dropped else -1 for p in positions]


def tokens_at(
    tokenizer: Any, text: str, chars: Sequence[int], *, add_special_tokens: bool, uri: str
) -> tuple[list[int], list[int]]:
    """Token ids of `text` (tokenized whole, as the model was trained) and, per character position,
    the index of the token that covers it. Needs a fast tokenizer (character offsets)."""
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    spans = [(start, end, i) for i, (start, end) in enumerate(encoding["offset_mapping"]) if end > start]
    ends = [end for _, end, _ in spans]
    found = []
    for char in chars:
        k = bisect.bisect_right(ends, char)
        if k == len(spans) or spans[k][0] > char:
            raise EngineError(f"{uri}: no token covers character {char} of the PRM input")
        found.append(spans[k][2])
    return ids, found


def step_tag_text(question: str, steps: Sequence[str], tag: str) -> tuple[str, list[int]]:
    """Math-Shepherd's input text and the character position of the last character of each tag."""
    text = f"{question} "
    ends = []
    for number, step in enumerate(steps, start=1):
        text += f"Step {number}: {step} {tag}"
        ends.append(len(text) - 1)
        text += "\n"
    return text, ends


class CausalLMPRM(LocalVerifier):
    """A causal LM read at one position per step: p(good) / (p(good) + p(bad)) of its next token.

    Subclasses say where: `encode` returns the token ids of a solution and, per step, the position
    whose next-token logits judge it.
    """

    format_name = "causal_lm"
    mixes_questions = True

    def __init__(
        self,
        path: str,
        *,
        good: str = "+",
        bad: str = "-",
        device: str = "auto",
        dtype: str = "float32",
        max_batch: int = 32,
        max_length: int | None = None,
        uri: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        location = self._load(
            AutoModelForCausalLM,
            path,
            "a causal LM PRM",
            device=device,
            dtype=dtype,
            max_batch=max_batch,
            max_length=max_length,
        )
        self.uri = masked_uri(uri) if uri else f"hf:{location}?format={self.format_name}"
        if not self.tokenizer.is_fast:
            raise EngineError(f"PRM at {location} needs a fast tokenizer (character offsets locate its steps)")
        self.good_id = self._single_token(good, "good")
        self.bad_id = self._single_token(bad, "bad")
        self.good, self.bad = good, bad

    def _single_token(self, text: str, role: str) -> int:
        return single_token(self.tokenizer, text, role)

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        raise NotImplementedError

    @torch.inference_mode()
    def _score_rows(self, rows: Sequence[ScoreRow]) -> list[Scored]:
        encoded = [self._fit(*self.encode(question, steps)) for question, steps in rows]
        input_ids, mask = right_pad([ids for ids, _, _ in encoded], 0)
        # Project only the positions that are read: full-vocabulary logits at every position of a
        # long batch would not fit in memory.
        wanted = sorted({p for _, positions, _ in encoded for p in positions if p >= 0}) or [0]
        column = {p: k for k, p in enumerate(wanted)}
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            logits_to_keep=torch.tensor(wanted, device=self.device),
        ).logits
        pair = logits[..., [self.good_id, self.bad_id]].float()
        good = torch.softmax(pair, dim=-1)[..., 0].cpu()
        results = []
        for row, (ids, positions, full_length) in enumerate(encoded):
            scores = [float(good[row, column[p]]) if p >= 0 else NEUTRAL for p in positions]
            truncated = full_length > len(ids)
            if truncated:
                log.warning(
                    "%s: PRM input of %d tokens truncated to %d (start of the question dropped)",
                    self.uri,
                    full_length,
                    len(ids),
                )
            results.append(Scored(step_scores=scores, tokens=len(ids), truncated=truncated))
        return results

    def _fit(self, ids: list[int], positions: list[int]) -> tuple[list[int], list[int], int]:
        kept, moved = keep_tail(ids, positions, self.max_length, self.tokenizer.bos_token_id)
        return kept, moved, len(ids)

    def _tokens_at(self, text: str, chars: Sequence[int], *, add_special_tokens: bool) -> tuple[list[int], list[int]]:
        return tokens_at(self.tokenizer, text, chars, add_special_tokens=add_special_tokens, uri=self.uri)


class StepTagPRM(CausalLMPRM):
    """Math-Shepherd style: a tag after each step; its +/− logits give the step's score."""

    format_name = "step_tag"

    def __init__(self, path: str, *, tag: str = "ки", **options: Any) -> None:
        super().__init__(path, **options)
        if not tag:
            raise ValueError("the step tag must not be empty")
        self.tag = tag

    def render(self, question: str, steps: Sequence[str]) -> tuple[str, list[int]]:
        """The PRM's input text and the character position of the last character of each tag."""
        return step_tag_text(question, steps, self.tag)

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        text, ends = self.render(question, steps)
        return self._tokens_at(text, ends, add_special_tokens=True)


class ChatJudgePRM(CausalLMPRM):
    """RLHFlow style: the model, as the assistant, answers + or − after each step (a user turn)."""

    format_name = "chat_judge"

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(f"{self.uri}: format=chat_judge needs a tokenizer with a chat template")

    def conversation(self, question: str, steps: Sequence[str]) -> list[dict[str, str]]:
        turns = []
        for number, step in enumerate(steps):
            turns.append({"role": "user", "content": f"{question} {step}" if number == 0 else step})
            turns.append({"role": "assistant", "content": self.good})
        return turns

    def render(self, question: str, steps: Sequence[str]) -> tuple[str, list[int]]:
        """The chat as text and, per step, the character where the assistant's judgement starts."""
        turns = self.conversation(question, steps)
        text = self._render(turns, generation_prompt=False)
        starts = []
        for k in range(len(steps)):
            before = self._render(turns[: 2 * k + 1], generation_prompt=True)
            if not text.startswith(before) or not text[len(before) :].startswith(self.good):
                raise EngineError(
                    f"{self.uri}: the chat template does not render a conversation as the prefix of a longer one "
                    "followed by the assistant's judgement; format=chat_judge cannot locate the judgements"
                )
            starts.append(len(before))
        return text, starts

    def _render(self, turns: list[dict[str, str]], *, generation_prompt: bool) -> str:
        rendered = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
        return str(rendered)

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        text, starts = self.render(question, steps)
        # The template writes its own special tokens.
        ids, judgements = self._tokens_at(text, starts, add_special_tokens=False)
        for index in judgements:
            if ids[index] != self.good_id:
                raise EngineError(f"{self.uri}: the judgement {self.good!r} merges with the text around it")
        # The logits one position before a judgement token predict it.
        return ids, [index - 1 for index in judgements]


PRM_FORMATS: dict[str, type[CausalLMPRM]] = {"step_tag": StepTagPRM, "chat_judge": ChatJudgePRM}
