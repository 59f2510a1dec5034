"""The dataset loader: specs, layouts, bad lines and subsets."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.service.datasets import MAX_TESTBED_N, DatasetError, Problem, dataset_name, load_dataset

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "math500_test.jsonl").is_file(), reason=f"shared data files not found in {DATA_DIR}"
)
NUMBER = re.compile(r"^-?\d[\d,]*(\.\d+)?$")


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    """Lines given as objects are JSON-encoded; strings are written as they are."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def gsm8k_record(index: int) -> dict[str, str]:
    return {"question": f"What is {index} + 1?", "answer": f"{index} + 1 = {index + 1}\n#### {index + 1}"}


def math_record(index: int) -> dict[str, Any]:
    return {
        "problem": f"Find ${index}^2$.",
        "solution": f"It is $\\boxed{{{index * index}}}$.",
        "answer": str(index * index),
        "subject": "Algebra",
        "level": 1 + index % 5,
        "unique_id": f"test/algebra/{index}.json",
    }


@pytest.fixture
def gsm8k_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "tiny_gsm8k.jsonl", [gsm8k_record(i) for i in range(10)])


# --- The shared data files -----------------------------------------------------------------------


@needs_data
def test_math500_loads_500_problems_with_levels_subjects_and_unique_ids() -> None:
    problems = load_dataset(f"jsonl:{DATA_DIR / 'math500_test.jsonl'}")
    assert len(problems) == 500
    assert {problem.dataset for problem in problems} == {"math500_test"}
    assert Counter(problem.meta["level"] for problem in problems) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
    assert Counter(problem.meta["subject"] for problem in problems)["Algebra"] == 124
    assert len({problem.key for problem in problems}) == 500
    assert all(re.fullmatch(r"test/[a-z_]+/\d+\.json", problem.key) for problem in problems)
    first = json.loads((DATA_DIR / "math500_test.jsonl").read_text().splitlines()[0])
    assert (problems[0].key, problems[0].question, problems[0].reference) == (
        first["unique_id"],
        first["problem"],
        first["answer"],
    )
    assert problems[0].meta["line"] == 1


@needs_data
def test_gsm8k_test_loads_1319_problems_with_bare_number_references() -> None:
    problems = load_dataset(str(DATA_DIR / "gsm8k_test.jsonl"))
    assert len(problems) == 1319
    assert problems[0].dataset == "gsm8k_test"
    assert (problems[0].key, problems[0].reference) == ("L1", "18")
    assert problems[0].question.startswith("Janet")
    assert problems[-1].key == "L1319"
    assert all(problem.reference and NUMBER.match(problem.reference) for problem in problems)


@needs_data
def test_shortcuts_resolve_in_ttc_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_DATA_DIR", str(DATA_DIR))
    assert len(load_dataset("math500")) == 500
    assert len(load_dataset("gsm8k")) == 1319
    train = load_dataset("gsm8k_train", limit=3)
    assert [problem.dataset for problem in train] == ["gsm8k_train"] * 3


# --- Specs ---------------------------------------------------------------------------------------


def test_testbed_spec_is_deterministic_per_seed() -> None:
    first = load_dataset("testbed:arith?n=20&seed=7")
    assert first == load_dataset("testbed:arith?seed=7&n=20")
    assert len(first) == 20
    assert [problem.question for problem in first] != [
        problem.question for problem in load_dataset("testbed:arith?n=20&seed=8")
    ]
    assert first[0].dataset == "testbed:arith?n=20&seed=7"
    assert first[0].key == "arith-s7-0"
    assert first[0].reference is not None and re.fullmatch(r"-?\d+", first[0].reference)


def test_testbed_options_pass_through_to_the_task() -> None:
    problems = load_dataset("testbed:arith?n=10&seed=1&difficulty=3")
    assert {problem.meta["difficulty"] for problem in problems} == {3}
    with pytest.raises(DatasetError, match="unknown testbed:arith option"):
        load_dataset("testbed:arith?n=10&colour=red")
    with pytest.raises(DatasetError, match="unknown testbed task"):
        load_dataset("testbed:geometry?n=10")


