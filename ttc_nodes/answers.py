"""Final-answer extraction and equivalence.

Answers are compared by value, never by raw string equality (Snell et al. 2024, §4). Each answer
is first rewritten to a canonical key, and two answers with the same key are the same answer:

- Notation that carries no value is dropped: `$` and `\\$`, the spacing commands `\\,` `\\;` `\\:`
  `\\!` `\\ ` `~` `\\quad`, `\\left`/`\\right`, `\\displaystyle`, degree marks (`^\\circ`,
  `^{\\circ}`, `°`, `\\degree`) and percent signs. `\\dfrac` and `\\tfrac` are `\\frac`;
  `\\text{...}`, `\\mbox{...}`, `\\mathrm{...}` and their kin are unwrapped to their contents.
- Percent: `36\\%` is 36, not 0.36, as in MATH, whose percent questions say "do not include the
  percent sign" and whose references are written without it.
- Units: words after a value are dropped, whether in a text command (`5.4 \\text{ cents}`,
  `864 \\mbox{ inches}^2`) or after a plain number (`\\text{5 cm}`, `5 cm`): both are 5.
- Numbers are exact rationals: `1000`, `1,000`, `1\\,000`, `1\\!000`, `1{,}000` and `1e3` are one
  number, and `0.5`, `1/2` and `\\frac12` another. A bare comma separates thousands only in a
  bare number; inside a list or tuple it separates elements (`(1,100)` is a point).
- A leading single-variable assignment is dropped: `x = 3`, `y=3` and `3` are one answer.
- Sets are unordered: `\\{1,2\\}`, `\\{2, 1\\}` and the bare list `2, 1` are one answer. Tuples and
  intervals stay ordered and keep their brackets: `(1,2)`, `(2,1)`, `[1,2)` and `\\{1,2\\}` differ.
- Answers made only of words (`\\text{East}`, `even`) compare as words, ignoring case.

Two different keys are different answers when both are exact (numbers, words, and sets or tuples
of them). Otherwise math-verify decides, on the canonical forms, in both directions. The
relation is symmetric; `group_answers` closes it transitively, so its partition of a list of
answers does not depend on their order. docs/answers.md states these rules for users.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any, NamedTuple

# math-verify warns on every call made without its signal-based timeout, which threads cannot use.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)

_DOLLARS = re.compile(r"\\?\$")
_SIZING = re.compile(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle)(?![a-zA-Z])")
_FRAC = re.compile(r"\\[dt]frac(?![a-zA-Z])")
_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|,\\!\s*|\\[,!])(?=\d{3}(?!\d))")
_THIN_SPACE = re.compile(r"\\[,;:!>]")
_WIDE_SPACE = re.compile(r"\\q?quad(?![a-zA-Z])|\\ |~")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![a-zA-Z])")
_PERCENT = re.compile(r"\\?%")
_TEXT = re.compile(r"\\(?:text|textrm|textnormal|textbf|textit|textup|mbox|mathrm|mathbf)\s*\{([^{}]*)\}")
_UNIT_POWER = re.compile(r"\s*\^\s*\{?\s*[23]\s*\}?")
_WORDS = re.compile(r"[A-Za-z.]+(?:\s+[A-Za-z.]+)*")
_ASSIGNMENT = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=(?![=<>])")
_RELATION = re.compile(r"[=<>]|\\(?:[lg]eq?|neq?)(?![a-zA-Z])")
_SPACE = re.compile(r"\s+")

_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][+-]?\d{1,3})?|[+-]?\.\d+(?:[eE][+-]?\d{1,3})?")
_SLASH = re.compile(r"([+-]?\d+)/(\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac(?:\{([+-]?\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
_UNITS_AFTER_NUMBER = re.compile(r"(.+?) [A-Za-z]{2,}(?: [A-Za-z]+)*(?:\^\{?[23]\}?)?")
_WORD = re.compile(r"[a-z]+(?: [a-z]+)*")
_OPEN = {"(": ")", "[": "]", "{": "}"}


class _Key(NamedTuple):
    """An answer's canonical key: its kind, its canonical form, and whether it is exact (two
    different exact keys are different answers without asking math-verify)."""

    kind: str  # "number", "word", "set", "sequence" or "latex"
    form: str
    exact: bool


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


def reference_answer(reference: str) -> str:
    """A dataset's reference as a bare answer: GSM8K rationales are cut to their `####` line."""
    return extract_answer(reference) or reference.strip()


