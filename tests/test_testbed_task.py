"""The arithmetic task: exact answers, a difficulty knob that really grows, determinism."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from ttc_nodes.answers import extract_answer
from ttc_nodes.testbed import task


def python_value(question: str) -> int:
    expression = re.fullmatch(r"Compute (.+)\.", question)
    assert expression is not None
    return int(eval(expression.group(1), {"__builtins__": {}}))


def test_answers_are_exact_by_python_arithmetic():
    for problem in task.problems(400, seed=3):
        assert python_value(problem.question) == int(problem.answer)


def test_reference_steps_are_all_correct_and_box_the_answer():
    for problem in task.problems(200, seed=4):
        assert all(task.arithmetic_correct(step) for step in problem.steps)
        assert all(task.prefix_correct(problem, list(problem.steps)))
        assert extract_answer(problem.steps[-1]) == problem.answer
        assert all("boxed" not in step for step in problem.steps[:-1])
        assert len(problem.steps) == len(problem.operations)


def test_difficulty_grows_operations_and_value_sizes():
    levels = [task.LEVELS[d] for d in range(1, task.MAX_DIFFICULTY + 1)]
    for easier, harder in itertools.pairwise(levels):
        assert harder.operations > easier.operations
        assert harder.max_value >= easier.max_value
        assert harder.multiply >= easier.multiply
    mean_steps, mean_largest = [], []
    for d in range(1, task.MAX_DIFFICULTY + 1):
        drawn = task.problems(200, seed=1, difficulty=d)
        mean_steps.append(sum(len(p.steps) for p in drawn) / len(drawn))
        mean_largest.append(sum(max(task.parse_step(s)[3] for s in p.steps) for p in drawn) / len(drawn))
        assert all(task.parse_step(s)[3] <= task.LEVELS[d].max_value for p in drawn for s in p.steps)
    assert mean_steps == sorted(mean_steps)
    assert mean_largest[-1] > 2 * mean_largest[0]


def test_same_seed_same_problems_other_seed_other_problems():
    assert task.problems(50, seed=7) == task.problems(50, seed=7)
    assert task.problems(50, seed=7) != task.problems(50, seed=8)


def test_from_spec_reads_dataset_options():
    drawn = task.from_spec({"n": "30", "seed": "7", "min_difficulty": "2", "max_difficulty": "3"})
    assert len(drawn) == 30
    assert {p.difficulty for p in drawn} <= {2, 3}
    assert drawn == task.problems(30, 7, min_difficulty=2, max_difficulty=3)
    assert {p.difficulty for p in task.from_spec({"n": "5", "seed": "1", "difficulty": "4"})} == {4}
    with pytest.raises(ValueError, match="unknown"):
        task.from_spec({"n": "5", "sed": "1"})


def test_distinct_draws_never_repeat_a_question_and_start_as_the_plain_draws_do():
    plain = task.problems(400, seed=7)
    assert len({p.question for p in plain}) < 400  # the easy levels repeat: why the option exists
    distinct = task.from_spec({"n": "400", "seed": "7", "distinct": "true"})
    assert len(distinct) == 400 and len({p.question for p in distinct}) == 400
    first_repeat = next(i for i, p in enumerate(plain) if p.question in {q.question for q in plain[:i]})
    assert distinct[:first_repeat] == plain[:first_repeat]
    assert task.from_spec({"n": "5", "seed": "7", "distinct": "0"}) == task.problems(5, seed=7)
    with pytest.raises(ValueError, match="distinct must be true or false"):
        task.from_spec({"n": "5", "distinct": "maybe"})
    with pytest.raises(ValueError, match="cannot draw 500 distinct problems"):
        task.problems(500, seed=1, difficulty=1, distinct=True)


def test_slips_are_carried_through_later_steps():
    rng = random.Random(0)
    slipped = wrong_answers = 0
    for problem in task.problems(300, seed=5, difficulty=6):
        steps = task.worked_solution(problem.start, problem.operations, slip_rate=0.2, rng=rng)
        flags = task.prefix_correct(problem, steps)
        if not all(flags):
            slipped += 1
            first = flags.index(False)
            # the slipped step is wrong arithmetic, and the next step goes on from its wrong value
            assert not task.arithmetic_correct(steps[first])
            for step, following in zip(steps[first:], steps[first + 1 :], strict=False):
                assert task.parse_step(following)[0] == task.parse_step(step)[3]
            wrong_answers += extract_answer(steps[-1]) != problem.answer
    assert slipped > 30
    assert wrong_answers >= 0.9 * slipped  # two slips can cancel out, rarely


def test_slip_chance_grows_with_carries():
    assert task.carries(12, "+", 13) == 0
    assert task.carries(19, "+", 13) == 1
    assert task.carries(100, "-", 1) == 2
    assert task.slip_chance(12, "+", 13, 0.05) == 0
    assert task.slip_chance(999, "+", 999, 0.05) > task.slip_chance(19, "+", 13, 0.05)
