"""The testbed's cached sampler computes what the model computes: the same greedy answers as
`HFProposer`, and for sampled answers the log-probability a plain forward pass gives them."""

from __future__ import annotations

import pytest
import torch

from ttc_nodes.engines.hf import HFProposer
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.checkpoints import SHIPPED
from ttc_nodes.testbed.sampler import CachedSampler
from ttc_nodes.testbed.train import load_sampler

pytestmark = pytest.mark.skipif(
    not (SHIPPED / "proposer" / "config.json").is_file(), reason="shipped proposer not present"
)


@pytest.fixture(scope="module")
def sampler() -> CachedSampler:
    # A small batch, so that one call spans several batches and rows of different lengths share one.
    shipped = load_sampler(SHIPPED / "proposer")
    return CachedSampler(shipped.model, shipped.tokenizer, max_batch=8)


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    # Levels 1..8 in one batch: prompts of different lengths (left padding) and answers that end
    # at very different steps (rows leave the batch while others go on).
    return [DEFAULT_FORMAT.solution(p.question) for level in range(1, 9) for p in task.problems(2, 3, level)]


def test_greedy_answers_equal_hf_generate(sampler, prompts):
    reference = HFProposer(str(SHIPPED / "proposer"), device="cpu", max_batch=16)
    expected = reference.generate(prompts, 1, max_tokens=160, temperature=0.0)
    got = sampler.generate(prompts, 1, max_tokens=160, temperature=0.0)
    assert [row[0].text for row in got] == [row[0].text for row in expected]
    assert [row[0].finish_reason for row in got] == [row[0].finish_reason for row in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine[0].logprob == pytest.approx(theirs[0].logprob, abs=1e-3)


def test_sampled_logprobs_equal_a_full_forward_pass(sampler, prompts):
    rows = sampler.generate(prompts[::3], 3, max_tokens=120, temperature=1.0, seed=5)
    tokenizer, model = sampler.tokenizer, sampler.model
    checked = 0
    for prompt, completions in zip(prompts[::3], rows, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for completion in completions:
            answer_ids = tokenizer(completion.text, add_special_tokens=False)["input_ids"]
            if completion.finish_reason == "stop":
                answer_ids.append(tokenizer.eos_token_id)
            assert len(answer_ids) == completion.completion_tokens
            ids = torch.tensor([prompt_ids + answer_ids])
            with torch.inference_mode():
                log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            full = log_probs.gather(1, targets[:, None])[len(prompt_ids) - 1 :].sum()
            assert completion.logprob == pytest.approx(float(full), abs=1e-2)
            checked += 1
    assert checked == len(prompts[::3]) * 3


def test_seeded_sampling_repeats_and_seeds_differ(sampler, prompts):
    first = sampler.generate(prompts[-4:], 4, max_tokens=64, temperature=1.0, seed=11)
    again = sampler.generate(prompts[-4:], 4, max_tokens=64, temperature=1.0, seed=11)
    other = sampler.generate(prompts[-4:], 4, max_tokens=64, temperature=1.0, seed=12)
    texts = [[c.text for c in row] for row in first]
    assert texts == [[c.text for c in row] for row in again]
    assert texts != [[c.text for c in row] for row in other]


def test_max_tokens_cuts_answers_and_says_so(sampler, prompts):
    full = sampler.generate(prompts[-2:], 1, max_tokens=160, temperature=0.0)
    cut = sampler.generate(prompts[-2:], 1, max_tokens=5, temperature=0.0)
    for (whole,), (short,) in zip(full, cut, strict=True):
        assert whole.completion_tokens > 5  # level-8 answers are long
        assert (short.completion_tokens, short.finish_reason) == (5, "length")
        assert whole.text.startswith(short.text) and len(short.text) == 5


def test_bad_requests_are_refused(sampler):
    with pytest.raises(ValueError, match="max_tokens"):
        sampler.generate(["Question: Compute 1 + 1.\nSolution:\n"], 1, max_tokens=0, temperature=1.0)
    with pytest.raises(ValueError, match="positions"):
        sampler.generate(["x" * 2000], 1, max_tokens=4, temperature=1.0)
    with pytest.raises(ValueError, match="max_batch"):
        CachedSampler(sampler.model, sampler.tokenizer, max_batch=0)


def test_prompts_read_a_few_rows_at_a_time_give_the_same_answers(sampler, prompts, monkeypatch):
    from ttc_nodes.engines import cached_sampler as module

    whole = sampler.generate(prompts, 1, max_tokens=40, temperature=0.0)
    monkeypatch.setattr(module, "PREFILL_SCORES", 1)  # one row per prefill pass
    chunked = sampler.generate(prompts, 1, max_tokens=40, temperature=0.0)
    assert [row[0].text for row in chunked] == [row[0].text for row in whole]
