"""What the transformers engines and the testbed's training feed a model, built the same way on both
sides: a question and its steps as token ids with the positions a PRM reads (`prm_inputs`), rows of
ids right-padded into a batch (`right_pad`), and transformers kept quiet while it loads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat


def prm_inputs(
    tokenizer: Any, question: str, steps: Sequence[str], prompt_format: PromptFormat = DEFAULT_FORMAT
) -> tuple[list[int], list[int]]:
    """Token ids of a question and its steps, and the position of each step's last separator token.

    The step score is read at that position. Segments are tokenized separately so the positions are
    exact whatever the tokenizer merges; the testbed PRM is trained on this same layout.
    """

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    ids = encode(prompt_format.solution(question))
    separator = encode(prompt_format.step_separator)
    positions: list[int] = []
    for step in steps:
        ids += encode(step) + separator
        positions.append(len(ids) - 1)
    return ids, positions


def right_pad(rows: Sequence[Sequence[int] | torch.Tensor], fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows right-padded with `fill` to the longest (at least 1 wide), and the attention mask. A row
    is a list of token ids (padded as int64) or a tensor of any trailing shape (keeps its dtype)."""
    tensors = [row if isinstance(row, torch.Tensor) else torch.tensor(row, dtype=torch.long) for row in rows]
    width = max((len(row) for row in tensors), default=1)
    trailing, dtype = (tensors[0].shape[1:], tensors[0].dtype) if tensors else ((), torch.long)
    padded = torch.full((len(tensors), width, *trailing), fill, dtype=dtype)
    mask = torch.zeros((len(tensors), width), dtype=torch.long)
    for index, row in enumerate(tensors):
        padded[index, : len(row)] = row
        mask[index, : len(row)] = 1
    return padded, mask


def quiet_transformers() -> None:
    # Weight-loading progress bars would interleave with our own progress display on stderr.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
