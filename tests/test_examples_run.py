"""Each example runs as a newcomer runs it (`python examples/NAME.py`, from the repository root, on
the testbed models) and prints its answer; what it solved is in the database it was pointed at."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from db import connect, dispose, queries

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run_example(example: Path, database: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(example.relative_to(ROOT)), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TTC_DATABASE_URL": database, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, f"{example.name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'examples.db'}"
    yield url
    dispose(url)


def test_every_example_says_what_it_shows_and_how_to_run_it() -> None:
    assert {e.name for e in EXAMPLES} >= {"solve_in_python.py", "top_half_majority.py", "custom_node.py"}
    for example in EXAMPLES:
        text = example.read_text()
        assert text.startswith(('"""', 'r"""')), f"{example.name} starts without a docstring"
        assert f".venv/bin/python examples/{example.name}" in text, f"{example.name} does not say how to run it"


def test_solve_in_python_prints_a_graded_answer_and_stores_the_run(database: str) -> None:
    stdout = run_example(ROOT / "examples" / "solve_in_python.py", database)
    assert re.search(r"^answer: \S+ \(correct: (True|False)\)", stdout, flags=re.MULTILINE), stdout
    run_id = re.search(r"^run (\w+):", stdout, flags=re.MULTILINE)
    assert run_id, stdout
    with connect(database)() as session:
        [trace] = queries.trace_of(session, run_id.group(1))
    assert trace.strategy == "best_of_n_weighted" and trace.status == "done" and trace.generations <= 8


def test_custom_node_runs_in_the_graph_and_is_traced_like_the_others(database: str) -> None:
    stdout = run_example(ROOT / "examples" / "custom_node.py", database)
    assert "steps traced: propose → verify → drop_long → select" in stdout, stdout
    assert re.search(r"^answer: \S+ \(correct: (True|False)\)", stdout, flags=re.MULTILINE), stdout
    with connect(database)() as session:
        [run] = queries.runs(session)
        [trace] = queries.trace_of(session, run.id)
    assert trace.strategy == "short_best_of_n"
    [dropping] = [step for step in trace.steps if step.node == "drop_long"]
    assert dropping.detail["max_steps"] == 3 and isinstance(dropping.detail["dropped"], list)


def test_top_half_majority_prints_its_answer(database: str) -> None:
    stdout = run_example(
        ROOT / "examples" / "top_half_majority.py", database, "Compute (12 + 5) * 2 - 3.", "--budget", "4"
    )
    assert re.search(r"^answer \S+ · run \w+", stdout, flags=re.MULTILINE), stdout
