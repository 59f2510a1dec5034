"""The `ttc` command line on tiny random-weight models and real databases (SQLite and PostgreSQL):
what it prints, what it stores, and how it refuses bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import func, select
from typer.testing import CliRunner

from db import connect, dispose, queries
from db.models import Problem, Run, Solve
from flows.cli import app
from flows.service.solving import question_key
from graphs import registry

STRATEGIES = [
    "majority",
    "best_of_n",
    "best_of_n_weighted",
    "beam",
    "lookahead",
    "dvts",
    "revisions",
    "particle_filtering",
    "mcts",
]
BEAM = ["--strategy", "beam", "--budget", "4", "--set", "max_step_tokens=6", "--set", "max_rounds=2"]
QUESTION = "What is 1+2?"
TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")


def ttc(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def models(tiny_lm: Path, tiny_prm: Path) -> list[str]:
    return ["--proposer", f"hf:{tiny_lm}", "--verifier", f"hf:{tiny_prm}"]


def solve_json(database_url: str, models: list[str], *extra: str, question: str = QUESTION) -> dict[str, Any]:
    result = ttc("solve", question, *BEAM, *models, "--db", database_url, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def row_counts(database_url: str) -> dict[str, int]:
    with connect(database_url)() as session:
        return {
            table.__tablename__: session.scalar(select(func.count()).select_from(table)) or 0
            for table in (Run, Problem, Solve)
        }


def error_line(result: Result) -> str:
    """The one line a refused command prints, after checking it is alone and on stderr."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# --- ttc strategies ------------------------------------------------------------------------------------


def test_strategies_lists_every_strategy() -> None:
    result = ttc("strategies")

    assert result.exit_code == 0, result.output
    for name in STRATEGIES:
        assert name in result.stdout


def test_strategies_json_gives_every_strategy_with_its_settings() -> None:
    result = ttc("strategies", "--json")

    assert result.exit_code == 0, result.output
    listing = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert sorted(listing) == sorted(STRATEGIES)
    for entry in listing.values():
        assert entry["summary"]
        assert entry["settings"]["budget"]["default"] == 16
        assert entry["settings"]["budget"]["description"]
    assert "beam_width" in listing["beam"]["settings"]
    assert listing["lookahead"]["settings"]["lookahead"]["default"] == 1
    assert {"chains", "chain_length"} <= set(listing["revisions"]["settings"])
    assert listing["revisions"]["needs"]["reviser"] and not listing["beam"]["needs"]["reviser"]
    assert listing["beam"]["needs"]["stepwise"] and not listing["majority"]["needs"]["stepwise"]
    assert listing["majority"]["needs"]["pool_vote"] == "majority" and listing["beam"]["needs"]["pool_vote"] is None


def test_strategies_graph_prints_the_strategy_drawn_as_mermaid() -> None:
    result = ttc("strategies", "--graph", "beam")

    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().startswith(("---", "graph", "flowchart"))
    assert "expand" in result.stdout and "select" in result.stdout


def test_version_prints_the_installed_version() -> None:
    result = ttc("--version")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ttc {version('ttc')}"


# --- ttc solve --plugin --------------------------------------------------------------------------------

PLUGIN = "examples.top_half_majority"


@pytest.fixture
def plugin_unloaded() -> Iterator[None]:
    """The example plug-in's strategy unregistered and its module forgotten (another test may have
    loaded it), so that --plugin imports it afresh; as it was again afterwards."""
    registered = registry.get("top_half_majority") if "top_half_majority" in registry.names() else None
    modules = {name: sys.modules.pop(name) for name in (PLUGIN, "top_half_majority") if name in sys.modules}
    registry.unregister("top_half_majority")
    yield
    registry.unregister("top_half_majority")
    sys.modules.pop(PLUGIN, None)
    sys.modules.update(modules)
    if registered is not None:
        registry.register(
            registered.name,
            registered.settings,
            registered.build,
            registered.summary,
            reviser=registered.reviser,
            stepwise=registered.stepwise,
            pool_vote=registered.pool_vote,
        )