def test_unknown_spec_names_the_spec_and_the_accepted_forms() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset spec 'mnist'.*testbed:arith.*jsonl:PATH.*hf:NAME"):
        load_dataset("mnist")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'absent.jsonl'}: no such file")):
        load_dataset(f"jsonl:{tmp_path / 'absent.jsonl'}")


def test_relative_and_home_paths_resolve(gsm8k_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(gsm8k_file.parent)
    assert len(load_dataset(gsm8k_file.name)) == 10
    monkeypatch.setenv("HOME", str(gsm8k_file.parent))
    assert len(load_dataset(f"jsonl:~/{gsm8k_file.name}")) == 10


def test_dataset_name_without_loading() -> None:
    assert dataset_name("math500") == "math500_test"
    assert dataset_name("gsm8k") == "gsm8k_test"
    assert dataset_name("jsonl:/nowhere/my_set.jsonl") == "my_set"
    assert dataset_name("testbed:arith?seed=7&n=500") == "testbed:arith?n=500&seed=7"
    assert dataset_name("hf:openai/gsm8k?config=main") == "hf:openai/gsm8k?config=main&split=test"


def test_shortcut_reads_ttc_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_jsonl(tmp_path / "gsm8k_test.jsonl", [gsm8k_record(i) for i in range(4)])
    monkeypatch.setenv("TTC_DATA_DIR", str(tmp_path))
    problems = load_dataset("gsm8k")
    assert [(problem.dataset, problem.key, problem.reference) for problem in problems[:2]] == [
        ("gsm8k_test", "L1", "1"),
        ("gsm8k_test", "L2", "2"),
    ]


def test_shortcut_without_ttc_data_dir_says_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTC_DATA_DIR", raising=False)
    with pytest.raises(DatasetError, match=r"set TTC_DATA_DIR.*or pass jsonl:PATH"):
        load_dataset("math500")


def test_shortcut_with_file_missing_from_ttc_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match=r"has no math500_test\.jsonl.*jsonl:PATH"):
        load_dataset("math500")


def test_hf_without_the_datasets_library_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with pytest.raises(DatasetError, match=r"`datasets` library.*jsonl:PATH"):
        load_dataset("hf:openai/gsm8k?config=main")


