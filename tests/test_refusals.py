"""Bad input of every kind a user (or an adversary) gives the CLI: each is refused in one line on
stderr with exit status 2, and the database is exactly as it was (row counts of every table compared).

The testbed engines are the defaults, so the refusals run in-process in a few seconds; every refusal
below happens before Prefect starts or anything is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import func, select
from typer.testing import CliRunner

from db import connect, dispose
from db.models import Candidate, Policy, Problem, Run, Score, Solve, Step
from flows.cli import app
from flows.policy import Plan
from tests.test_policy import example_policy

QUESTION = "Compute (12 + 5) * 2 - 3."
FAST = ["--strategy", "majority", "--budget", "2"]


@dataclass(frozen=True)
class Fixtures:
    database_url: str
    paths: dict[str, str]


def ttc(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def row_counts(database_url: str) -> dict[str, int]:
    with connect(database_url)() as session:
        return {
            table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
            for table in (Run, Problem, Solve, Step, Candidate, Score, Policy)
        }


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixtures]:
    folder = tmp_path_factory.mktemp("refusals")
    database_url = f"sqlite:///{folder / 'ttc.db'}"
    solved = ttc("solve", QUESTION, *FAST, "--run-name", "bound", "--db", database_url, "--json")
    assert solved.exit_code == 0, solved.output

    files = {
        "empty": "",
        "not_object": '{"problem": "1+1?", "answer": "2"}\n[1, 2]\n',
        "no_question": '{"text": "1+1?", "answer": "2"}\n',
        "blank_question": '{"problem": "  ", "answer": "2"}\n',
        "nul_question": '{"problem": "1+\\u0000 1?", "answer": "2"}\n',
        "not_json": '{"problem": "1+1?", "answer": "2"\n',
        "no_reference": '{"problem": "1+1?"}\n' * 12,
    }
    paths = {name: str(folder / f"{name}.jsonl") for name in files}
    for name, text in files.items():
        Path(paths[name]).write_text(text)
    policy = example_policy()
    paths["policy"] = str(folder / "policy.json")
    policy.save(paths["policy"])
    broken_plans = {
        "bad_width": Plan(strategy="beam", settings={"beam_width": 3}, label="beam M=4"),
        "unknown_strategy": Plan(strategy="teleport", settings={}, label="beam M=4"),
    }
    for name, plan in broken_plans.items():
        paths[name] = str(folder / f"{name}.json")
        policy.model_copy(update={"plans": {**policy.plans, "beam M=4": plan}}).save(paths[name])
    paths["policy_not_json"] = str(folder / "policy_not_json.json")
    Path(paths["policy_not_json"]).write_text("{")
    paths["policy_invalid"] = str(folder / "policy_invalid.json")
    Path(paths["policy_invalid"]).write_text(json.dumps({**json.loads(policy.model_dump_json()), "budgets": [0]}))
    paths["readonly"] = f"sqlite:///file:{folder / 'ttc.db'}?mode=ro&uri=true"
    paths["db"] = database_url
    paths["big"] = "1+" * 500_000 + "1"
    yield Fixtures(database_url=database_url, paths=paths)
    dispose()


E = ["evaluate", "--db", "{db}"]
T = ["--dataset", "testbed:arith?n=4&seed=1"]
C = ["calibrate", "--db", "{db}", "--dataset", "testbed:arith?n=12&seed=1", "--budgets", "1,2", "--plans", "majority"]

# name -> (arguments, words the one line names)
REFUSALS: dict[str, tuple[list[str], list[str]]] = {
    # ttc solve: the question
    "empty question": (["solve", "", "--db", "{db}"], ["question is empty"]),
    "blank question": (["solve", "  \n ", "--db", "{db}"], ["question is empty"]),
    "NUL in question": (["solve", "1+\x001?", "--db", "{db}"], ["NUL"]),
    "megabyte question": (["solve", "{big}", "--db", "{db}"], ["question"]),
    # ttc solve: strategy, budget, settings
    "unknown strategy": (["solve", QUESTION, "--strategy", "nope", "--db", "{db}"], ["unknown strategy 'nope'"]),
    "zero budget": (["solve", QUESTION, "--budget", "0", "--db", "{db}"], ["budget"]),
    "negative budget": (["solve", QUESTION, "--budget", "-3", "--db", "{db}"], ["budget"]),
    "budget beyond the maximum": (["solve", QUESTION, "--budget", "1000000000000", "--db", "{db}"], ["budget"]),
    "budget beyond the integer column": (["solve", QUESTION, "--budget", "2147483648", "--db", "{db}"], ["budget"]),
    "budget not a number": (["solve", QUESTION, "--budget", "lots", "--db", "{db}"], ["--budget", "integer"]),
    "seed not a number": (["solve", QUESTION, "--seed", "x", "--db", "{db}"], ["--seed"]),
    "unknown option": (["solve", QUESTION, "--colour", "red"], ["--colour"]),
    "assignment without =": (["solve", QUESTION, "--set", "foo", "--db", "{db}"], ["key=value"]),
    "unknown setting": (["solve", QUESTION, "--set", "colour=red", "--db", "{db}"], ["colour"]),
    "setting of the wrong type": (["solve", QUESTION, "--set", "temperature=hot", "--db", "{db}"], ["temperature"]),
    "negative temperature": (["solve", QUESTION, "--set", "temperature=-1", "--db", "{db}"], ["temperature"]),
    "beam width not dividing": (
        ["solve", QUESTION, "--strategy", "beam", "--budget", "8", "--set", "beam_width=3", "--db", "{db}"],
        ["beam_width"],
    ),
    "lookahead not dividing": (
        ["solve", QUESTION, "--strategy", "lookahead", "--budget", "9", "--set", "lookahead=1", "--db", "{db}"],
        ["lookahead"],
    ),
    "revision split not the budget": (
        ["solve", QUESTION, "--strategy", "revisions", "--budget", "8", "--set", "chains=3", "--db", "{db}"],
        ["chains"],
    ),
    "zero max rounds": (
        ["solve", QUESTION, "--strategy", "beam", "--set", "max_rounds=0", "--db", "{db}"],
        ["max_rounds"],
    ),
    # ttc solve: engines
    "unknown engine scheme": (["solve", QUESTION, "--proposer", "warp:x", "--db", "{db}"], ["warp"]),
    "missing model directory": (["solve", QUESTION, "--proposer", "hf:/no/such/dir", "--db", "{db}"], ["/no/such/dir"]),
    "unknown testbed model": (["solve", QUESTION, "--verifier", "testbed:oracle9", "--db", "{db}"], ["oracle9"]),
    "bad engine option": (["solve", QUESTION, "--proposer", "testbed:proposer?colour=red", "--db", "{db}"], ["colour"]),
    # ttc solve: databases
    "unparsable database URL": (["solve", QUESTION, *FAST, "--db", "not a url"], ["database URL"]),
    "unknown database kind": (["solve", QUESTION, *FAST, "--db", "oracle://h/x"], ["oracle"]),
    "unreachable database": (
        ["solve", QUESTION, *FAST, "--db", "postgresql://postgres@127.0.0.1:5999/x"],
        ["cannot reach database", "127.0.0.1:5999"],
    ),
    "database in an impossible folder": (["solve", QUESTION, *FAST, "--db", "sqlite:////proc/no/x.db"], ["/proc/no"]),
    "read-only database": (["solve", QUESTION, *FAST, "--db", "{readonly}"], ["readonly"]),
    "db from an unset variable": (["solve", QUESTION, *FAST, "--db", "env:TTC_NO_SUCH_VARIABLE"], ["not set"]),
    "run name bound to another plan": (
        ["solve", QUESTION, "--strategy", "beam", "--budget", "4", "--run-name", "bound", "--db", "{db}"],
        ["bound", "strategy"],
    ),
    # ttc trace
    "trace of an unknown run": (["trace", "no-such-run", "--db", "{db}"], ["no-such-run"]),
    "trace of an unknown problem": (["trace", "bound", "--problem", "nope", "--db", "{db}"], ["nope"]),
    # ttc evaluate: the plan (without one, `ttc solve`'s: best_of_n_weighted at N=16, which "bound" is not)
    "evaluate without a plan takes solve's": ([*E, *T, "--run-name", "bound"], ["strategy=best_of_n_weighted"]),
    "evaluate without a budget takes solve's": ([*E, *T, "-s", "majority", "--run-name", "bound"], ["budget=16"]),
    "total budget without a policy": ([*E, *T, *FAST, "--total-budget", "40"], ["--total-budget", "--policy"]),
    "evaluate unknown strategy": ([*E, *T, "--strategy", "nope", "--budget", "2"], ["nope"]),
    "evaluate zero budget": ([*E, *T, "--strategy", "majority", "--budget", "0"], ["budget"]),
    "evaluate huge budget": ([*E, *T, "--strategy", "majority", "--budget", "99999999999"], ["budget"]),
    "evaluate unknown setting": ([*E, *T, *FAST, "--set", "colour=red"], ["colour"]),
    "evaluate beam width": ([*E, *T, "--strategy", "beam", "--budget", "8", "--set", "beam_width=3"], ["beam_width"]),
    "evaluate zero concurrency": ([*E, *T, *FAST, "--concurrency", "0"], ["--concurrency"]),
    "evaluate unknown engine": ([*E, *T, *FAST, "--proposer", "warp:x"], ["warp"]),
    "evaluate unreachable database": (
        ["evaluate", *T, *FAST, "--db", "postgresql://postgres@127.0.0.1:5999/x"],
        ["cannot reach database"],
    ),
    # ttc evaluate: policies
    "missing policy file": ([*E, *T, "--policy", "/no/policy.json", "--budget", "4"], ["/no/policy.json"]),
    "policy not JSON": ([*E, *T, "--policy", "{policy_not_json}", "--budget", "4"], ["not JSON"]),
    "policy not a policy": ([*E, *T, "--policy", "{policy_invalid}", "--budget", "4"], ["budgets"]),
    "policy at an uncalibrated budget": ([*E, *T, "--policy", "{policy}", "--budget", "8"], ["4, 16", "8"]),
    "policy with two budgets": (
        [*E, *T, "--policy", "{policy}", "--budget", "4", "--total-budget", "9"],
        ["exactly one"],
    ),
    "policy with neither budget": ([*E, *T, "--policy", "{policy}"], ["exactly one"]),
    "policy and a strategy": ([*E, *T, "--policy", "{policy}", "--budget", "4", "--strategy", "beam"], ["--strategy"]),
    "policy and a setting": ([*E, *T, "--policy", "{policy}", "--budget", "4", "--set", "temperature=1"], ["--set"]),
    "policy plan a strategy refuses": (
        [*E, *T, "--policy", "{bad_width}", "--budget", "4"],
        ["beam M=4", "beam_width"],
    ),
    "policy plan of an unknown strategy": ([*E, *T, "--policy", "{unknown_strategy}", "--budget", "4"], ["teleport"]),
    # ttc evaluate: datasets
    "unknown dataset scheme": ([*E, *FAST, "--dataset", "warp:x"], ["warp"]),
    "missing dataset file": ([*E, *FAST, "--dataset", "jsonl:/no/such.jsonl"], ["/no/such.jsonl"]),
    "empty dataset file": ([*E, *FAST, "--dataset", "jsonl:{empty}"], ["empty"]),
    "dataset line not an object": ([*E, *FAST, "--dataset", "jsonl:{not_object}"], ["not_object.jsonl:2"]),
    "dataset line not JSON": ([*E, *FAST, "--dataset", "jsonl:{not_json}"], ["not_json.jsonl:1"]),
    "dataset line without a question": ([*E, *FAST, "--dataset", "jsonl:{no_question}"], ["question"]),
    "dataset question blank": ([*E, *FAST, "--dataset", "jsonl:{blank_question}"], ["question"]),
    "dataset question with NUL": ([*E, *FAST, "--dataset", "jsonl:{nul_question}"], ["NUL"]),
    "testbed of zero problems": ([*E, *FAST, "--dataset", "testbed:arith?n=0"], ["n"]),
    "testbed of negative problems": ([*E, *FAST, "--dataset", "testbed:arith?n=-1"], ["n"]),
    "testbed size not a number": ([*E, *FAST, "--dataset", "testbed:arith?n=many"], ["many"]),
    "testbed beyond the maximum": ([*E, *FAST, "--dataset", "testbed:arith?n=1000000000"], ["n"]),
    "shard beyond its count": ([*E, *T, *FAST, "--shard", "3/2"], ["3/2"]),
    "shard of zero": ([*E, *T, *FAST, "--shard", "0/0"], ["0/0"]),
    "shard not numbers": ([*E, *T, *FAST, "--shard", "a/b"], ["a/b"]),
    "zero limit": ([*E, *T, *FAST, "--limit", "0"], ["limit"]),
    "negative limit": ([*E, *T, *FAST, "--limit", "-2"], ["limit"]),
    "limit not a number": ([*E, *T, *FAST, "--limit", "ten"], ["--limit"]),
    "question field of the testbed": ([*E, *T, *FAST, "--question-field", "prompt"], ["question_field"]),
    "question field not in the file": (
        [*E, *FAST, "--dataset", "jsonl:{no_question}", "--question-field", "prompt"],
        ["prompt"],
    ),
    # --plugin, on every command that takes it
    "plugin that does not import": (
        ["solve", QUESTION, "--plugin", "no_such_plugin", "--db", "{db}"],
        ["no_such_plugin"],
    ),
    "plugin file that is not there": ([*E, *T, *FAST, "--plugin", "/no/plugin.py"], ["/no/plugin.py"]),
    "calibrate plugin that does not import": ([*C, "--plugin", "no_such_plugin"], ["no_such_plugin"]),
    "serve plugin that does not import": (["serve", "--plugin", "no_such_plugin"], ["no_such_plugin"]),
    # ttc calibrate
    "calibrate budgets not numbers": ([*C[:5], "--budgets", "a,b"], ["--budgets"]),
    "calibrate zero budget": ([*C, "--budgets", "0,1"], ["budgets"]),
    "calibrate unknown plan": ([*C[:7], "--plans", "teleport"], ["teleport"]),
    "calibrate zero bins": ([*C, "--bins", "0"], ["--bins"]),
    "calibrate too few prompts": ([*C, "--limit", "3"], ["at least"]),
    "calibrate without references": ([*C[:3], "--dataset", "jsonl:{no_reference}", *C[5:]], ["reference"]),
    "calibrate zero difficulty samples": ([*C, "--difficulty-samples", "0"], ["difficulty-samples"]),
    "calibrate unknown setting": ([*C, "--set", "colour=red"], ["colour"]),
    "calibrate assignment without =": ([*C, "--set", "foo"], ["key=value"]),
    # ttc strategies, ttc runs, ttc serve
    "graph of an unknown strategy": (["strategies", "--graph", "teleport"], ["teleport"]),
    "runs zero limit": (["runs", "--limit", "0", "--db", "{db}"], ["--limit"]),
    "serve assignment without =": (["serve", "--set", "foo"], ["key=value"]),
    "serve unreachable database": (["serve", "--db", "postgresql://postgres@127.0.0.1:5999/x"], ["cannot reach"]),
}


@pytest.mark.parametrize(("args", "named"), REFUSALS.values(), ids=REFUSALS.keys())
def test_bad_input_is_one_line_exit_2_and_the_database_is_unchanged(
    fixtures: Fixtures, args: list[str], named: list[str]
) -> None:
    before = row_counts(fixtures.database_url)

    result = ttc(*[a.format(**fixtures.paths) for a in args])

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for word in named:
        assert word in lines[0]
    assert row_counts(fixtures.database_url) == before


def test_there_are_at_least_sixty_kinds_of_bad_input() -> None:
    assert len(REFUSALS) >= 60
