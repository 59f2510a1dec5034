"""Reviser training trajectories, as the paper builds them.

For each correct sampled answer, draw k ∈ {0..4} wrong answers of the same question (capped by how
many distinct wrong answers exist) into the context: the random ones first, and last the wrong
answer nearest to the correct one by character edit distance. The correct answer is the target.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from rapidfuzz.distance import Levenshtein

MAX_ATTEMPTS = 4


def trajectory(correct: str, wrong: Sequence[str], k: int, rng: random.Random) -> list[str]:
    """The wrong attempts shown before `correct`: min(k, len(wrong)) of them, nearest one last."""
    k = min(k, len(wrong))
    if k == 0:
        return []
    nearest = min(range(len(wrong)), key=lambda i: (Levenshtein.distance(correct, wrong[i]), i))
    others = [answer for i, answer in enumerate(wrong) if i != nearest]
    return [*rng.sample(others, k - 1), wrong[nearest]]


def revision_examples(
    items: Sequence[tuple[str, str, Sequence[str]]],
    *,
    is_correct: Callable[[str, str], bool],
    seed: int,
    max_attempts: int = MAX_ATTEMPTS,
) -> list[tuple[str, list[str], str]]:
    """(question, wrong attempts, correct target) for every correct answer of every
    (question, reference, sampled answers) item; k is drawn uniformly from 0..max_attempts."""
    rng = random.Random(f"trajectories-{seed}")
    examples = []
    for question, reference, answers in items:
        correct = [answer for answer in answers if is_correct(answer, reference)]
        wrong = list(dict.fromkeys(answer for answer in answers if not is_correct(answer, reference)))
        for target in correct:
            attempts = trajectory(target, wrong, rng.randint(0, max_attempts), rng)
            examples.append((question, attempts, target))
    return examples