def test_hf_dataset_missing_from_the_cache_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        raise FileNotFoundError(f"Couldn't find '{name}' on the Hugging Face Hub (offline mode)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with pytest.raises(DatasetError, match=r"local Hugging Face cache.*jsonl:PATH"):
        load_dataset("hf:nobody/nothing")


def test_hf_rows_load_offline_with_the_same_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
        import os

        calls.append((name, config, split, os.environ["HF_DATASETS_OFFLINE"]))
        return [gsm8k_record(i) for i in range(3)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    problems = load_dataset("hf:openai/gsm8k?config=main")
    assert calls == [("openai/gsm8k", "main", "test", "1")]
    assert [(problem.key, problem.reference, problem.meta) for problem in problems] == [
        ("L1", "1", {"row": 1}),
        ("L2", "2", {"row": 2}),
        ("L3", "3", {"row": 3}),
    ]
    assert problems[0].dataset == "hf:openai/gsm8k?config=main&split=test"


# --- Layouts and bad lines -----------------------------------------------------------------------

BAD_GSM8K_LINES = [
    ("invalid JSON", '{"question": "unfinished'),
    ("not a JSON object", "[1, 2, 3]"),
    ("missing field 'question'", {"answer": "#### 3"}),
    ("empty field 'answer'", {"question": "What is 1 + 2?", "answer": "  "}),
    ("no final '#### <number>' line", {"question": "What is 1 + 2?", "answer": "It is 3."}),
]


@pytest.mark.parametrize(("reason", "bad_line"), BAD_GSM8K_LINES, ids=[reason for reason, _ in BAD_GSM8K_LINES])
def test_a_bad_line_fails_the_load_naming_file_and_line(tmp_path: Path, reason: str, bad_line: Any) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [gsm8k_record(0), "", gsm8k_record(1), bad_line, gsm8k_record(2)])
    with pytest.raises(DatasetError, match=re.escape(f"{path}:4: ") + ".*" + re.escape(reason)):
        load_dataset(str(path))


def test_duplicate_key_fails_naming_both_lines(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "math.jsonl", [math_record(1), math_record(2), math_record(1)])
    with pytest.raises(
        DatasetError, match=re.escape(f"{path}:3: duplicate key 'test/algebra/1.json' (first on line 1)")
    ):
        load_dataset(str(path))


def test_skip_warns_once_per_bad_line_and_keeps_the_good_ones(tmp_path: Path) -> None:
    lines: list[Any] = [gsm8k_record(0)]
    for _, bad_line in BAD_GSM8K_LINES:
        lines += [bad_line, gsm8k_record(len(lines))]
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    warnings: list[str] = []
    problems = load_dataset(str(path), bad_lines="skip", warn=warnings.append)
    assert [problem.key for problem in problems] == ["L1", "L3", "L5", "L7", "L9", "L11"]
    assert len(warnings) == len(BAD_GSM8K_LINES)
    for line, warning, (reason, _) in zip([2, 4, 6, 8, 10], warnings, BAD_GSM8K_LINES, strict=True):
        assert warning.startswith(f"{path}:{line}: ")
        assert reason in warning
        assert warning.endswith("— skipped")


def test_a_bad_first_line_does_not_hide_the_layout(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "No answer here"}, gsm8k_record(1)])
    with pytest.raises(DatasetError, match=re.escape(f"{path}:1: missing field 'answer'")):
        load_dataset(str(path))
    warnings: list[str] = []
    assert [problem.key for problem in load_dataset(str(path), bad_lines="skip", warn=warnings.append)] == ["L2"]
    assert len(warnings) == 1


def test_all_lines_bad_is_an_empty_dataset_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ["not json", "", "[]"])
    with pytest.raises(DatasetError, match=r"no problems \(2 bad line\(s\) skipped\)"):
        load_dataset(str(path), bad_lines="skip", warn=lambda message: None)
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DatasetError, match="no problems"):
        load_dataset(str(empty))


def test_unrecognised_layout_lists_the_keys_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "custom.jsonl", [{"prompt": "What is 2 + 2?", "target": "4", "id": 1}])
    with pytest.raises(DatasetError, match=r"unrecognised layout, keys found: \['id', 'prompt', 'target'\]"):
        load_dataset(str(path))


def test_field_overrides_name_the_question_and_answer(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "custom.jsonl",
        [{"prompt": "What is 2 + 2?", "target": "4"}, {"prompt": "Solve it.", "target": "So \\boxed{7}."}],
    )
    problems = load_dataset(str(path), question_field="prompt", answer_field="target")
    assert [(problem.dataset, problem.key, problem.question, problem.reference) for problem in problems] == [
        ("custom", "L1", "What is 2 + 2?", "4"),
        ("custom", "L2", "Solve it.", "7"),
    ]
    unlabelled = load_dataset(str(path), question_field="prompt")
    assert [problem.reference for problem in unlabelled] == [None, None]
    with pytest.raises(DatasetError, match=r"name the question field too.*\['prompt', 'target'\]"):
        load_dataset(str(path), answer_field="target")
    with pytest.raises(DatasetError, match=re.escape(f"{path}:1: missing field 'text' (keys: prompt, target)")):
        load_dataset(str(path), question_field="text")


def test_answer_field_override_on_a_known_layout_keeps_its_keys(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "math.jsonl", [math_record(3)])
    (problem,) = load_dataset(str(path), answer_field="solution")
    assert (problem.key, problem.reference, problem.meta) == (
        "test/algebra/3.json",
        "9",
        {"level": 4, "subject": "Algebra", "line": 1},
    )


