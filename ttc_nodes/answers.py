"""Final-answer extraction and equivalence.

Answers are compared by value through math-verify (LaTeX and plain expressions), with an exact
decimal fast path for plain numbers; never by raw string equality.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

# math-verify warns on every call made without its signal-based timeout, which threads cannot use.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[+-]?\.\d+$")


def extract_answer(text: str) -> str | None:
    """The final answer written in `text`: the last `\\boxed{...}`, else a GSM8K `#### ...` line.

    Returns None when the text states no final answer (an unfinished or malformed output).
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    matches = _GSM8K.findall(text)
    if matches:
        return matches[-1].strip().rstrip(".") or None
    return None


def _last_boxed(text: str) -> str | None:
    starts = [match.end() for match in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for index in range(start, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:index]
    return None


def _as_decimal(answer: str) -> Decimal | None:
    cleaned = answer.strip().strip("$").replace(" ", "")
    if not _NUMBER.match(cleaned):
        return None
    try:
        return Decimal(cleaned.replace(",", ""))
    except InvalidOperation:
        return None


@lru_cache(maxsize=65536)
def _parsed(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    # parsing_timeout=None: math-verify's signal-based timeout only works on the main thread,
    # and solves run in worker threads.
    expression = answer if "$" in answer else f"${answer}$"
    return tuple(parse(expression, parsing_timeout=None))


@lru_cache(maxsize=65536)
def same_answer(first: str, second: str) -> bool:
    """Whether two final answers are mathematically equal (`"1/2"` and `"\\frac{1}{2}"` are)."""
    a, b = _as_decimal(first), _as_decimal(second)
    if a is not None and b is not None:
        return a == b
    from math_verify import verify

    gold, target = _parsed(first), _parsed(second)
    if not gold or not target:
        return _plain(first) == _plain(second)
    return bool(verify(list(gold), list(target), timeout_seconds=None))


def _plain(answer: str) -> str:
    return re.sub(r"\s+|\\[,;!]|\\left|\\right|\$", "", answer)


def reference_answer(reference: str) -> str:
    """A dataset's reference as a bare answer: GSM8K rationales are cut to their `####` line."""
    return extract_answer(reference) or reference.strip()


def is_correct(answer: str | None, reference: str | None) -> bool | None:
    """Grade an answer against a reference; None when there is no reference to grade against."""
    if reference is None:
        return None
    if answer is None:
        return False
    return same_answer(answer, reference_answer(reference))


def group_answers(answers: Sequence[str | None]) -> list[int | None]:
    """Group equal answers: the i-th entry is the group index of answers[i] (None for no answer).

    Groups are numbered in order of first appearance; each group's representative is its first
    member, so the result does not depend on sympy's choice of canonical form.
    """
    representatives: list[str] = []
    groups: list[int | None] = []
    for answer in answers:
        if answer is None:
            groups.append(None)
            continue
        for index, representative in enumerate(representatives):
            if same_answer(representative, answer):
                groups.append(index)
                break
        else:
            representatives.append(answer)
            groups.append(len(representatives) - 1)
    return groups