def test_solve_with_plugin_runs_the_plugins_strategy(plugin_unloaded: None, tmp_path: Path) -> None:
    database = ["--db", f"sqlite:///{tmp_path / 'ttc.db'}", "--json"]
    plan = ["-s", "top_half_majority", "-n", "4"]

    without = ttc("solve", "Compute 2 + 3.", *plan, *database)
    result = ttc("solve", "Compute 2 + 3.", *plan, "--plugin", PLUGIN, *database)

    assert "--plugin" in error_line(without)
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["strategy"] == "top_half_majority" and 0 < outcome["generations"] <= 4


# --- ttc solve -----------------------------------------------------------------------------------------


def test_solve_json_prints_one_object_that_the_database_agrees_with(database_url: str, models: list[str]) -> None:
    result = ttc("solve", QUESTION, *BEAM, *models, "--db", database_url, "--json")

    assert result.exit_code == 0, result.output
    [line] = result.stdout.strip().splitlines()
    outcome = json.loads(line)
    assert {"run_id", "answer", "generations", "tokens", "flops"} <= set(outcome)
    assert outcome["strategy"] == "beam" and outcome["settings"]["budget"] == 4
    assert 0 < outcome["generations"] <= 4
    assert outcome["tokens"] == outcome["proposer_tokens"] + outcome["verifier_tokens"] > 0
    assert outcome["flops"] > 0

    with connect(database_url)() as session:
        [solve] = queries.trace_of(session, outcome["run_id"])
    assert solve.status == "done" and solve.strategy == "beam" and solve.budget == 4
    assert solve.problem.key == outcome["problem_key"] == question_key(QUESTION)
    assert solve.answer == outcome["answer"]
    assert solve.generations == outcome["generations"]
    assert solve.tokens == outcome["tokens"]
    assert solve.flops == pytest.approx(outcome["flops"])
    assert {"expand", "verify", "prune", "select"} <= {step.node for step in solve.steps}
    assert sum(step.generations for step in solve.steps) == solve.generations
    assert sum(step.tokens for step in solve.steps) == solve.tokens
    assert sum(step.flops for step in solve.steps) == pytest.approx(solve.flops)


# --- ttc trace -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoQuestions:
    """A SQLite database with a run, "two-questions", that solved two questions with beam search (later
    tests may add runs of their own)."""

    database_url: str
    first: dict[str, Any]
    second: dict[str, Any]


@pytest.fixture(scope="module")
def two_questions(models: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoQuestions]:
    url = f"sqlite:///{tmp_path_factory.mktemp('two-questions') / 'ttc.db'}"
    first = solve_json(url, models, "--run-name", "two-questions")
    second = solve_json(url, models, "--run-name", "two-questions", question="What is 3+0?")
    yield TwoQuestions(url, first, second)
    dispose(url)


def test_trace_renders_node_executions_and_candidate_tree(two_questions: TwoQuestions) -> None:
    run_id = two_questions.first["run_id"]

    result = ttc("trace", run_id, "--db", two_questions.database_url)

    assert result.exit_code == 0, result.output
    for node in ("expand", "verify", "prune", "select"):
        assert node in result.stdout
    assert "1.0 r1" in result.stdout  # the first candidate of round 1 in the tree
    assert two_questions.first["problem_key"] in result.stdout


def test_solve_again_under_a_run_name_adds_to_that_run(two_questions: TwoQuestions) -> None:
    assert two_questions.first["run_id"] == two_questions.second["run_id"]
    with connect(two_questions.database_url)() as session:
        run = queries.find_run(session, "two-questions")
    assert run is not None and (run.id, run.solves, run.done) == (two_questions.first["run_id"], 2, 2)


def test_solving_a_solved_question_again_under_its_run_name_is_refused_and_leaves_the_run_done(
    two_questions: TwoQuestions, models: list[str]
) -> None:
    url = two_questions.database_url
    result = ttc("solve", QUESTION, *BEAM, *models, "--db", url, "--run-name", "two-questions")

    assert result.exit_code == 2 and "is already solved in run" in error_line(result)
    with connect(url)() as session:
        run = queries.find_run(session, "two-questions")
    assert run is not None and (run.status, run.solves, run.done) == ("done", 2, 2)