# --- Subsets -------------------------------------------------------------------------------------


def keys(problems: list[Problem]) -> list[str]:
    return [problem.key for problem in problems]


def test_shards_partition_the_dataset(gsm8k_file: Path) -> None:
    everything = keys(load_dataset(str(gsm8k_file)))
    shards = [keys(load_dataset(str(gsm8k_file), shard=f"{i}/3")) for i in range(3)]
    assert sorted(key for shard in shards for key in shard) == sorted(everything)
    assert sum(len(shard) for shard in shards) == len(everything)
    assert shards[1] == everything[1::3]


@pytest.mark.parametrize("shard", ["3/2", "2/2", "-1/2", "x/2", "1/x", "1/0", "1"])
def test_bad_shards_are_refused(gsm8k_file: Path, shard: str) -> None:
    with pytest.raises(DatasetError, match="shard"):
        load_dataset(str(gsm8k_file), shard=shard)


def test_seeded_shuffle_is_deterministic_and_not_file_order(gsm8k_file: Path) -> None:
    file_order = keys(load_dataset(str(gsm8k_file)))
    shuffled = keys(load_dataset(str(gsm8k_file), seed=3))
    assert shuffled == keys(load_dataset(str(gsm8k_file), seed=3))
    assert shuffled != file_order
    assert sorted(shuffled) == sorted(file_order)
    assert keys(load_dataset(str(gsm8k_file), seed=3, shard="0/2")) == shuffled[0::2]


def test_limit_applies_last(gsm8k_file: Path) -> None:
    assert keys(load_dataset(str(gsm8k_file), limit=3)) == ["L1", "L2", "L3"]
    shard = keys(load_dataset(str(gsm8k_file), seed=5, shard="1/2"))
    assert keys(load_dataset(str(gsm8k_file), seed=5, shard="1/2", limit=2)) == shard[:2]
    with pytest.raises(DatasetError, match="limit"):
        load_dataset(str(gsm8k_file), limit=0)


def test_an_empty_shard_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "two.jsonl", [gsm8k_record(0), gsm8k_record(1)])
    with pytest.raises(DatasetError, match=r"shard 3/4 of 2 problem\(s\) is empty"):
        load_dataset(str(path), shard="3/4")


# --- Testbed subsets are drawn lazily ------------------------------------------------------------


def test_a_limit_draws_only_the_testbed_problems_it_keeps() -> None:
    [first] = load_dataset("testbed:arith?n=100000000", limit=1)
    [alone] = load_dataset("testbed:arith?n=1")
    assert (first.key, first.question, first.reference) == (alone.key, alone.question, alone.reference)
    assert first.dataset == "testbed:arith?n=100000000"
    sharded = load_dataset("testbed:arith?n=100000000&seed=2", shard="3/1000", limit=2)
    assert keys(sharded) == ["arith-s2-3", "arith-s2-1003"]


@pytest.mark.parametrize(
    ("seed", "shard", "limit"), [(None, None, 5), (None, "2/3", None), (None, "1/4", 3), (7, None, 4), (7, "1/3", 2)]
)
def test_a_testbed_subset_is_the_same_subset_of_the_whole(
    seed: int | None, shard: str | None, limit: int | None
) -> None:
    whole = load_dataset("testbed:arith?n=40&seed=1")
    positions = list(range(len(whole)))
    if seed is not None:
        import random

        random.Random(seed).shuffle(positions)
    if shard is not None:
        index, count = (int(part) for part in shard.split("/"))
        positions = positions[index::count]
    expected = [whole[p] for p in positions][:limit]
    assert load_dataset("testbed:arith?n=40&seed=1", seed=seed, shard=shard, limit=limit) == expected


