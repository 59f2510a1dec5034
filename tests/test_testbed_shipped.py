"""The shipped checkpoints: standard transformers folders that vLLM can load, small and quick."""

from __future__ import annotations

import json

import pytest

from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import NAMES, SHIPPED
from ttc_nodes.testbed.trajectories import MAX_ATTEMPTS

pytestmark = pytest.mark.skipif(
    not all((SHIPPED / name / "config.json").is_file() for name in NAMES),
    reason="shipped testbed checkpoints not present (run `ttc testbed train`)",
)
VLLM_ARCHITECTURES = {"LlamaForCausalLM", "LlamaForTokenClassification", "Qwen2ForCausalLM"}


def config(name: str) -> dict:
    return json.loads((SHIPPED / name / "config.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_config_is_one_vllm_loads(name):
    settings = config(name)
    assert settings["model_type"] in {"llama", "qwen2"}
    assert set(settings["architectures"]) <= VLLM_ARCHITECTURES
    head_dim = settings.get("head_dim") or settings["hidden_size"] // settings["num_attention_heads"]
    assert head_dim >= 32 and head_dim % 16 == 0
    assert settings["hidden_size"] % settings["num_attention_heads"] == 0
    assert settings.get("torch_dtype") or settings.get("dtype")
    for file in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (SHIPPED / name / file).is_file()


def test_positions_cover_the_longest_prompt_and_answer():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / "proposer")
    longest = max(
        task.problems(500, seed=0, difficulty=task.MAX_DIFFICULTY), key=lambda p: len(p.question) + len(p.solution)
    )
    attempts = [longest.solution + "9" * 10] * MAX_ATTEMPTS
    revision = DEFAULT_FORMAT.revision(longest.question, attempts) + longest.solution + "<eos>"
    length = len(tokenizer(revision, add_special_tokens=False)["input_ids"])
    for name in NAMES:
        assert config(name)["max_position_embeddings"] >= length


def test_tokenizer_round_trips_and_defines_special_tokens():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED / "proposer")
    assert None not in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id)
    text = DEFAULT_FORMAT.solution("Compute (12 + 7) * 3.") + "12 + 7 = 19\n\n19 * 3 = \\boxed{57}"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_checkpoints_are_small_enough_to_ship():
    total = sum(f.stat().st_size for name in NAMES for f in (SHIPPED / name).iterdir())
    assert total <= 25 * 1024 * 1024