def test_trace_problem_option_shows_only_that_problem(two_questions: TwoQuestions) -> None:
    first, second, url = two_questions.first, two_questions.second, two_questions.database_url

    both = ttc("trace", "two-questions", "--db", url)
    only_second = ttc("trace", first["run_id"], "--problem", second["problem_key"], "--db", url)

    assert both.exit_code == 0 and only_second.exit_code == 0, both.output + only_second.output
    assert first["problem_key"] in both.stdout and second["problem_key"] in both.stdout
    assert second["problem_key"] in only_second.stdout
    assert first["problem_key"] not in only_second.stdout


def test_trace_of_an_unknown_run_or_problem_is_refused(two_questions: TwoQuestions) -> None:
    url, run_id = two_questions.database_url, two_questions.first["run_id"]

    assert "no run with id or name 'no-such-run'" in error_line(ttc("trace", "no-such-run", "--db", url))
    assert "has no solve for problem 'no-such-key'" in error_line(
        ttc("trace", run_id, "--problem", "no-such-key", "--db", url)
    )


def test_solve_without_json_prints_answer_spend_and_run_id(two_questions: TwoQuestions, models: list[str]) -> None:
    url = two_questions.database_url
    result = ttc("solve", QUESTION, *BEAM, *models, "--db", url, "--run-name", "plain-output")

    assert result.exit_code == 0, result.output
    assert "answer:" in result.stdout
    assert "of 4 generations" in result.stdout
    with connect(url)() as session:
        run = queries.find_run(session, "plain-output")
    assert run is not None and f"run {run.id}" in result.stdout


# --- ttc runs ------------------------------------------------------------------------------------------


def test_runs_lists_runs_newest_first_with_solves_and_accuracy(two_questions: TwoQuestions, models: list[str]) -> None:
    url = two_questions.database_url
    graded = solve_json(url, models, "--run-name", "graded", "--reference", "3")

    listed = ttc("runs", "--db", url, "--json")
    table = ttc("runs", "--db", url, "--limit", "1")

    assert listed.exit_code == 0 and table.exit_code == 0, listed.output + table.output
    runs = json.loads(listed.stdout)
    assert runs[0]["id"] == graded["run_id"] and runs[0]["name"] == "graded"
    assert [r["created_at"] for r in runs] == sorted((r["created_at"] for r in runs), reverse=True)
    assert (runs[0]["done"], runs[0]["solves"], runs[0]["graded"]) == (1, 1, 1)
    assert runs[0]["accuracy"] == float(graded["correct"])
    [two] = [r for r in runs if r["name"] == "two-questions"]
    assert (two["id"], two["done"], two["solves"], two["accuracy"]) == (two_questions.first["run_id"], 2, 2, None)
    assert graded["run_id"] in table.stdout and two["id"] not in table.stdout


# --- refused input -------------------------------------------------------------------------------------

REFUSALS = {
    "unknown strategy": (["--strategy", "nope"], ["unknown strategy 'nope'", *STRATEGIES]),
    "zero budget": (["--budget", "0"], ["budget"]),
    "beam width not dividing": (
        ["--strategy", "beam", "--budget", "8", "--set", "beam_width=3"],
        ["beam_width", "does not divide"],
    ),
    "missing model path": (["--proposer", "hf:/no/such/dir"], ["/no/such/dir"]),
    # transformers' own message here spans several lines
    "directory without a model": (["--proposer", "hf:{empty}"], ["cannot load a causal LM from {empty}"]),
    "assignment without =": (["--set", "foo"], ["key=value", "'foo'"]),
    "unknown setting": (["--set", "colour=red"], ["colour"]),
    "setting name in brackets": (["--set", "x[/b]=1"], ["x[/b]"]),  # not read as markup
    "bad engine option": (["--strategy", "majority", "--proposer", "hf:{lm}?colour=red"], ["colour"]),
}


