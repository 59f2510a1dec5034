"""The Prefect flows for real: evaluate (fixed plan, resume, policy, total budget) and calibrate,
on tiny transformers models, traced into SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from db import queries
from db.session import connect
from flows.pipelines.calibrate import calibrate
from flows.pipelines.evaluate import evaluate, wilson
from flows.policy import Policy


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    lines = [
        {
            "question": f"Tom has {a} apples and buys {b} more. How many?",
            "answer": f"{a}+{b}=<<{a}+{b}={a + b}>>\n#### {a + b}",
        }
        for a, b in [(1, 2), (2, 1), (3, 0), (1, 1), (2, 2), (0, 3), (1, 0), (3, 3)]
    ]
    path = tmp_path / "tiny_gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return f"jsonl:{path}"


@pytest.fixture
def models(tiny_lm, tiny_prm) -> dict:
    return {"proposer": f"hf:{tiny_lm}", "verifier": f"hf:{tiny_prm}", "reviser": f"hf:{tiny_lm}", "seed": 5}


def solves_of(database_url: str, run_id: str):
    with connect(database_url)() as session:
        return queries.trace_of(session, run_id)


def test_wilson_interval_contains_the_estimate_and_narrows_with_more_data():
    low, high = wilson(30, 100)
    assert low < 0.3 < high
    assert wilson(300, 1000)[1] - wilson(300, 1000)[0] < high - low
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def test_evaluate_solves_every_prompt_once_and_resumes_without_duplicates(dataset, models, database_url, tmp_path):
    summary_file = tmp_path / "summary.json"
    first = evaluate(
        dataset=dataset,
        strategy="best_of_n_weighted",
        budget=2,
        settings={"max_answer_tokens": 12},
        models=models,
        database=database_url,
        run_name="eval-resume",
        limit=5,
        summary=str(summary_file),
    )
    assert first["done"] == 5 and first["failed"] == 0
    assert first["generations"] <= 5 * 2
    assert json.loads(summary_file.read_text())["run_id"] == first["run_id"]
    low, high = first["accuracy_ci95"]
    assert low <= (first["accuracy"] or 0.0) <= high
    again = evaluate(
        dataset=dataset,
        strategy="best_of_n_weighted",
        budget=2,
        settings={"max_answer_tokens": 12},
        models=models,
        database=database_url,
        run_name="eval-resume",
        limit=7,
    )
    assert again["run_id"] == first["run_id"] and again["done"] == 7
    traces = solves_of(database_url, first["run_id"])
    assert sorted(t.problem.key for t in traces) == sorted({t.problem.key for t in traces})
    assert len(traces) == 7


def test_calibrate_then_evaluate_with_the_policy_at_a_budget_or_a_total_budget(dataset, models, database_url, tmp_path):
    out = tmp_path / "policy.json"
    report = calibrate(
        dataset=dataset,
        budgets=[1, 2, 4],
        plans=["best_of_n_weighted", "majority", "beam M=sqrt"],
        out=str(out),
        difficulty_samples=2,
        subsets=4,
        bins=2,
        models={**models},
        database=database_url,
        run_name="calib",
        limit=6,
        settings={"max_answer_tokens": 24},
        summary=str(tmp_path / "calibration.json"),
    )
    policy = Policy.load(out)
    assert report["prompts"] == 6 and len(policy.thresholds) == 1
    assert json.loads((tmp_path / "calibration.json").read_text())["policy"] == "calib"
    assert policy.plans["majority"].settings == {"max_answer_tokens": 24}
    with connect(database_url)() as session:
        assert queries.policy(session, "calib") is not None
    assert {row["budget"] for row in report["curve"]} == {1, 2, 4}
    # Each plan is charged what its solves spent in the database; a pool plan spends its N.
    with connect(database_url)() as session:
        for n in (1, 2, 4):
            searched = queries.find_run(session, f"calib/beam M=sqrt/{n}")
            assert searched is not None
            spent = {o.problem_key: o.generations for o in queries.solve_outcomes(session, searched.id)}
            for b, by_budget in policy.fit.plan_spend.items():
                members = [k for k, kb in policy.fit.bins.items() if kb == b]
                assert by_budget[n]["beam M=sqrt"] == pytest.approx(sum(spent[k] for k in members) / len(members))
                assert by_budget[n]["majority"] == n
    assert all(row["compute_optimal_spend"] <= row["budget"] for row in report["curve"])
    plot = tmp_path / "policy.png"
    assert report["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    at_budget = evaluate(
        dataset=dataset, policy=str(out), budget=2, models=models, database=database_url, run_name="co", limit=4
    )
    assert at_budget["done"] == 4
    assert at_budget["generations_with_difficulty"] == at_budget["generations"] + 4 * 2
    traces = solves_of(database_url, at_budget["run_id"])
    assert all("bin" in t.detail and t.budget <= 2 for t in traces)

    # Run again: every difficulty estimate is read back from the database, none is sampled again.
    again = evaluate(
        dataset=dataset, policy=str(out), budget=2, models=models, database=database_url, run_name="co", limit=4
    )
    assert again["run_id"] == at_budget["run_id"] and again["done"] == 4
    assert again["generations_with_difficulty"] == at_budget["generations_with_difficulty"]
    difficulty_runs = {t.detail["difficulty_run"] for t in traces}
    assert len(difficulty_runs) == 1
    [difficulty_run] = difficulty_runs
    with connect(database_url)() as session:
        estimates = queries.trace_of(session, difficulty_run)
    assert len(estimates) == 4 and all(t.status == "done" for t in estimates)

    # Another evaluation of the same prompts with the same engines and K reads the same estimates:
    # nothing is sampled again, and the summary still charges what they cost.
    other = evaluate(
        dataset=dataset, policy=str(out), budget=4, models=models, database=database_url, run_name="co4", limit=4
    )
    assert other["done"] == 4
    assert other["difficulty_cost"] == at_budget["difficulty_cost"]
    with connect(database_url)() as session:
        assert len(queries.trace_of(session, difficulty_run)) == 4
        assert {t.detail["difficulty_run"] for t in queries.trace_of(session, other["run_id"])} == {difficulty_run}
    # A different seed is a different estimate.
    reseeded = evaluate(
        dataset=dataset,
        policy=str(out),
        budget=2,
        models={**models, "seed": 6},
        database=database_url,
        run_name="co-seed6",
        limit=2,
    )
    assert {t.detail["difficulty_run"] for t in solves_of(database_url, reseeded["run_id"])} != {difficulty_run}

    total = evaluate(
        dataset=dataset,
        policy=str(out),
        total_budget=10,
        models=models,
        database=database_url,
        run_name="co-total",
        limit=4,
    )
    assert total["done"] == 4 and total["generations"] <= 10