@lru_cache(maxsize=65536)
def same_answer(first: str, second: str) -> bool:
    """Whether two final answers are mathematically equal (`"1/2"` and `"\\frac{1}{2}"` are).

    Symmetric: `same_answer(a, b) == same_answer(b, a)`. Not always transitive, since
    math-verify is not; `group_answers` closes it.
    """
    return _same_key(_key(first), _key(second))


def is_correct(answer: str | None, reference: str | None) -> bool | None:
    """Grade an answer against a reference; None when there is no reference to grade against.

    Agrees with the vote: an answer is correct exactly when `group_answers` puts it in one group
    with the reference.
    """
    if reference is None:
        return None
    if answer is None:
        return False
    return same_answer(answer, reference_answer(reference))


def group_answers(answers: Sequence[str | None]) -> list[int | None]:
    """Group equal answers: the i-th entry is the group index of answers[i] (None for no answer).

    The groups are the classes of `same_answer` closed transitively, so every order of the same
    answers gives the same partition. Groups are numbered in order of first appearance.
    """
    keys = [None if answer is None else _key(answer) for answer in answers]
    distinct = sorted({key for key in keys if key is not None})
    parent = list(range(len(distinct)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    # Every pair of distinct keys is compared (not one representative per group), in a fixed
    # order; a pair already joined cannot change the partition, so it is skipped.
    for i in range(len(distinct)):
        for j in range(i + 1, len(distinct)):
            if root(i) != root(j) and _same_key(distinct[i], distinct[j]):
                parent[root(j)] = root(i)
    position = {key: index for index, key in enumerate(distinct)}
    numbers: dict[int, int] = {}
    groups: list[int | None] = []
    for key in keys:
        if key is None:
            groups.append(None)
            continue
        groups.append(numbers.setdefault(root(position[key]), len(numbers)))
    return groups


@lru_cache(maxsize=65536)
def _same_key(first: _Key, second: _Key) -> bool:
    if first == second:
        return True
    if (first.exact and second.exact) or "word" in (first.kind, second.kind):
        return False
    # Both directions must agree: where math-verify accepts one way only, it is being lenient
    # with the reference's form (a set accepting a tuple, say), which would make (1,2) = (2,1).
    return _verify(first.form, second.form) and _verify(second.form, first.form)


def _verify(gold: str, target: str) -> bool:
    from math_verify import verify

    parsed_gold, parsed_target = _parsed(gold), _parsed(target)
    if not parsed_gold or not parsed_target:
        return False
    return bool(verify(list(parsed_gold), list(parsed_target), timeout_seconds=None))


@lru_cache(maxsize=65536)
def _parsed(answer: str) -> tuple[Any, ...]:
    from math_verify import parse

    # parsing_timeout=None: math-verify's signal-based timeout only works on the main thread,
    # and solves run in worker threads.
    return tuple(parse(f"${answer}$", parsing_timeout=None))


@lru_cache(maxsize=65536)
def _key(answer: str) -> _Key:
    return _key_of(_normalised(answer))


def _normalised(answer: str) -> str:
    """The answer with notation that carries no value removed (the module docstring lists it)."""
    text = _DOLLARS.sub("", answer.strip())
    text = _SIZING.sub("", text)
    text = _FRAC.sub(r"\\frac", text)
    text = _THOUSANDS.sub("", text)
    text = _WIDE_SPACE.sub(" ", _THIN_SPACE.sub("", text))
    text = _PERCENT.sub("", _DEGREES.sub("", text))
    text = _without_unit_words(text)
    while (unwrapped := _TEXT.sub(lambda match: f" {match.group(1)} ", text)) != text:
        text = unwrapped
    text = _tight(text)
    assignment = _ASSIGNMENT.match(text)
    if assignment and text[assignment.end() :] and not _RELATION.search(text[assignment.end() :]):
        text = text[assignment.end() :]
    units = _UNITS_AFTER_NUMBER.fullmatch(text)
    if units and _number(units.group(1)) is not None:
        text = units.group(1)
    return text


def _without_unit_words(text: str) -> str:
    """Drop `\\text{ cm}`-like words (and a following `^2`) that end a value; words between two
    values (`1 \\text{ and } 2`) stay."""
    pieces: list[str] = []
    last = 0
    for match in _TEXT.finditer(text):
        before = text[: match.start()].rstrip()
        power = _UNIT_POWER.match(text, match.end())
        end = power.end() if power else match.end()
        after = text[end:].lstrip()
        if (
            _WORDS.fullmatch(match.group(1).strip())
            and before
            and before[-1] not in "{^_"
            and (not after or after[0] in ",)]" or after.startswith("\\}"))
        ):
            pieces.append(text[last : match.start()])
            last = end
    pieces.append(text[last:])
    return "".join(pieces)


def _tight(text: str) -> str:
    """Whitespace removed, except one space between two letters or digits (`\\pi r`, `5 cm`)."""
    parts = _SPACE.split(text.strip())
    out = parts[0]
    for part in parts[1:]:
        if out and part and out[-1].isalnum() and part[0].isalnum():
            out += " "
        out += part
    return out


def _key_of(text: str) -> _Key:
    number = _number(text)
    if number is not None:
        return _Key("number", _render_number(number), exact=True)
    inner = _wrapped(text)
    if inner is not None and text.startswith("\\{"):
        return _set_key(_split(inner))
    if inner is not None and (text[0] == "{" or len(_split(inner)) == 1):
        return _key_of(inner)  # grouping braces, or one value in parentheses: `(C)` is `C`
    if inner is not None:
        elements = [_key_of(part) for part in _split(inner)]
        form = text[0] + ",".join(e.form for e in elements) + text[-1]
        return _Key("sequence", form, exact=all(e.exact for e in elements))
    parts = _split(text)
    if len(parts) > 1:
        return _set_key(parts)
    if _WORD.fullmatch(text.lower()) and (len(text) >= 3 or " " in text):
        return _Key("word", text.lower(), exact=True)
    return _Key("latex", text, exact=False)


def _set_key(parts: list[str]) -> _Key:
    elements = sorted({_key_of(part) for part in parts if part})
    form = "\\{" + ",".join(e.form for e in elements) + "\\}"
    return _Key("set", form, exact=all(e.exact for e in elements))


def _number(text: str) -> Fraction | None:
    """`text` as an exact rational, when it is a plain decimal, `p/q` or `\\frac{p}{q}`."""
    try:
        if _NUMBER.fullmatch(text):
            return Fraction(text.replace(",", ""))
        if slash := _SLASH.fullmatch(text):
            return Fraction(int(slash.group(1)), int(slash.group(2)))
        if frac := _LATEX_FRACTION.fullmatch(text):
            sign, top, top_digit, bottom, bottom_digit = frac.groups()
            value = Fraction(int(top or top_digit), int(bottom or bottom_digit))
            return -value if sign == "-" else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _render_number(number: Fraction) -> str:
    if number.denominator == 1:
        return str(number.numerator)
    sign = "-" if number < 0 else ""
    return f"{sign}\\frac{{{abs(number.numerator)}}}{{{number.denominator}}}"


def _wrapped(text: str) -> str | None:
    """The inside of `text` when one bracket pair (`(`, `[`, `{` or `\\{`, closed by any of
    `)`, `]`, `}`, `\\}` so that intervals count) encloses all of it; else None."""
    opener = 2 if text.startswith("\\{") else 1
    if len(text) < 2 or text[0] not in "([{\\" or (opener == 1 and text[0] == "\\"):
        return None
    depth = 0
    for index, char in enumerate(text):
        if char in _OPEN:
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                if index != len(text) - 1:
                    return None
                closer = 2 if text.endswith("\\}") and opener == 2 else 1
                return text[opener : len(text) - closer]
    return None


def _split(text: str) -> list[str]:
    """`text` split at its top-level commas."""
    parts: list[str] = []
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char in _OPEN:
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts]