@pytest.mark.parametrize(("args", "named"), REFUSALS.values(), ids=REFUSALS.keys())
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    two_questions: TwoQuestions,
    models: list[str],
    tiny_lm: Path,
    tmp_path: Path,
    args: list[str],
    named: list[str],
) -> None:
    # Every refusal happens before the database is opened, so one backend (SQLite) stands for both.
    database_url = two_questions.database_url
    before = row_counts(database_url)
    paths = {"lm": tiny_lm, "empty": tmp_path}

    result = ttc("solve", QUESTION, *models, *[a.format(**paths) for a in args], "--db", database_url, "--json")

    line = error_line(result)
    for word in named:
        assert word.format(**paths) in line
    assert row_counts(database_url) == before


def test_unreachable_database_is_refused_in_one_line(models: list[str]) -> None:
    result = ttc("solve", QUESTION, *BEAM, *models, "--db", "postgresql://postgres@127.0.0.1:5999/x", "--json")

    line = error_line(result)
    assert "cannot reach database" in line
    assert "127.0.0.1:5999" in line


# --- the installed script, end to end ------------------------------------------------------------------


@dataclass
class ScriptRun:
    """`ttc solve --json` running in the background, and the database it writes to."""

    process: subprocess.Popen[str]
    database_url: str

    @cached_property
    def output(self) -> tuple[int, str, str]:
        """Exit status, stdout and stderr, once the script has finished."""
        stdout, stderr = self.process.communicate(timeout=120)
        return self.process.returncode, stdout, stderr


@pytest.fixture(scope="module", autouse=True)
def script_run(tiny_lm: Path, tiny_prm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptRun]:
    """`ttc solve --json` run as a user runs it, with a PRM whose 32-position context is too short, so
    it logs truncation warnings while the solve streams. Started before this module's first test so
    that the script's imports overlap the in-process tests."""
    short_prm = tmp_path_factory.mktemp("short-prm") / "model"
    shutil.copytree(tiny_prm, short_prm)
    config = json.loads((short_prm / "config.json").read_text())
    config["max_position_embeddings"] = 32
    (short_prm / "config.json").write_text(json.dumps(config))
    database_url = f"sqlite:///{tmp_path_factory.mktemp('script-db') / 'ttc.db'}"
    command = [
        TTC_SCRIPT,
        "solve",
        QUESTION,
        *BEAM,
        "--proposer",
        f"hf:{tiny_lm}",
        "--verifier",
        f"hf:{short_prm}",
        "--db",
        database_url,
        "--json",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # as tests/conftest.py sets torch in process
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    ) as process:
        yield ScriptRun(process, database_url)
        process.kill()  # only if a failing test left it running


def test_script_json_output_is_alone_on_stdout_and_logs_go_to_stderr(
    script_run: ScriptRun,
) -> None:
    returncode, stdout, stderr = script_run.output

    assert returncode == 0, stderr
    [line] = stdout.splitlines()
    assert json.loads(line)["generations"] <= 4
    assert "truncated to 32" in stderr


def test_script_trace_renders_the_run_it_solved(script_run: ScriptRun) -> None:
    returncode, stdout, stderr = script_run.output
    assert returncode == 0, stderr
    run_id = json.loads(stdout)["run_id"]

    traced = subprocess.run(
        [TTC_SCRIPT, "trace", run_id, "--db", script_run.database_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert traced.returncode == 0, traced.stderr
    assert "expand" in traced.stdout and "1.0 r1" in traced.stdout


@pytest.mark.parametrize(("chosen", "expected"), [(None, "False"), ("true", "True")])
def test_the_temporary_prefect_server_runs_without_telemetry_unless_asked(chosen: str | None, expected: str) -> None:
    """Its heartbeat only fails offline and races the run's start for the server's SQLite file."""
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    if chosen is not None:
        environment["PREFECT_SERVER_ANALYTICS_ENABLED"] = chosen
    code = "import flows, prefect.settings as s; print(s.get_current_settings().server.analytics_enabled)"
    shown = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == expected
