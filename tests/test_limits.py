"""Inputs past what a model can read are refused at once, in one line: a question over
MAX_QUESTION_CHARS before it is tokenised, a prompt that fills the engine's context before anything
is generated (proposer side) or scored (verifier side), on the shipped testbed models."""

from __future__ import annotations

from typing import Any

import pytest

from graphs import registry
from graphs.runner import SolveError, run_graph
from ttc_nodes.engines import PromptTooLong, load_proposer, load_verifier
from ttc_nodes.prompts import DEFAULT_FORMAT, MAX_QUESTION_CHARS, QuestionTooLong, check_question_size
from ttc_nodes.state import SolveContext
from ttc_nodes.verify import score_candidates

TESTBED_CONTEXT = 1280
MEGABYTE_QUESTION = "1+" * 500_000 + "1"


@pytest.fixture(scope="module")
def proposer() -> Any:
    return load_proposer("testbed:proposer?device=cpu")


@pytest.fixture(scope="module")
def verifier() -> Any:
    # Not `testbed:prm?device=cpu`: test_testbed_training loads that URI against its own checkpoints,
    # and engines are cached per URI for the whole process.
    return load_verifier("testbed:prm?device=cpu&max_batch=64")


def question_of(tokens: int, proposer: Any) -> str:
    """An arithmetic question of exactly `tokens` tokens for the testbed tokenizer."""
    ids = proposer.tokenizer("Compute " + "1+" * tokens, add_special_tokens=False)["input_ids"]
    question = proposer.tokenizer.decode(ids[:tokens])
    assert len(proposer.tokenizer(question, add_special_tokens=False)["input_ids"]) == tokens
    return question


def solve(strategy: str, question: str, proposer: Any, verifier: Any) -> None:
    settings = registry.get(strategy).configure({"budget": 2})
    context = SolveContext(proposer=proposer, verifier=verifier)
    run_graph(registry.compile_graph(strategy, settings), question, context, None)


# --- the engine's context ------------------------------------------------------------------------------


def test_the_testbed_engines_know_their_context(proposer: Any, verifier: Any) -> None:
    assert proposer.context == TESTBED_CONTEXT
    assert verifier.max_length == TESTBED_CONTEXT


def test_a_2013_token_question_is_refused_by_the_testbed_proposer_naming_tokens_engine_and_context(
    proposer: Any,
) -> None:
    question = question_of(2013, proposer)
    prompt = DEFAULT_FORMAT.solution(question)
    prompt_tokens = len(proposer.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    with pytest.raises(PromptTooLong) as refused:
        proposer.generate([prompt], 4, max_tokens=512, temperature=1.0, seed=0)

    message = str(refused.value)
    assert message == (
        f"testbed:proposer?device=cpu: a prompt of {prompt_tokens} tokens does not fit "
        f"the engine's context of {TESTBED_CONTEXT} tokens"
    )
    assert "\n" not in message


@pytest.mark.parametrize("strategy", ["majority", "beam", "revisions"])
def test_a_solve_of_a_2013_token_question_fails_in_its_first_node_with_that_refusal(
    strategy: str, proposer: Any, verifier: Any
) -> None:
    with pytest.raises(
        SolveError, match=r"PromptTooLong: .*tokens does not fit the engine's context of 1280"
    ) as failed:
        solve(strategy, question_of(2013, proposer), proposer, verifier)

    assert isinstance(failed.value.__cause__, PromptTooLong)


def test_the_testbed_prm_refuses_a_question_that_alone_fills_its_context(proposer: Any, verifier: Any) -> None:
    question = question_of(2013, proposer)

    with pytest.raises(
        PromptTooLong, match=r"testbed:prm\?device=cpu&max_batch=64: a question of 2013 tokens does not fit"
    ):
        verifier.score(question, [["1+1 = 2"]])


def test_a_prompt_that_fits_is_answered_within_the_context(proposer: Any) -> None:
    question = question_of(1200, proposer)

    [[completion]] = proposer.generate([DEFAULT_FORMAT.solution(question)], 1, max_tokens=512, temperature=1.0)

    assert completion.prompt_tokens + completion.completion_tokens <= TESTBED_CONTEXT


# --- the question's size -------------------------------------------------------------------------------


def test_a_question_of_max_question_chars_is_taken_and_one_more_is_refused() -> None:
    check_question_size("x" * MAX_QUESTION_CHARS)

    with pytest.raises(QuestionTooLong, match=r"32,001 characters long; the most a prompt takes is 32,000"):
        check_question_size("x" * (MAX_QUESTION_CHARS + 1))


def test_a_megabyte_question_is_refused_before_it_is_tokenised(proposer: Any, verifier: Any) -> None:
    for write in (
        lambda: DEFAULT_FORMAT.solution(MEGABYTE_QUESTION),
        lambda: DEFAULT_FORMAT.revision(MEGABYTE_QUESTION, ["1"]),
        lambda: verifier.score(MEGABYTE_QUESTION, [["1"]]),
        lambda: score_candidates(MEGABYTE_QUESTION, [], verifier, "last"),
    ):
        with pytest.raises(QuestionTooLong, match=r"the question is 1,000,001 characters long") as refused:
            write()
        assert isinstance(refused.value, ValueError) and "\n" not in str(refused.value)


@pytest.mark.parametrize("strategy", ["majority", "beam", "revisions"])
def test_a_solve_of_a_megabyte_question_fails_with_that_refusal(strategy: str, proposer: Any, verifier: Any) -> None:
    with pytest.raises(SolveError, match=r"QuestionTooLong: the question is 1,000,001 characters") as failed:
        solve(strategy, MEGABYTE_QUESTION, proposer, verifier)

    assert isinstance(failed.value.__cause__, QuestionTooLong)
