"""The same tiny model through `hf:` (transformers) and `vllm:` (vLLM's offline engine) decodes alike.

Both engines run float32 weights, so greedy decoding picks the same token at every position unless
two logits tie to within float error; the random tiny model has no such ties on these prompts, so
texts, token counts and stop reasons must be equal, and summed log-probs equal to float tolerance.
"""

from __future__ import annotations

import pytest
import torch

from graphs import registry
from graphs.runner import run_graph
from tests.vllm.conftest import VLLM_OPTIONS
from ttc_nodes.engines import load_proposer, load_verifier
from ttc_nodes.state import SolveContext

PROMPTS = [
    "\\boxed{3",
    "3+3+3+3",
    "+",
    "Question: 1+2?\nSolution:\n1+1\n\n",
    "Question: What is 2+3?\nSolution:\n",
    "12+21+3",
]


@pytest.mark.parametrize("stop", [(), ("\n\n",), ("}",), ("\n\n", "\\boxed{", "2+")], ids=repr)
def test_greedy_completions_are_the_same_through_hf_and_vllm(hf_engine, vllm_engine, stop):
    expected = hf_engine.generate(PROMPTS, 2, max_tokens=24, temperature=0.0, stop=stop)
    got = vllm_engine.generate(PROMPTS, 2, max_tokens=24, temperature=0.0, stop=stop)
    for hf_row, vllm_row in zip(expected, got, strict=True):
        assert len(vllm_row) == 2
        for ours, theirs in zip(hf_row, vllm_row, strict=True):
            assert (theirs.text, theirs.completion_tokens) == (ours.text, ours.completion_tokens)
            assert (theirs.finish_reason, theirs.stop_reason) == (ours.finish_reason, ours.stop_reason)
            assert theirs.prompt_tokens == ours.prompt_tokens
            assert theirs.logprob == pytest.approx(ours.logprob, abs=1e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_log_probs_are_of_the_tempered_distribution_as_in_hf(hf_engine, vllm_engine, temperature):
    """Sampled texts differ between engines (different random streams), but a log-prob must mean the
    same: HFProposer scores each token under the distribution it was drawn from (after temperature)."""
    prompt = "3+3"
    tokenizer = hf_engine.tokenizer
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = hf_engine.model(input_ids=ids).logits[0, -1].float()
    expected = torch.log_softmax(logits / temperature, dim=-1)
    [samples] = vllm_engine.generate([prompt], 16, max_tokens=1, temperature=temperature, seed=2)
    checked = 0
    for sample in samples:
        if sample.text:  # special tokens decode to nothing; the others are one piece each
            [token] = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
            assert sample.logprob == pytest.approx(float(expected[token]), abs=1e-4)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize(
    ("strategy", "values"),
    [
        ("beam", {"budget": 4, "beam_width": 2, "max_step_tokens": 8, "max_rounds": 4}),
        ("best_of_n", {"budget": 4, "max_answer_tokens": 24}),
    ],
)
def test_a_greedy_strategy_reaches_the_same_answer_through_both_engines(answering_lm, tiny_prm, strategy, values):
    settings = registry.get(strategy).configure({**values, "temperature": 0.0})
    graph = registry.compile_graph(strategy, settings)
    verifier = load_verifier(f"hf:{tiny_prm}?device=cpu")
    results = {}
    for uri in [f"hf:{answering_lm}?device=cpu", f"vllm:{answering_lm}?{VLLM_OPTIONS}"]:
        context = SolveContext(proposer=load_proposer(uri), verifier=verifier, seed=3)
        results[uri.partition(":")[0]] = run_graph(graph, "What is 1+2?", context)
    through_hf, through_vllm = results["hf"], results["vllm"]
    assert through_hf.answer == "3"
    assert (through_vllm.answer, through_vllm.chosen) == (through_hf.answer, through_hf.chosen)
    assert through_vllm.votes == through_hf.votes
    assert through_vllm.spend == through_hf.spend
    assert through_vllm.steps == through_hf.steps
