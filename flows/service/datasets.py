"""Datasets: a spec string in, a list of problems out.

Specs:
- `testbed:arith?n=500&seed=7` — the synthetic arithmetic task (options go to `from_spec`);
- `jsonl:PATH`, or a bare `PATH.jsonl` — MATH-500 and GSM8K layouts are recognised from the keys,
  any other layout is read through `question_field` / `answer_field`;
- `math500`, `gsm8k`, `gsm8k_train` — those files in the directory `$TTC_DATA_DIR`;
- `hf:NAME?split=test&config=...` — a dataset already in the local Hugging Face cache.

A file's bad lines (invalid JSON, not an object, a missing or empty field, a NUL character, a
question over `MAX_QUESTION_CHARS`, a duplicate key) either fail the load or are skipped with a
warning each, never dropped silently; an empty file is refused. `seed`, `shard` and `limit` then
pick a subset, in that order, by position: only the testbed problems the subset keeps are drawn (the
first k of `n=` are the same whatever `n`), so `testbed:arith?n=100000000` with `limit=1` draws one.
At most `MAX_TESTBED_N` testbed problems are drawn for one load; a `seed` shuffle needs all `n`, so it
takes `n` up to that maximum.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from ttc_nodes.answers import reference_answer
from ttc_nodes.prompts import MAX_QUESTION_CHARS
from ttc_nodes.testbed.task import from_spec

logger = logging.getLogger(__name__)

BadLines = Literal["fail", "skip"]

DATA_DIR_ENV = "TTC_DATA_DIR"
SHORTCUTS: dict[str, str] = {
    "math500": "math500_test.jsonl",
    "gsm8k": "gsm8k_test.jsonl",
    "gsm8k_train": "gsm8k_train.jsonl",
}
ACCEPTED_FORMS = (
    "testbed:arith?n=N&seed=S, jsonl:PATH (or a bare PATH.jsonl), "
    f"{' / '.join(SHORTCUTS)} (files in ${DATA_DIR_ENV}), hf:NAME[?split=SPLIT&config=CONFIG]"
)
HF_OPTIONS = ("config", "split")
MAX_TESTBED_N = 100_000  # testbed problems drawn for one load: about 10 s of drawing

_GSM8K_FINAL = re.compile(r"^####\s*\S", re.MULTILINE)


@dataclass(frozen=True)
class Problem:
    """One problem of a dataset, as the database stores it."""

    dataset: str  # stable dataset name, e.g. "math500_test" or "testbed:arith?n=500&seed=7"
    key: str  # stable within the dataset: MATH-500 unique_id, "L12" for line 12, a testbed key
    question: str
    reference: str | None  # the bare final answer; None when the dataset has none
    meta: dict[str, Any] = field(default_factory=dict)


class DatasetError(ValueError):
    """A spec, file or line that cannot be loaded; line problems name the file and line."""


def load_dataset(
    spec: str,
    *,
    limit: int | None = None,
    shard: str | None = None,
    seed: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    bad_lines: BadLines = "fail",
    warn: Callable[[str], None] | None = None,
) -> list[Problem]:
    """The problems of `spec`, in file order unless `seed` shuffles them, then sharded and limited.

    `shard="i/n"` keeps the problems at positions i, i+n, i+2n, ... (after any shuffle); `limit`
    keeps the first `limit` of what remains. With `bad_lines="skip"` each bad line is reported
    through `warn` (default: a logging warning) and left out. Raises DatasetError for a bad spec,
    an unreadable source, a bad line under `bad_lines="fail"`, or an empty result.
    """
    if bad_lines not in ("fail", "skip"):
        raise DatasetError(f"bad_lines must be 'fail' or 'skip', got {bad_lines!r}")
    if limit is not None and limit < 1:
        raise DatasetError(f"limit must be at least 1, got {limit}")
    shard_index = _parse_shard(shard) if shard is not None else None
    source = _parse_spec(spec)
    report = _BadLineReport(bad_lines, warn or logger.warning)
    fields = _FieldOverrides(question_field, answer_field)

    if source.kind == "testbed":
        if question_field or answer_field:
            raise DatasetError(f"{spec}: question_field / answer_field apply to jsonl and hf datasets only")
        return _testbed_problems(source, seed=seed, shard=shard_index, limit=limit)
    if source.kind == "hf":
        problems = _records_to_problems(source.name, source.location, _hf_rows(source), fields, report, "row")
    else:
        path = _resolve_path(source)
        problems = _records_to_problems(source.name, str(path), _jsonl_records(path), fields, report)

    if not problems:
        skipped = f" ({report.skipped} bad line(s) skipped)" if report.skipped else ""
        raise DatasetError(f"{source.location}: no problems{skipped}")
    chosen = _positions(len(problems), source=spec, seed=seed, shard=shard_index, limit=limit)
    return [problems[position] for position in chosen]


@dataclass(frozen=True)
class Selection:
    """Which prompts of a dataset a flow reads, and from which fields: the flows' parameters and the
    CLI's flags of these names (`--limit`, `--shard`, `--subset-seed`, `--skip-bad-lines`,
    `--question-field`, `--answer-field`)."""

    limit: int | None = None
    shard: str | None = None
    subset_seed: int | None = None
    skip_bad_lines: bool = False
    question_field: str | None = None
    answer_field: str | None = None

    def load(self, spec: str, warn: Callable[[str], None] | None = None) -> list[Problem]:
        """The selected problems of `spec` (`load_dataset`'s DatasetError when none)."""
        return load_dataset(
            spec,
            limit=self.limit,
            shard=self.shard,
            seed=self.subset_seed,
            question_field=self.question_field,
            answer_field=self.answer_field,
            bad_lines="skip" if self.skip_bad_lines else "fail",
            warn=warn,
        )


def dataset_name(spec: str) -> str:
    """The name `load_dataset(spec)` gives its problems' dataset, without loading anything."""
    return _parse_spec(spec).name


# --- Specs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: Literal["testbed", "jsonl", "shortcut", "hf"]
    name: str  # the dataset name
    location: str  # what messages call the source: a spec or a path
    target: str  # testbed task, file path, shortcut or hf dataset name
    options: dict[str, str] = field(default_factory=dict)


def _parse_spec(spec: str) -> _Source:
    text = spec.strip()
    if text.startswith("testbed:"):
        task, options = _split_options(text, text.removeprefix("testbed:"))
        if task != "arith":
            raise DatasetError(f"{spec!r}: unknown testbed task {task!r}; the testbed has 'arith'")
        # Option order does not change the problems, so it does not change the dataset name either.
        name = f"testbed:{task}" + (f"?{urlencode(sorted(options.items()))}" if options else "")
        return _Source("testbed", name, text, task, options)
    if text.startswith("hf:"):
        dataset, options = _split_options(text, text.removeprefix("hf:"))
        unknown = set(options) - set(HF_OPTIONS)
        if not dataset or unknown:
            raise DatasetError(f"{spec!r}: expected hf:NAME[?split=SPLIT&config=CONFIG], options {list(HF_OPTIONS)}")
        options.setdefault("split", "test")
        return _Source("hf", f"hf:{dataset}?{urlencode(sorted(options.items()))}", text, dataset, options)
    if text.startswith("jsonl:") or text.endswith(".jsonl"):
        path = text.removeprefix("jsonl:")
        if not path:
            raise DatasetError(f"{spec!r}: expected jsonl:PATH")
        return _Source("jsonl", Path(path).stem, path, path)
    if text in SHORTCUTS:
        return _Source("shortcut", Path(SHORTCUTS[text]).stem, text, text)
    raise DatasetError(f"unknown dataset spec {spec!r}; accepted forms: {ACCEPTED_FORMS}")


def _split_options(spec: str, rest: str) -> tuple[str, dict[str, str]]:
    target, _, query = rest.partition("?")
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError as exc:
        raise DatasetError(f"{spec!r}: options must read key=value&key=value ({exc})") from exc
    for key, value in pairs:
        if key in options:
            raise DatasetError(f"{spec!r}: option {key!r} given twice")
        options[key] = value
    return target, options


def _parse_shard(shard: str) -> tuple[int, int]:
    index, slash, count = shard.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise DatasetError(f"shard must read i/n with whole numbers, e.g. 0/4; got {shard!r}") from None
    if not slash or n < 1 or not 0 <= i < n:
        raise DatasetError(f"shard {shard!r}: need 0 <= i < n in i/n (shards of n are numbered 0 to n-1)")
    return i, n


def _resolve_path(source: _Source) -> Path:
    if source.kind == "shortcut":
        directory = os.environ.get(DATA_DIR_ENV, "")
        file_name = SHORTCUTS[source.target]
        if not directory:
            raise DatasetError(
                f"{source.target}: set {DATA_DIR_ENV} to the directory holding {file_name}, "
                f"or pass jsonl:PATH to the file"
            )
        path = Path(directory).expanduser() / file_name
        if not path.is_file():
            raise DatasetError(
                f"{source.target}: {DATA_DIR_ENV}={directory} has no {file_name}; "
                f"set {DATA_DIR_ENV} to the directory holding it, or pass jsonl:PATH to the file"
            )
        return path
    path = Path(source.target).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    return path


# --- Sources -------------------------------------------------------------------------------------

Record = tuple[int, Any, str | None]  # (line or row number, parsed value, reason it is bad or None)


def _testbed_problems(
    source: _Source, *, seed: int | None, shard: tuple[int, int] | None, limit: int | None
) -> list[Problem]:
    """The subset's testbed problems, drawing only as many as its last position needs."""
    given = source.options.get("n", "100")
    count = int(given) if given.isascii() and given.isdigit() else 0
    if count < 1:
        raise DatasetError(f"{source.location}: n must be a whole number of problems, 1 or more; got {given!r}")
    if seed is not None and count > MAX_TESTBED_N:
        raise DatasetError(
            f"{source.location}: a seed shuffles all n={count:,} problems; "
            f"at most {MAX_TESTBED_N:,} (MAX_TESTBED_N) can be shuffled"
        )
    chosen = _positions(count, source=source.location, seed=seed, shard=shard, limit=limit)
    needed = max(chosen) + 1 if isinstance(chosen, list) else chosen[-1] + 1
    if needed > MAX_TESTBED_N:
        raise DatasetError(
            f"{source.location}: n={count:,} would draw {needed:,} problems, over the {MAX_TESTBED_N:,} "
            "(MAX_TESTBED_N) one load draws; ask for fewer with n=, a limit or a shard"
        )
    try:
        drawn = from_spec({**source.options, "n": str(needed)})
    except ValueError as exc:
        raise DatasetError(f"{source.location}: {exc}") from exc
    picked = (drawn[position] for position in chosen)
    return [
        Problem(source.name, problem.key, problem.question, problem.answer, {"difficulty": problem.difficulty})
        for problem in picked
    ]


def _jsonl_records(path: Path) -> Iterator[Record]:
    """Each non-blank line of a JSONL file, parsed; bytes are decoded per line so that one bad
    line does not hide the others."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if not data.strip():
        raise DatasetError(f"{path}: the file is empty (no problems)")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"
            continue
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield number, None, f"invalid JSON ({exc.msg} at column {exc.colno})"


def _hf_rows(source: _Source) -> Iterator[Record]:
    # Never download: only what is already in the local cache.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(
            f"{source.location}: hf: specs need the `datasets` library (pip install datasets); "
            f"or download the file and pass jsonl:PATH"
        ) from exc
    try:
        rows = datasets.load_dataset(source.target, source.options.get("config"), split=source.options["split"])
    except Exception as exc:  # the library raises many kinds for a dataset missing from the cache
        raise DatasetError(
            f"{source.location}: cannot load {source.target!r} from the local Hugging Face cache "
            f"(offline; {type(exc).__name__}: {exc}); download it first, or pass jsonl:PATH"
        ) from exc
    for number, row in enumerate(rows, start=1):
        yield number, row, None


# --- Layouts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    question_field: str
    answer_field: str | None  # None: the dataset has no references
    key_field: str | None = None  # None: the line number is the key ("L12")
    meta_fields: tuple[str, ...] = ()
    gsm8k_answer: bool = False  # the answer is a rationale whose last line is "#### N"


# Recognised from the keys, in this order.
MATH500 = _Layout("problem", "answer", key_field="unique_id", meta_fields=("level", "subject"))
MATH = _Layout("problem", "answer", meta_fields=("level", "subject"))
GSM8K = _Layout("question", "answer", gsm8k_answer=True)


@dataclass(frozen=True)
class _FieldOverrides:
    question: str | None
    answer: str | None


def _layout_for(objects: list[tuple[int, Mapping[str, Any]]], fields: _FieldOverrides, location: str) -> _Layout:
    """The most specific known layout that some record fits (so a bad first line cannot hide it),
    with the field overrides applied; the layout's fields are then checked on every record."""
    first_line, first = objects[0]
    present = sorted(first)
    location = f"{location} (line {first_line})"
    detected = next(
        (layout for layout in (MATH500, MATH, GSM8K) for _, record in objects if _required(layout) <= set(record)),
        None,
    )
    if fields.question is None and fields.answer is None:
        if detected is None:
            raise DatasetError(
                f"{location}: unrecognised layout, keys found: {present}; expected MATH-500 "
                f"(problem, answer, unique_id, level, subject) or GSM8K (question, answer ending '#### N'), "
                f"or name the fields with question_field / answer_field (--question-field / --answer-field)"
            )
        return detected
    question = fields.question or (detected.question_field if detected else None)
    if question is None:
        raise DatasetError(
            f"{location}: name the question field too (question_field / --question-field); keys found: {present}"
        )
    return _Layout(
        question_field=question,
        answer_field=fields.answer or (detected.answer_field if detected else None),
        key_field=detected.key_field if detected else None,
        meta_fields=detected.meta_fields if detected else (),
        gsm8k_answer=bool(detected and detected.gsm8k_answer and fields.answer is None),
    )


def _required(layout: _Layout) -> set[str]:
    return {name for name in (layout.question_field, layout.answer_field, layout.key_field) if name is not None}


# --- Records to problems -------------------------------------------------------------------------


class _BadLineReport:
    def __init__(self, mode: BadLines, warn: Callable[[str], None]) -> None:
        self.mode, self.warn, self.skipped = mode, warn, 0

    def bad(self, where: str, reason: str) -> None:
        if self.mode == "fail":
            raise DatasetError(f"{where}: {reason}")
        self.skipped += 1
        self.warn(f"{where}: {reason} — skipped")


class _BadRecord(Exception):
    pass


def _not_an_object(value: Any) -> str | None:
    return None if isinstance(value, Mapping) else f"not a JSON object (got {type(value).__name__})"


def _records_to_problems(
    dataset: str,
    location: str,
    records: Iterable[Record],
    fields: _FieldOverrides,
    report: _BadLineReport,
    unit: str = "line",
) -> list[Problem]:
    checked = [(number, value, reason or _not_an_object(value)) for number, value, reason in records]
    objects = [(number, value) for number, value, reason in checked if reason is None]
    layout = _layout_for(objects, fields, location) if objects else None
    first_line: dict[str, int] = {}
    problems: list[Problem] = []
    for number, value, reason in checked:
        where = f"{location}:{number}"
        if reason is not None or layout is None:
            report.bad(where, reason or "not a JSON object")
            continue
        try:
            problem = _problem(dataset, number, value, layout, unit)
        except _BadRecord as exc:
            report.bad(where, str(exc))
            continue
        if problem.key in first_line:
            report.bad(where, f"duplicate key {problem.key!r} (first on {unit} {first_line[problem.key]})")
            continue
        first_line[problem.key] = number
        problems.append(problem)
    return problems


def _problem(dataset: str, number: int, record: Mapping[str, Any], layout: _Layout, unit: str) -> Problem:
    question = _text(record, layout.question_field)
    if len(question) > MAX_QUESTION_CHARS:
        raise _BadRecord(
            f"field {layout.question_field!r} is {len(question):,} characters long, over the "
            f"{MAX_QUESTION_CHARS:,} a question may have (MAX_QUESTION_CHARS)"
        )
    reference = None
    if layout.answer_field is not None:
        answer = _text(record, layout.answer_field)
        if layout.gsm8k_answer and not _GSM8K_FINAL.search(answer):
            raise _BadRecord(f"field {layout.answer_field!r} has no final '#### <number>' line")
        reference = reference_answer(answer)
    key = _text(record, layout.key_field) if layout.key_field else f"L{number}"
    meta = {name: record[name] for name in layout.meta_fields if name in record}
    meta[unit] = number
    return Problem(dataset, key, question, reference, meta)


def _text(record: Mapping[str, Any], name: str) -> str:
    if name not in record:
        raise _BadRecord(f"missing field {name!r} (keys: {', '.join(sorted(record))})")
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _BadRecord(f"field {name!r} is not text (got {type(value).__name__})")
    text = str(value)
    if not text.strip():
        raise _BadRecord(f"empty field {name!r}")
    if "\x00" in text:  # PostgreSQL cannot store it, and no model should read it
        raise _BadRecord(f"field {name!r} holds a NUL character (\\x00)")
    return text


# --- Subsets -------------------------------------------------------------------------------------


def _positions(
    total: int, *, source: str, seed: int | None, shard: tuple[int, int] | None, limit: int | None
) -> Sequence[int]:
    """The positions, among `total` problems, of the subset: shuffled by `seed` (as shuffling the
    problems themselves would), then every n-th from the shard's index, then the first `limit`.
    Without a seed it is a `range`, built in constant time whatever `total` is."""
    chosen: Sequence[int] = range(total)
    if seed is not None:
        order = list(chosen)
        random.Random(seed).shuffle(order)
        chosen = order
    if shard is not None:
        index, count = shard
        chosen = chosen[index::count]
        if not chosen:
            raise DatasetError(f"{source}: shard {index}/{count} of {total} problem(s) is empty")
    return chosen[:limit] if limit is not None else chosen
