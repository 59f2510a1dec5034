"""A causal LM as its own verifier: its confidence in the answer it reads.

The score of step k is the lowest probability the model gives any answer token up to the end of
step k: a running minimum, so a step after a doubtful one is doubtful too. The step separators
that the layout writes between steps (`prm_inputs`, as for value-head PRMs) are skipped: they are
layout, not the answer (after the last step the model would have ended the answer instead).

No reward model and no labels: a baseline verifier for models that come without a PRM, and on the
testbed a strong one, because the proposer's slips are tokens it would itself rarely write. Read in
one forward pass per solution (batched, right-padded); the vocabulary projection runs only on the
answer's positions, a chunk at a time, so long answers of large-vocabulary models fit in memory.
Selected by URI: `hf:PATH?format=confidence`, `testbed:proposer?format=confidence`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ttc_nodes.engines.base import Scored
from ttc_nodes.engines.hf import LocalVerifier
from ttc_nodes.engines.transformers_io import prm_inputs, right_pad
from ttc_nodes.engines.uris import masked_uri
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat

log = logging.getLogger(__name__)

PROJECTED_LOGITS = 16_000_000  # vocabulary logits computed at once (64 MB in float32)


def running_confidence(log_probs: torch.Tensor, skipped: Sequence[int] = ()) -> torch.Tensor:
    """Per token, the lowest probability among the tokens up to and including it; `skipped`
    positions (the layout's step separators) count as certain."""
    kept = log_probs.clone()
    kept[list(skipped)] = 0.0
    return torch.exp(torch.cummin(kept, dim=0).values) if len(kept) else kept


class ConfidencePRM(LocalVerifier):
    """Step scores from a causal LM's own token probabilities (see the module docstring)."""

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch: int = 8,
        max_length: int | None = None,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
        uri: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        location = self._load(
            AutoModelForCausalLM,
            path,
            "a causal LM (confidence verifier)",
            device=device,
            dtype=dtype,
            max_batch=max_batch,
            max_length=max_length,
        )
        self.uri = masked_uri(uri) if uri else f"hf:{location}?format=confidence"
        self.prompt_format = prompt_format
        self._separator = len(self.tokenizer(prompt_format.step_separator, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def _score_batch(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        prompt = len(self.tokenizer(self.prompt_format.solution(question), add_special_tokens=False)["input_ids"])
        rows = []
        for steps in solutions:
            ids, ends = prm_inputs(self.tokenizer, question, steps, self.prompt_format)
            cut = max(0, len(ids) - self.max_length)  # keep the tail: the answer matters more than the question
            rows.append((ids[cut:], [end - cut for end in ends], max(1, prompt - cut), cut > 0))
        input_ids, mask = right_pad([ids for ids, _, _, _ in rows], self.tokenizer.pad_token_id or 0)
        hidden = self.model.base_model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        results = []
        for row, (ids, ends, start, truncated) in enumerate(rows):
            separators = [end - k - start for end in ends for k in range(self._separator)]
            confidence = running_confidence(
                self._token_log_probs(hidden[row], ids, start), [p for p in separators if p >= 0]
            )
            scores = [float(confidence[end - start]) if end >= start else 1.0 for end in ends]
            if truncated:
                log.warning("%s: input cut to its last %d tokens", self.uri, self.max_length)
            results.append(Scored(step_scores=scores, tokens=len(ids), truncated=truncated))
        return results

    def _token_log_probs(self, hidden: torch.Tensor, ids: list[int], start: int) -> torch.Tensor:
        """log p(ids[t] | ids[:t]) for t = start .. len(ids)-1, projecting a chunk of positions at a time."""
        head = self.model.get_output_embeddings()
        targets = torch.tensor(ids[start:], device=hidden.device)
        chunk = max(1, PROJECTED_LOGITS // head.weight.shape[0])
        pieces = []
        for first in range(0, len(targets), chunk):
            logits = head(hidden[start - 1 + first : start - 1 + first + chunk]).float()
            picked = targets[first : first + chunk]
            pieces.append(torch.log_softmax(logits, dim=-1).gather(-1, picked[:, None])[:, 0])
        return torch.cat(pieces).cpu() if pieces else torch.zeros(0)
