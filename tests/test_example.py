"""The custom-strategy example: a few lines with our nodes, registered, run and traced like a
built-in strategy — both imported and as the script a user runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from db import queries
from db.session import connect
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from graphs import registry
from ttc_nodes.answers import group_answers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "top_half_majority.py"


def load_example():
    spec = importlib.util.spec_from_file_location("top_half_majority", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_registered_example_runs_and_is_traced_like_a_built_in(tiny_lm, tiny_prm, database_url):
    load_example()
    assert "top_half_majority" in registry.names()
    models = ModelSettings(proposer=f"hf:{tiny_lm}", verifier=f"hf:{tiny_prm}", seed=3)
    outcome = solve_question(
        "What is 2+2?",
        strategy="top_half_majority",
        values={"budget": 8, "max_answer_tokens": 24, "temperature": 1.3},
        models=models,
        database=database_url,
    )
    assert outcome.spend.generations <= 8
    with connect(database_url)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
    assert [s.node for s in trace.steps] == ["propose", "verify", "keep_top", "select"]
    kept = next(s for s in trace.steps if s.node == "keep_top").detail["kept"]
    scores = {s.candidate_key: s.value for s in trace.scores}
    assert len(kept) == 4
    assert min(scores[k] for k in kept) >= max(v for k, v in scores.items() if k not in kept)
    answers = {c.key: c.answer for c in trace.candidates}
    voters = [answers[k] for k in kept if answers[k] is not None]
    if voters:
        counts = Counter(group_answers(voters))
        winner_group = group_answers([*voters, outcome.answer])[-1]
        assert counts[winner_group] == max(counts.values())


def test_example_script_runs_from_the_command_line(tiny_lm, tiny_prm, tmp_path):
    env = {**os.environ, "TTC_PROPOSER": f"hf:{tiny_lm}", "TTC_VERIFIER": f"hf:{tiny_prm}"}
    database = f"sqlite:///{tmp_path / 'example.db'}"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "What is 2+2?", "--budget", "4", "--db", database],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("run ")[1].split()[0]
    with connect(database)() as session:
        [trace] = queries.trace_of(session, run_id)
    assert trace.strategy == "top_half_majority" and trace.status == "done"
