"""The testbed models: a character tokenizer and small Llama configurations.

All three checkpoints are standard transformers Llama models (vLLM loads the architecture; head
size 32), saved with their tokenizer so `AutoTokenizer` / `AutoModel*.from_pretrained(dir)` work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForTokenClassification,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARACTERS = ["\n", *(chr(code) for code in range(32, 127))]  # newline and printable ASCII


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 96
    layers: int = 4
    heads: int = 3  # head size = hidden / heads = 32, the least vLLM accepts
    intermediate: int = 256
    max_positions: int = 1024  # covers a revision prompt with 4 attempts and its answer


FULL = ModelSize()
QUICK = ModelSize(hidden=64, layers=1, heads=2, intermediate=128, max_positions=1024)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character: digits stay digits, which small models need for arithmetic."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=FULL.max_positions,
    )


def llama_config(size: ModelSize, tokenizer: PreTrainedTokenizerFast, **extra: Any) -> LlamaConfig:
    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        intermediate_size=size.intermediate,
        max_position_embeddings=size.max_positions,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaConfig(**settings, **extra)


def new_causal_lm(size: ModelSize, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(size, tokenizer))


def prm_from_proposer(proposer: LlamaForCausalLM, seed: int) -> LlamaForTokenClassification:
    """A value-head PRM (one logit per token) whose body starts as a copy of the proposer's."""
    torch.manual_seed(seed)
    settings = {k: v for k, v in proposer.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = LlamaConfig.from_dict({**settings, "num_labels": 1, "dtype": "float32"})
    config.architectures = ["LlamaForTokenClassification"]
    prm = LlamaForTokenClassification(config).float()
    prm.model.load_state_dict(proposer.model.state_dict())
    prm.to(proposer.device)
    return prm


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
