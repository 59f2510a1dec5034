"""Tiny random-weight Llama models built in the test session (no hub, no download).

The tokenizer has a deliberately small vocabulary — digits, "+", the step separator, `\\boxed{`,
"}" and end-of-sequence — so that even random weights write steps, finish, and state answers at
useful rates. Every other character of a prompt maps to [UNK].
"""

from __future__ import annotations

from pathlib import Path

import pytest

SPECIALS = ["[PAD]", "[EOS]", "[UNK]"]
PIECES = ["\n\n", "\\boxed{", "}", "0", "1", "2", "3", "+"]


def build_tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIALS + PIECES)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n\n|\\boxed\{|[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]")


def save_tiny_model(directory: Path, *, classifier: bool, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    model = LlamaForTokenClassification(config) if classifier else LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-lm"), classifier=False)


@pytest.fixture(scope="session")
def tiny_prm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-prm"), classifier=True, seed=1)


@pytest.fixture(scope="session")
def quick_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three testbed models from a `--quick` training run (seconds)."""
    from ttc_nodes.testbed.train import train

    out = tmp_path_factory.mktemp("testbed")
    train(out, quick=True, seed=0)
    return out
