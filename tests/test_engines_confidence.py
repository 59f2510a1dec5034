"""The confidence verifier: a causal LM's lowest token probability so far, read per step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ttc_nodes.engines.confidence import ConfidencePRM
from ttc_nodes.engines.uris import load_verifier
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed.model import QUICK, build_tokenizer, new_causal_lm

QUESTION = "Compute (12 + 7) * 3."
SOLUTIONS = [
    ["12 + 7 = 19", "19 * 3 = \\boxed{57}"],
    ["12 + 7 = 18", "18 * 3 = \\boxed{54}"],
    ["12 + 7 = 19"],
    ["1 + 1 = 2", "2 + 2 = 4", "4 * 3 = \\boxed{12}"],
    ["x"],
]


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random small Llama with the testbed's one-token-per-character tokenizer."""
    directory = tmp_path_factory.mktemp("char-lm")
    tokenizer = build_tokenizer()
    new_causal_lm(QUICK, tokenizer, seed=11).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def brute_force(engine: ConfidencePRM, steps: list[str]) -> list[float]:
    """One character is one token: positions are character indices of the rendered text."""
    prompt = DEFAULT_FORMAT.solution(QUESTION)
    separator = DEFAULT_FORMAT.step_separator
    text = prompt + "".join(step + separator for step in steps)
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    skipped, ends, position = set(), [], len(prompt)
    for step in steps:
        position += len(step) + len(separator)
        skipped.update(range(position - len(separator), position))
        ends.append(position - 1)
    scores, lowest = [], 0.0
    for t in range(len(prompt), len(ids)):
        if t not in skipped:
            lowest = min(lowest, float(log_probs[t - 1, ids[t]]))
        if t in ends:
            scores.append(math.exp(lowest))
    return scores


def test_step_scores_are_the_lowest_answer_token_probability_so_far(char_lm):
    engine = ConfidencePRM(str(char_lm), device="cpu", max_batch=2)
    results = engine.score(QUESTION, SOLUTIONS)
    for steps, result in zip(SOLUTIONS, results, strict=True):
        assert result.step_scores == pytest.approx(brute_force(engine, steps), rel=1e-4)
        assert all(0.0 < s <= 1.0 for s in result.step_scores)
        assert result.step_scores == sorted(result.step_scores, reverse=True)  # a running minimum
        assert not result.truncated


def test_scores_do_not_depend_on_the_batch(char_lm):
    engine = ConfidencePRM(str(char_lm), device="cpu", max_batch=8)
    together = engine.score(QUESTION, SOLUTIONS)
    alone = [engine.score(QUESTION, [steps])[0] for steps in SOLUTIONS]
    for a, b in zip(together, alone, strict=True):
        assert a.step_scores == pytest.approx(b.step_scores, rel=1e-5)


def test_a_long_input_keeps_its_tail_and_says_so(char_lm):
    engine = ConfidencePRM(str(char_lm), device="cpu", max_length=24)
    (result,) = engine.score(QUESTION, [SOLUTIONS[3]])
    assert result.truncated and result.tokens == 24
    assert len(result.step_scores) == 3
    assert result.step_scores == sorted(result.step_scores, reverse=True)


def test_the_uri_selects_it_and_rejects_unknown_options(char_lm):
    engine = load_verifier(f"hf:{char_lm}?format=confidence&device=cpu&max_batch=3")
    assert isinstance(engine, ConfidencePRM) and engine.max_batch == 3
    assert engine.parameters == sum(p.numel() for p in engine.model.parameters())
    with pytest.raises(ValueError, match="good"):
        load_verifier(f"hf:{char_lm}?format=confidence&good=x")
