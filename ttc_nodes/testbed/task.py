"""The testbed task: multi-step arithmetic with exact answers, written and solved MATH-style.

A problem is a left-to-right chain of operations on whole numbers, written with the parentheses
that order of operations needs, e.g. `Compute (17 + 8) * 3 - 5.` Its solution has one operation
per step (one paragraph each) and the final step boxes the answer:

    17 + 8 = 25

    25 * 3 = 75

    75 - 5 = \\boxed{70}

The difficulty knob (1 = easiest) sets the number of operations (1 to 12), how large running values
may grow (20 to 99, so more carries and borrows) and whether products appear; parentheses come with
products after sums. `worked_solution(..., slip_rate=)` writes the solution a fallible student
would: at each carry or borrow, with chance `slip_rate`, the result gets a plausible slip (a dropped
carry, a forgotten borrow, a digit off by one) and later steps carry the wrong value on
consistently. The proposer is trained on those, so its mistakes grow with difficulty.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ttc_nodes.prompts import STEP_SEPARATOR

Operation = tuple[str, int]  # ("+", 48): apply "+ 48" to the running value


@dataclass(frozen=True)
class Level:
    operations: int
    max_value: int  # the start and every running value stay at or below it
    multiply: bool  # whether products by 2..5 appear


# Operands are one-digit numbers and running values stay small, so every single step is arithmetic
# a small model learns in minutes; harder levels are longer chains over bigger values, with more
# carries to slip on. (Bigger operands made the models of the 20-minute recipe fail at every level.)
LEVELS: dict[int, Level] = {
    1: Level(operations=1, max_value=20, multiply=False),
    2: Level(operations=2, max_value=30, multiply=False),
    3: Level(operations=3, max_value=40, multiply=True),
    4: Level(operations=4, max_value=50, multiply=True),
    5: Level(operations=5, max_value=60, multiply=True),
    6: Level(operations=7, max_value=80, multiply=True),
    7: Level(operations=9, max_value=99, multiply=True),
    8: Level(operations=12, max_value=99, multiply=True),
}
MAX_DIFFICULTY = max(LEVELS)
SLIP_RATE = 0.2  # slip chance per carry / borrow of a step, in the proposer's training data


@dataclass(frozen=True)
class ArithProblem:
    """One problem: its question, reference steps and exact answer."""

    key: str
    question: str
    steps: tuple[str, ...]
    answer: str
    difficulty: int
    start: int
    operations: tuple[Operation, ...]

    @property
    def solution(self) -> str:
        """The reference solution as one text (steps separated by a blank line)."""
        return STEP_SEPARATOR.join(self.steps)


def problems(
    n: int,
    seed: int,
    difficulty: int | None = None,
    *,
    min_difficulty: int = 1,
    max_difficulty: int = MAX_DIFFICULTY,
    distinct: bool = False,
) -> list[ArithProblem]:
    """`n` problems drawn with `seed`; a fixed `difficulty`, or uniform over the given range. With
    `distinct`, a draw whose question an earlier problem already asks is skipped, so that no two of the
    `n` ask the same (the easy levels have few questions: 200 plain draws repeat about 7)."""
    if difficulty is not None:
        min_difficulty = max_difficulty = difficulty
    if not 1 <= min_difficulty <= max_difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty must lie in 1..{MAX_DIFFICULTY}, got {min_difficulty}..{max_difficulty}")
    rng = random.Random(f"arith-{seed}")
    drawn: list[ArithProblem] = []
    asked: set[str] = set()
    attempts = 0
    while len(drawn) < n:
        attempts += 1
        if attempts > 100 * n:
            raise ValueError(f"cannot draw {n} distinct problems at difficulty {min_difficulty}..{max_difficulty}")
        level = rng.randint(min_difficulty, max_difficulty)
        start, operations = _draw_operations(LEVELS[level], rng)
        problem = make_problem(f"arith-s{seed}-{len(drawn)}", start, operations, level)
        if distinct and problem.question in asked:
            continue
        asked.add(problem.question)
        drawn.append(problem)
    return drawn


def from_spec(options: dict[str, str]) -> list[ArithProblem]:
    """Problems for a dataset spec such as `testbed:arith?n=500&seed=7&max_difficulty=4`."""
    known = {"n", "seed", "difficulty", "min_difficulty", "max_difficulty", "distinct"}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown testbed:arith option(s) {sorted(unknown)}; known: {sorted(known)}")
    difficulty = options.get("difficulty")
    return problems(
        int(options.get("n", "100")),
        int(options.get("seed", "0")),
        int(difficulty) if difficulty is not None else None,
        min_difficulty=int(options.get("min_difficulty", "1")),
        max_difficulty=int(options.get("max_difficulty", str(MAX_DIFFICULTY))),
        distinct=_flag(options.get("distinct", "false"), "distinct"),
    )


def _flag(value: str, name: str) -> bool:
    if value.lower() in {"1", "true", "yes"}:
        return True
    if value.lower() in {"0", "false", "no"}:
        return False
    raise ValueError(f"option {name} must be true or false, got {value!r}")


def make_problem(key: str, start: int, operations: tuple[Operation, ...], difficulty: int) -> ArithProblem:
    steps = worked_solution(start, operations)
    return ArithProblem(
        key=key,
        question=f"Compute {expression(start, operations)}.",
        steps=tuple(steps),
        answer=str(evaluate(start, operations)),
        difficulty=difficulty,
        start=start,
        operations=operations,
    )


def _draw_operations(level: Level, rng: random.Random) -> tuple[int, tuple[Operation, ...]]:
    start = rng.randint(2, level.max_value // 2)
    value, operations = start, []
    for _ in range(level.operations):
        choices = []
        if value + 1 <= level.max_value:
            choices.append("+")
        if value >= 2:
            choices.append("-")
        if level.multiply and 2 <= value <= level.max_value // 2:
            choices.append("*")
        op = rng.choice(choices)
        if op == "*":
            operand = rng.randint(2, min(5, level.max_value // value))
        elif op == "-":
            operand = rng.randint(1, min(value - 1, 9))
        else:
            operand = rng.randint(1, min(9, level.max_value - value))
        operations.append((op, operand))
        value = apply(value, op, operand)
    return start, tuple(operations)


def apply(value: int, op: str, operand: int) -> int:
    if op == "+":
        return value + operand
    if op == "-":
        return value - operand
    if op == "*":
        return value * operand
    raise ValueError(f"unknown operation {op!r}")


def evaluate(start: int, operations: tuple[Operation, ...]) -> int:
    value = start
    for op, operand in operations:
        value = apply(value, op, operand)
    return value


def expression(start: int, operations: tuple[Operation, ...]) -> str:
    """The chain written as ordinary maths: parentheses only where a product needs them."""
    text, additive_on_top = str(start), False
    for op, operand in operations:
        if op == "*" and additive_on_top:
            text = f"({text})"
        text = f"{text} {op} {operand}"
        additive_on_top = op in "+-"
    return text


def carries(value: int, op: str, operand: int) -> int:
    """How many carries (addition, multiplication) or borrows (subtraction) the step needs."""
    value, operand = abs(value), abs(operand)  # a slipped chain can go below zero
    if op == "*":
        count = 0
        for digit in str(operand):
            carry = 0
            for top in reversed(str(value)):
                carry = (int(top) * int(digit) + carry) // 10
                count += carry > 0
        return count
    a, b = str(value)[::-1], str(operand)[::-1]
    count, carry = 0, 0
    for i in range(max(len(a), len(b))):
        x = int(a[i]) if i < len(a) else 0
        y = int(b[i]) if i < len(b) else 0
        carry = int(x + y + carry >= 10) if op == "+" else int(x - y - carry < 0)
        count += carry
    return count


def slip(value: int, op: str, operand: int, rng: random.Random) -> int:
    """A plausible wrong result: a dropped carry, a forgotten borrow or a digit off by one."""
    right = apply(value, op, operand)
    for attempt in range(40):
        place = 10 ** rng.randint(0, max(0, len(str(right)) - 2))
        if op == "+":
            wrong = right - 10 * place if rng.random() < 0.7 else right + rng.choice([-1, 1]) * place
        elif op == "-":
            wrong = right + 10 * place if rng.random() < 0.7 else right + rng.choice([-1, 1]) * place
        else:
            wrong = right + rng.choice([-1, 1]) * place
        # Slips keep the result's length (a digit goes wrong), unless no such slip turns up.
        if wrong >= 0 and wrong != right and (len(str(wrong)) == len(str(right)) or attempt >= 20):
            return wrong
    return right + 1


def step_text(value: int, op: str, operand: int, result: int, final: bool) -> str:
    shown = f"\\boxed{{{result}}}" if final else str(result)
    return f"{value} {op} {operand} = {shown}"


def slip_chance(value: int, op: str, operand: int, slip_rate: float) -> float:
    """Slips come with carries and borrows."""
    return min(1.0, slip_rate * carries(value, op, operand))


def worked_solution(
    start: int,
    operations: tuple[Operation, ...],
    *,
    slip_rate: float = 0.0,
    rng: random.Random | None = None,
) -> list[str]:
    """Steps of a solution; with `slip_rate` > 0 each carry risks a slip that later steps inherit."""
    rng = rng or random.Random(0)
    value, steps = start, []
    for index, (op, operand) in enumerate(operations):
        result = apply(value, op, operand)
        if slip_rate and rng.random() < slip_chance(value, op, operand, slip_rate):
            result = slip(value, op, operand, rng)
        steps.append(step_text(value, op, operand, result, final=index == len(operations) - 1))
        value = result
    return steps


_STEP = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(\d+)\s*=\s*(?:\\boxed\{\s*(-?\d+)\s*\}|(-?\d+))\s*$")


def parse_step(step: str) -> tuple[int, str, int, int] | None:
    """(left, op, right, result) of a step like `85 * 3 = 255`, or None when it is malformed."""
    match = _STEP.match(step)
    if match is None:
        return None
    left, op, right, boxed, plain = match.groups()
    return int(left), op, int(right), int(boxed if boxed is not None else plain)


def arithmetic_correct(step: str) -> bool:
    """Whether a step's own arithmetic is right (whatever its operands)."""
    parsed = parse_step(step)
    return parsed is not None and apply(parsed[0], parsed[1], parsed[2]) == parsed[3]


def prefix_correct(problem: ArithProblem, steps: list[str]) -> list[bool]:
    """Per step: whether the solution so far is right (first-error convention: a step is correct
    when its operands are the problem's, its arithmetic is right and every earlier step is too)."""
    flags, value, ok = [], problem.start, True
    for index, step in enumerate(steps):
        parsed = parse_step(step)
        expected = problem.operations[index] if index < len(problem.operations) else None
        ok = (
            ok
            and parsed is not None
            and expected is not None
            and (parsed[0], parsed[1], parsed[2]) == (value, *expected)
            and parsed[3] == apply(value, *expected)
        )
        if ok and expected is not None:
            value = apply(value, *expected)
        flags.append(ok)
    return flags
