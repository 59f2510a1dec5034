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
import threading
from collections.abc import Sequence

import torch

from ttc_nodes.engines.base import Scored
from ttc_nodes.engines.hf import _check_max_batch, _check_path, load_model, parameter_count, pick_device, prm_inputs
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat

log = logging.getLogger(__name__)

PROJECTED_LOGITS = 16_000_000  # vocabulary logits computed at once (64 MB in float32)


class ConfidencePRM:
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

        location = _check_path(path)
        self.uri = uri or f"hf:{location}?format=confidence"
        self.device = pick_device(device)
        self.max_batch = _check_max_batch(max_batch)
        self.prompt_format = prompt_format
        self.tokenizer, self.model = load_model(
            AutoModelForCausalLM, location, "a causal LM (confidence verifier)", dtype=dtype, device=self.device
        )
        self._lock = threading.Lock()
        self.parameters = parameter_count(self.model)
        self.max_length = max_length or int(getattr(self.model.config, "max_position_embeddings", 4096))
        self._separator = len(self.tokenizer(prompt_format.step_separator, add_special_tokens=False)["input_ids"])

    def score(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        results: list[Scored] = []
        with self._lock:
            for start in range(0, len(solutions), self.max_batch):
                results.extend(self._score_batch(question, solutions[start : start + self.max_batch]))
        return results

    @torch.inference_mode()
    def _score_batch(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        prompt = len(self.tokenizer(self.prompt_format.solution(question), add_special_tokens=False)["input_ids"])
        rows = []
        for steps in solutions:
            ids, ends = prm_inputs(self.tokenizer, question, steps, self.prompt_format)
            cut = max(0, len(ids) - self.max_length)  # keep the tail: the answer matters more than the question
            rows.append((ids[cut:], [end - cut for end in ends], max(1, prompt - cut), cut > 0))
        width = max(len(ids) for ids, _, _, _ in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (ids, _, _, _) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        hidden = self.model.base_model(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        results = []
        for row, (ids, ends, start, truncated) in enumerate(rows):
            log_probs = self._token_log_probs(hidden[row], ids, start)
            skipped = [end - k for end in ends for k in range(self._separator)]
            log_probs[[p - start for p in skipped if p >= start]] = 0.0
            lowest = torch.cummin(log_probs, dim=0).values if len(log_probs) else log_probs
            scores = [float(torch.exp(lowest[end - start])) if end >= start else 1.0 for end in ends]
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
