"""Reviser trajectories: the nearest wrong answer goes last, k is capped by what exists."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.rollouts import reaches
from ttc_nodes.testbed.trajectories import generated_examples, revision_examples, trajectory


def levenshtein(first: str, second: str) -> int:
    """The textbook dynamic programme: insertions, deletions and substitutions cost 1."""
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i]
        for j, b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def test_levenshtein_oracle():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


answers = st.text(alphabet="12+= \n", max_size=24)


@given(correct=answers, wrong=st.lists(answers, min_size=1, max_size=6, unique=True), k=st.integers(1, 4))
def test_the_last_attempt_is_the_first_wrong_answer_at_the_least_edit_distance(correct, wrong, k):
    distances = [levenshtein(correct, answer) for answer in wrong]
    context = trajectory(correct, wrong, k, random.Random(0))
    assert len(context) == min(k, len(wrong))
    assert context[-1] == wrong[distances.index(min(distances))]


def test_nearest_wrong_answer_is_last_and_others_are_random():
    correct = "12 + 30 = 42\n\n42 * 2 = \\boxed{84}"
    near = "12 + 30 = 42\n\n42 * 2 = \\boxed{74}"
    far = ["12 + 30 = 52\n\n52 * 2 = \\boxed{104}", "12 + 30 = 32\n\n32 * 2 = \\boxed{64}", "99"]
    wrong = [far[0], near, far[1], far[2]]
    for seed in range(20):
        context = trajectory(correct, wrong, 3, random.Random(seed))
        assert len(context) == 3
        assert context[-1] == near
        assert near not in context[:-1]
        assert len(set(context)) == 3


def test_k_is_capped_by_the_wrong_answers_available():
    rng = random.Random(0)
    assert trajectory("a", ["b", "c"], 4, rng)[-1] in {"b", "c"}
    assert len(trajectory("a", ["b", "c"], 4, rng)) == 2
    assert trajectory("a", [], 4, rng) == []
    assert trajectory("a", ["b"], 0, rng) == []


def test_examples_target_correct_answers_with_up_to_four_distinct_wrong_ones():
    answers = ["\\boxed{5}", "\\boxed{5}", "\\boxed{6}", "\\boxed{6}", "\\boxed{7}"]

    def is_correct(text: str, reference: str) -> bool:
        return text == f"\\boxed{{{reference}}}"

    examples = revision_examples([("q", "5", answers)], is_correct=is_correct, seed=0)
    assert len(examples) == 2
    for question, attempts, target in examples:
        assert question == "q" and target == "\\boxed{5}"
        assert len(attempts) <= 2 and len(set(attempts)) == len(attempts)
        assert all(not is_correct(a, "5") for a in attempts)


def test_generated_trajectories_show_the_generators_wrong_answers_before_the_reference():
    problems = task.problems(60, seed=3, min_difficulty=4)
    examples = generated_examples(problems, slip_rate=0.2, seed=0, min_attempts=2, max_attempts=4)

    assert len(examples) > 40  # most problems at these levels have carries to slip on
    by_question = {problem.question: problem for problem in problems}
    for question, attempts, target in examples:
        problem = by_question[question]
        assert target == problem.solution
        assert 2 <= len(attempts) <= 4
        for attempt in attempts:
            steps = DEFAULT_FORMAT.split_steps(attempt)
            assert not reaches(attempt, problem.answer)
            # a slipped solution of this problem: the same operations, each step carrying the last result on
            assert [task.parse_step(step)[1:3] for step in steps] == list(problem.operations)
            assert all(task.parse_step(b)[0] == task.parse_step(a)[3] for a, b in itertools.pairwise(steps))
        distances = [levenshtein(target, attempt) for attempt in attempts]
        assert distances[-1] == min(distances)  # the nearest of those shown goes last
    assert {len(attempts) for _, attempts, _ in examples} == {2, 3, 4}
    assert any(len(set(attempts)) < len(attempts) for _, attempts, _ in examples)  # repeats, as in a chain
    assert examples == generated_examples(problems, slip_rate=0.2, seed=0, min_attempts=2, max_attempts=4)


def test_a_problem_without_carries_gives_no_generated_trajectory():
    no_carry = task.make_problem("k", 2, (("+", 3),), 1)
    assert generated_examples([no_carry], slip_rate=0.5, seed=0) == []
    with pytest.raises(ValueError, match="min_attempts"):
        generated_examples([no_carry], slip_rate=0.5, seed=0, min_attempts=0)
