"""Reviser trajectories: the nearest wrong answer goes last, k is capped by what exists."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from ttc_nodes.testbed.trajectories import revision_examples, trajectory


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