def test_testbed_draws_are_bounded_by_max_testbed_n() -> None:
    assert len(load_dataset(f"testbed:arith?n={MAX_TESTBED_N + 1}", limit=3)) == 3
    with pytest.raises(DatasetError, match=rf"would draw {MAX_TESTBED_N + 1:,} problems, over the {MAX_TESTBED_N:,}"):
        load_dataset(f"testbed:arith?n={MAX_TESTBED_N + 1}")
    with pytest.raises(DatasetError, match=rf"at most {MAX_TESTBED_N:,} \(MAX_TESTBED_N\) can be shuffled"):
        load_dataset(f"testbed:arith?n={MAX_TESTBED_N + 1}", seed=1, limit=1)


# --- Bad inputs: one line each, an error the CLI turns into exit status 2 ------------------------

BAD_FILES: dict[str, str] = {
    "empty.jsonl": "",
    "not_object.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n[1, 2]\n',
    "no_question.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n{"answer": "#### 2"}\n',
    "empty_question.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n{"question": "", "answer": "#### 2"}\n',
    "nul_question.jsonl": '{"question": "1+1?", "answer": "#### 2"}\n{"question": "1+\\u00001?", "answer": "#### 2"}\n',
    "huge_question.jsonl": json.dumps({"question": "1+" * 20_000 + "1", "answer": "#### 1"}) + "\n",
}

# name -> (spec, load_dataset options, words the message names)
BAD_INPUTS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "unknown scheme": ("warp:x", {}, ["unknown dataset spec 'warp:x'", "accepted forms"]),
    "missing file": ("jsonl:{dir}/absent.jsonl", {}, ["absent.jsonl: no such file"]),
    "shard past its count": ("testbed:arith?n=4", {"shard": "3/2"}, ["'3/2'", "0 <= i < n"]),
    "shard of zero": ("testbed:arith?n=4", {"shard": "0/0"}, ["'0/0'"]),
    "shard not numbers": ("testbed:arith?n=4", {"shard": "a/b"}, ["'a/b'", "whole numbers"]),
    "zero limit": ("testbed:arith?n=4", {"limit": 0}, ["limit must be at least 1, got 0"]),
    "negative limit": ("testbed:arith?n=4", {"limit": -2}, ["limit must be at least 1, got -2"]),
    "zero problems": ("testbed:arith?n=0", {}, ["n must be a whole number of problems, 1 or more; got '0'"]),
    "negative problems": ("testbed:arith?n=-1", {}, ["got '-1'"]),
    "problems not a number": ("testbed:arith?n=abc", {}, ["got 'abc'"]),
    "too many problems": ("testbed:arith?n=1000000000", {}, ["n=1,000,000,000", "MAX_TESTBED_N"]),
    "empty file": ("jsonl:{dir}/empty.jsonl", {}, ["empty.jsonl: the file is empty"]),
    "a line not an object": ("jsonl:{dir}/not_object.jsonl", {}, ["not_object.jsonl:2: not a JSON object"]),
    "a line without question": ("jsonl:{dir}/no_question.jsonl", {}, ["no_question.jsonl:2: missing field 'question'"]),
    "an empty question": ("jsonl:{dir}/empty_question.jsonl", {}, ["empty_question.jsonl:2: empty field 'question'"]),
    "a NUL in a question": (
        "jsonl:{dir}/nul_question.jsonl",
        {},
        ["nul_question.jsonl:2: field 'question' holds a NUL"],
    ),
    "a question too long": ("jsonl:{dir}/huge_question.jsonl", {}, ["huge_question.jsonl:1:", "MAX_QUESTION_CHARS"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_each_bad_input_is_refused_in_one_line_naming_what_is_wrong(tmp_path: Path, name: str) -> None:
    for file_name, text in BAD_FILES.items():
        (tmp_path / file_name).write_text(text)
    spec, options, words = BAD_INPUTS[name]

    with pytest.raises(DatasetError) as refused:
        load_dataset(spec.format(dir=tmp_path), **options)

    message = str(refused.value)
    assert isinstance(refused.value, ValueError)  # the CLI's user errors: exit status 2
    assert "\n" not in message
    for word in words:
        assert word in message
