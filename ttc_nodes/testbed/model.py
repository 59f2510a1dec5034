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
    max_positions: int = 1280  # a revision prompt: 4 attempts of 192 tokens, the question twice, the answer


FULL = ModelSize()
QUICK = ModelSize(hidden=64, layers=1, heads=2, intermediate=128, max_positions=1280)


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


def prm_head(proposer: LlamaForCausalLM, extra_layers: int, seed: int) -> LlamaForTokenClassification:
    """The trainable part of the testbed PRM: `extra_layers` new decoder layers, a final norm and a
    one-logit value head, run on the proposer's last residual states (`inputs_embeds`); its own
    token embedding is never used. `assemble_prm` puts it on top of the proposer's body."""
    if extra_layers < 1:
        raise ValueError(f"the PRM needs at least one layer above the proposer's body, got {extra_layers}")
    torch.manual_seed(seed)
    head = LlamaForTokenClassification(_prm_config(proposer, extra_layers)).float()
    for layer in head.model.layers:  # each new layer first reads the body as the proposer's LM head does
        layer.input_layernorm.weight.data.copy_(proposer.model.norm.weight.data)
    return head.to(proposer.device)


def assemble_prm(proposer: LlamaForCausalLM, head: LlamaForTokenClassification) -> LlamaForTokenClassification:
    """One standard `LlamaForTokenClassification`: the proposer's embedding and layers, then the head's
    layers, norm and value head. Its logits equal the head's on the body's residual states."""
    body_layers = proposer.config.num_hidden_layers
    prm = LlamaForTokenClassification(_prm_config(proposer, body_layers + head.config.num_hidden_layers)).float()
    state = {f"model.{key}": value for key, value in proposer.model.state_dict().items() if not key.startswith("norm.")}
    for key, value in head.state_dict().items():
        if key.startswith("model.layers."):
            index, rest = key.removeprefix("model.layers.").split(".", 1)
            state[f"model.layers.{body_layers + int(index)}.{rest}"] = value
        elif not key.startswith("model.embed_tokens."):
            state[key] = value
    prm.load_state_dict(state, strict=True)
    return prm.to(proposer.device).eval()


def _prm_config(proposer: LlamaForCausalLM, layers: int) -> LlamaConfig:
    settings = {k: v for k, v in proposer.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = LlamaConfig.from_dict({**settings, "num_hidden_layers": layers, "num_labels": 1, "dtype": "float32"})
    config.architectures = ["LlamaForTokenClassification"]
    return config


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
