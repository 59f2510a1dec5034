"""The transformers engines on tiny random-weight models: sampling, stop strings, padding, chunking,
PRM scoring and truncation, and the URIs that load them.

Outputs of random models are never asserted literally; the tests check properties that any correct
engine has (determinism under a seed, invariance to batching, consistency of the reported counts).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from ttc_nodes.engines import (
    Completion,
    EngineError,
    PromptTooLong,
    TransientEngineError,
    load_proposer,
    load_verifier,
)
from ttc_nodes.engines.hf import HFProposer, HFValueHeadPRM
from ttc_nodes.engines.transformers_io import prm_inputs
from ttc_nodes.engines.uris import parse_uri
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat

# Short prompts whose greedy continuations differ from one another, so a row put back in the wrong
# place shows; LONG is longer than all of them (so they are left-padded next to it) and contains
# every stop string used below.
PROMPTS = ["\\boxed{3", "3+3+3+3", "+"]
LONG = "Question: 1+2+3+1+2+3+1+2+3 what is it?\nSolution:\n1+1\n\n2+2}\n\n"
STOPS = ["\n\n", "+", "}"]
QUESTION = "What is 1+2?"


@pytest.fixture(scope="module")
def proposer(tiny_lm: Path) -> HFProposer:
    engine = load_proposer(f"hf:{tiny_lm}?device=cpu")
    assert isinstance(engine, HFProposer)
    return engine


@pytest.fixture(scope="module")
def prm(tiny_prm: Path) -> HFValueHeadPRM:
    engine = load_verifier(f"hf:{tiny_prm}?device=cpu")
    assert isinstance(engine, HFValueHeadPRM)
    return engine


def texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def prompt_length(engine: HFProposer, prompt: str) -> int:
    return len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])


# --- HFProposer ----------------------------------------------------------------------------------------


def test_generate_returns_n_completions_for_every_prompt(proposer: HFProposer) -> None:
    rows = proposer.generate([*PROMPTS, LONG], 3, max_tokens=8, temperature=1.0, seed=0)

    assert len(rows) == len(PROMPTS) + 1
    for row in rows:
        assert len(row) == 3
        assert all(isinstance(c, Completion) for c in row)


def test_same_seed_reproduces_samples_and_another_seed_changes_them(proposer: HFProposer) -> None:
    def sample(seed: int) -> list[list[str]]:
        return texts(proposer.generate(PROMPTS, 4, max_tokens=8, temperature=1.0, seed=seed))

    first = sample(1)

    assert sample(1) == first
    assert sample(2) != first  # 12 samples of 8 tokens over 11 symbols: a collision is negligible


def test_temperature_zero_gives_identical_deterministic_samples(proposer: HFProposer) -> None:
    first = texts(proposer.generate(PROMPTS, 3, max_tokens=8, temperature=0.0, seed=1))
    again = texts(proposer.generate(PROMPTS, 3, max_tokens=8, temperature=0.0, seed=2))

    assert all(len(set(row)) == 1 for row in first)
    assert again == first


@pytest.mark.parametrize("stop", STOPS, ids=repr)
def test_sampled_completions_respect_stop_strings_and_report_consistent_counts(proposer: HFProposer, stop: str) -> None:
    prompts = [*PROMPTS, LONG]
    rows = proposer.generate(prompts, 4, max_tokens=10, temperature=1.0, stop=[stop], seed=0)

    for prompt, row in zip(prompts, rows, strict=True):
        for c in row:
            assert stop not in c.text
            assert 1 <= c.completion_tokens <= 10
            assert c.prompt_tokens == prompt_length(proposer, prompt)
            assert math.isfinite(c.logprob) and c.logprob <= 0
            assert c.stop_reason in (None, stop)
            if c.stop_reason is not None:
                assert c.finish_reason == "stop"
            if c.finish_reason == "length":
                assert c.completion_tokens == 10 and c.stop_reason is None
    # The seed is fixed, so this only guards against the test silently never exercising a stop.
    assert any(c.stop_reason == stop for row in rows for c in row)


@pytest.mark.parametrize("stop", STOPS, ids=repr)
def test_greedy_stop_cuts_the_unstopped_text_at_its_first_stop_string(proposer: HFProposer, stop: str) -> None:
    free = proposer.generate(PROMPTS, 1, max_tokens=10, temperature=0.0)
    cut = proposer.generate(PROMPTS, 1, max_tokens=10, temperature=0.0, stop=[stop])

    for [whole], [stopped] in zip(free, cut, strict=True):
        # A stop string inside the prompt (e.g. "+" in "3+3+3+3") must not end the completion.
        assert stopped.text == whole.text.split(stop)[0]
        if stop in whole.text:
            assert (stopped.finish_reason, stopped.stop_reason) == ("stop", stop)
            assert stopped.completion_tokens < whole.completion_tokens
            # Fewer tokens of the same greedy sequence: a prefix's log-probability is not smaller.
            assert stopped.logprob >= whole.logprob - 1e-4
        else:
            assert stopped == whole


def test_left_padding_does_not_change_greedy_output(proposer: HFProposer) -> None:
    # Next to LONG every short prompt is left-padded, each by a different amount.
    *padded, _ = proposer.generate([*PROMPTS, LONG], 1, max_tokens=10, temperature=0.0)

    for prompt, [in_batch] in zip(PROMPTS, padded, strict=True):
        [[alone]] = proposer.generate([prompt], 1, max_tokens=10, temperature=0.0)
        assert in_batch.text == alone.text
        assert in_batch.completion_tokens == alone.completion_tokens
        assert in_batch.prompt_tokens == alone.prompt_tokens == prompt_length(proposer, prompt)
        assert in_batch.finish_reason == alone.finish_reason
        assert in_batch.logprob == pytest.approx(alone.logprob, abs=1e-4)


def test_rows_beyond_max_batch_come_back_complete_and_in_order(tiny_lm: Path, proposer: HFProposer) -> None:
    chunked = load_proposer(f"hf:{tiny_lm}?device=cpu&max_batch=2")
    assert isinstance(chunked, HFProposer) and chunked.max_batch == 2

    # 3 prompts x 2 samples = 6 rows in 3 chunks; greedy output does not depend on the chunking.
    expected = texts(proposer.generate(PROMPTS, 2, max_tokens=8, temperature=0.0))
    got = texts(chunked.generate(PROMPTS, 2, max_tokens=8, temperature=0.0))

    assert len({row[0] for row in expected}) == len(PROMPTS)  # else order would go unchecked
    assert got == expected
    sampled = chunked.generate([*PROMPTS, LONG], 3, max_tokens=4, temperature=1.0, seed=0)
    assert [len(row) for row in sampled] == [3, 3, 3, 3]
    assert [row[0].prompt_tokens for row in sampled] == [prompt_length(chunked, p) for p in [*PROMPTS, LONG]]


def test_generate_rejects_zero_samples_or_tokens(proposer: HFProposer) -> None:
    with pytest.raises(ValueError, match="n and max_tokens"):
        proposer.generate(PROMPTS, 0, max_tokens=4, temperature=1.0)
    with pytest.raises(ValueError, match="n and max_tokens"):
        proposer.generate(PROMPTS, 1, max_tokens=0, temperature=1.0)


# --- HFValueHeadPRM ------------------------------------------------------------------------------------

SHORT_SOLUTION = ["1+2", "3"]
LONG_SOLUTION = ["1+1+1", "2+1", "3+0+0+0+0+0+0", "\\boxed{3}"]


def test_prm_gives_one_score_in_the_unit_interval_per_step(prm: HFValueHeadPRM) -> None:
    solutions = [SHORT_SOLUTION, LONG_SOLUTION, ["\\boxed{3}"]]
    scored = prm.score(QUESTION, solutions)

    assert [len(s.step_scores) for s in scored] == [len(steps) for steps in solutions]
    assert all(0.0 <= x <= 1.0 for s in scored for x in s.step_scores)
    assert [s.tokens for s in scored] == [len(prm_inputs(prm.tokenizer, QUESTION, steps)[0]) for steps in solutions]
    assert not any(s.truncated for s in scored)


def test_prm_scores_do_not_depend_on_padding_in_a_batch(prm: HFValueHeadPRM) -> None:
    [alone] = prm.score(QUESTION, [SHORT_SOLUTION])
    first, _ = prm.score(QUESTION, [SHORT_SOLUTION, LONG_SOLUTION])
    _, last = prm.score(QUESTION, [LONG_SOLUTION, SHORT_SOLUTION])

    assert first.step_scores == pytest.approx(alone.step_scores, abs=1e-5)
    assert last.step_scores == pytest.approx(alone.step_scores, abs=1e-5)
    assert first.tokens == last.tokens == alone.tokens


def test_prm_scores_of_a_prefix_are_the_first_scores_of_the_whole(prm: HFValueHeadPRM) -> None:
    [whole] = prm.score(QUESTION, [LONG_SOLUTION])
    prefixes = prm.score(QUESTION, [LONG_SOLUTION[:k] for k in range(1, len(LONG_SOLUTION) + 1)])

    for k, prefix in enumerate(prefixes, start=1):
        assert prefix.step_scores == pytest.approx(whole.step_scores[:k], abs=1e-5)


def test_prm_chunks_by_max_batch_in_order(tiny_prm: Path, prm: HFValueHeadPRM) -> None:
    chunked = load_verifier(f"hf:{tiny_prm}?device=cpu&max_batch=2")
    solutions = [LONG_SOLUTION[:k] for k in range(1, len(LONG_SOLUTION) + 1)] + [SHORT_SOLUTION]

    got = chunked.score(QUESTION, solutions)
    expected = prm.score(QUESTION, solutions)

    assert [len(s.step_scores) for s in got] == [len(steps) for steps in solutions]
    for g, e in zip(got, expected, strict=True):
        assert g.step_scores == pytest.approx(e.step_scores, abs=1e-5)


@pytest.fixture(scope="module")
def short_context_prm(tiny_prm: Path, tmp_path_factory: pytest.TempPathFactory) -> HFValueHeadPRM:
    """The tiny PRM told it reads at most 32 positions (the question template alone is 22 tokens)."""
    directory = tmp_path_factory.mktemp("short-prm") / "model"
    shutil.copytree(tiny_prm, directory)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config["max_position_embeddings"] = 32
    config_file.write_text(json.dumps(config))
    return HFValueHeadPRM(str(directory), device="cpu")


def test_prm_truncates_long_inputs_and_still_scores_every_step(
    short_context_prm: HFValueHeadPRM, caplog: pytest.LogCaptureFixture
) -> None:
    full_length = len(prm_inputs(short_context_prm.tokenizer, QUESTION, LONG_SOLUTION)[0])
    assert full_length > 32

    with caplog.at_level(logging.WARNING, logger="ttc_nodes.engines.hf"):
        [long], [short] = (
            short_context_prm.score(QUESTION, [LONG_SOLUTION]),
            short_context_prm.score("1", [["2"]]),
        )

    assert long.truncated and long.tokens == 32
    assert len(long.step_scores) == len(LONG_SOLUTION)
    assert all(0.0 <= x <= 1.0 for x in long.step_scores)
    assert not short.truncated and len(short.step_scores) == 1
    # The warning reports how long the input was, not its already-truncated length.
    assert f"PRM input of {full_length} tokens truncated to 32" in caplog.text


def test_prm_refuses_a_question_that_alone_fills_its_context(short_context_prm: HFValueHeadPRM) -> None:
    question = "1+2+" * 10 + "3?"  # 42 tokens, past the 32 positions

    with pytest.raises(PromptTooLong, match=r": a question of 42 tokens does not fit the engine's context of 32"):
        short_context_prm.score(question, [["2"]])


@pytest.fixture(scope="module")
def short_context_proposer(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> HFProposer:
    """The tiny LM told it has 24 positions."""
    directory = tmp_path_factory.mktemp("short-lm") / "model"
    shutil.copytree(tiny_lm, directory)
    config = json.loads((directory / "config.json").read_text())
    config["max_position_embeddings"] = 24
    (directory / "config.json").write_text(json.dumps(config))
    return HFProposer(str(directory), device="cpu")


def test_a_prompt_that_fills_the_context_is_refused_before_generating(short_context_proposer: HFProposer) -> None:
    assert short_context_proposer.context == 24
    prompts = ["1+2", "1+2+" * 6]  # 3 and 24 tokens

    with pytest.raises(PromptTooLong) as refused:
        short_context_proposer.generate(prompts, 2, max_tokens=4, temperature=1.0)

    assert str(refused.value) == (
        f"{short_context_proposer.uri}: a prompt of 24 tokens does not fit the engine's context of 24 tokens"
    )
    assert (refused.value.tokens, refused.value.context) == (24, 24)
    assert not isinstance(refused.value, TransientEngineError)  # the same prompt is as long next time


def test_a_completion_stops_where_the_context_ends(short_context_proposer: HFProposer) -> None:
    [[near_the_end], [short]] = short_context_proposer.generate(
        ["1+2+" * 5, "1"], 1, max_tokens=50, temperature=1.0, seed=0
    )

    # The batch is padded to the 20-token prompt: 4 positions are left for every row.
    assert near_the_end.prompt_tokens + near_the_end.completion_tokens <= 24
    assert short.completion_tokens <= 4
    for completion in (near_the_end, short):
        assert completion.finish_reason == "length" or completion.ended_sequence or completion.stop_reason


def test_prm_inputs_positions_point_at_the_last_token_of_each_separator(prm: HFValueHeadPRM) -> None:
    tokenizer = prm.tokenizer
    for prompt_format in (DEFAULT_FORMAT, PromptFormat(step_separator="}\n\n")):
        separator = tokenizer(prompt_format.step_separator, add_special_tokens=False)["input_ids"]
        ids, positions = prm_inputs(tokenizer, QUESTION, LONG_SOLUTION, prompt_format)

        assert len(positions) == len(LONG_SOLUTION)
        assert positions == sorted(set(positions))
        assert positions[-1] == len(ids) - 1
        for p in positions:
            assert ids[p - len(separator) + 1 : p + 1] == separator
        # Up to each position the ids spell the question and the steps so far, each followed by the
        # separator.
        for k, p in enumerate(positions, start=1):
            spelled = tokenizer.decode(ids[: p + 1], skip_special_tokens=True)
            steps_so_far = "".join(step + prompt_format.step_separator for step in LONG_SOLUTION[:k])
            assert spelled.endswith(steps_so_far)


# --- URIs ----------------------------------------------------------------------------------------------


def test_parse_uri_splits_scheme_location_and_options() -> None:
    assert parse_uri("hf:/models/x?max_batch=2&device=cpu") == (
        "hf",
        "/models/x",
        {"max_batch": "2", "device": "cpu"},
    )


@pytest.mark.parametrize("uri", ["hf", "hf:", ":/models/x"])
def test_parse_uri_rejects_uris_without_scheme_or_location(uri: str) -> None:
    with pytest.raises(ValueError, match="scheme:location"):
        parse_uri(uri)


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*known schemes: gguf, hf, openai, testbed"):
        load_proposer("nope:x")
    with pytest.raises(ValueError, match=r"'nope'.*known schemes: hf, judge, testbed"):
        load_verifier("nope:x")


def test_missing_model_path_raises_engine_error_naming_it() -> None:
    with pytest.raises(EngineError, match="/does/not/exist"):
        load_proposer("hf:/does/not/exist")
    with pytest.raises(EngineError, match="/does/not/exist"):
        load_verifier("hf:/does/not/exist")


def test_directory_without_a_model_raises_engine_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=str(tmp_path)):
        load_proposer(f"hf:{tmp_path}")
    with pytest.raises(EngineError, match=str(tmp_path)):
        load_verifier(f"hf:{tmp_path}")


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("colour=red", "colour"),
        ("max_batch=two", "max_batch"),
        ("max_batch=0", "max_batch"),
        ("dtype=float17", "float17"),
    ],
)
def test_bad_engine_options_are_rejected_naming_the_option(tiny_lm: Path, query: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        load_proposer(f"hf:{tiny_lm}?{query}")


def test_the_same_uri_loads_one_engine(tiny_lm: Path, proposer: HFProposer) -> None:
    uri = f"hf:{tiny_lm}?device=cpu"

    assert load_proposer(uri) is load_proposer(uri) is proposer
    assert proposer.uri == uri
    assert load_proposer(f"hf:{tiny_lm}?device=cpu&max_batch=3") is not proposer


def test_tokens_until_a_stop_string_is_the_fewest_tokens_that_decode_that_far(proposer: HFProposer) -> None:
    """The binary search in `_tokens_until` against the plain scan over every token count."""
    import random

    from ttc_nodes.engines.hf import _tokens_until

    tokenizer = proposer.tokenizer
    rng = random.Random(0)
    vocabulary = [tokenizer.encode(piece, add_special_tokens=False) for piece in ["12", " + ", "\n\n", "}", "ab", "é"]]
    checked = 0
    for _ in range(200):
        ids = [token for _ in range(rng.randint(1, 12)) for token in rng.choice(vocabulary)]
        text = tokenizer.decode(ids, skip_special_tokens=True)
        for stop in STOPS:
            if stop not in text:
                continue
            kept = text[: text.find(stop)]
            target = len(kept) + len(stop)
            lengths = [len(tokenizer.decode(ids[:n], skip_special_tokens=True)) for n in range(1, len(ids) + 1)]
            scanned = next((n for n, length in enumerate(lengths, 1) if length >= target), len(ids))
            assert _tokens_until(tokenizer, ids, kept, stop) == scanned
            checked += 1
    assert checked > 100
