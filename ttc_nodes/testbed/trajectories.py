"""Reviser training trajectories, as the paper builds them.

For each correct sampled answer, draw k ∈ {0..4} wrong answers of the same question (capped by how
many distinct wrong answers exist) into the context: the random ones first, and last the wrong
answer nearest to the correct one by character edit distance. The correct answer is the target.

`generated_examples` builds the same kind of trajectory from the task generator instead of the
proposer's samples: the reference solution is the target and the wrong attempts are the generator's
own slipped solutions (the slips the proposer learned to make). It gives the reviser trajectories on
hard questions, where the proposer's 16 samples hold few or no correct answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from rapidfuzz.distance import Levenshtein

from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.rollouts import reaches

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


def generated_examples(
    problems: Sequence[task.ArithProblem],
    *,
    slip_rate: float,
    seed: int,
    min_attempts: int = 1,
    max_attempts: int = MAX_ATTEMPTS,
    tries: int = 40,
    wrong_per_question: int = 8,
) -> list[tuple[str, list[str], str]]:
    """(question, wrong attempts, reference solution) per problem, the attempts drawn by `trajectory`
    from the first `wrong_per_question` slipped solutions (of `tries` draws at `slip_rate`) that end
    at a wrong answer, k uniform in min_attempts..max_attempts. A problem none of whose draws ends
    wrong gives no example.

    The wrong solutions are not deduplicated: a revision chain repeats itself (the testbed reviser
    copies about 3 in 4 right answers verbatim), and a reviser trained only on distinct attempts
    fell at the fourth revision, whose context is most often repeats (pass@1 0.538 at the first
    answer, 0.600 at the third revision, 0.536 at the fourth; with repeats 0.559 … 0.579, 0.566)."""
    if not 1 <= min_attempts <= max_attempts:
        raise ValueError(f"attempts must satisfy 1 <= min_attempts <= max_attempts, got {min_attempts}..{max_attempts}")
    rng = random.Random(f"generated-trajectories-{seed}")
    examples = []
    for problem in problems:
        wrong: list[str] = []
        for _ in range(tries):
            steps = task.worked_solution(problem.start, problem.operations, slip_rate=slip_rate, rng=rng)
            answer = DEFAULT_FORMAT.join_steps(steps)
            if not reaches(answer, problem.answer):
                wrong.append(answer)
            if len(wrong) >= wrong_per_question:
                break
        if wrong:
            attempts = trajectory(problem.solution, wrong, rng.randint(min_attempts, max_attempts), rng)
            examples.append((problem.question, attempts, problem.solution))
    return examples
