"""`ttc flops`: the FLOPs-matched exchange of Snell et al. 2024, §7 (M + 3(M − 1)/R generations for a
model M times larger), and the per-bin comparison of a small model's runs with a larger model's run,
read from a real database."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from typer.testing import CliRunner

from db import Recorder, connect
from flows.cli import app
from flows.policy.flops import exchange, flops_multiplier, nearest_budget, parse_ratios

PAPER = ["--small-params", "1e9", "--large-params", "14e9", "--pretrain-tokens", "1e12"]


def ttc(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_the_paper_example_reports_the_multiplier_63_37() -> None:
    result = ttc("flops", *PAPER, "--inference-ratio", "0.79", "--json")

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["ratios"]
    assert row["multiplier"] == 63.37  # 14 + 39/0.79
    assert row["matched_budget"] == 64
    assert row["inference_tokens"] == pytest.approx(0.79e12)


def test_the_papers_three_ratios_give_about_256_64_and_16_generations() -> None:
    assert [exchange(1e9, 14e9, 1e12, r).matched_budget for r in (0.16, 0.79, 22)] == [256, 64, 16]
    assert flops_multiplier(14, 22) == pytest.approx(14 + 39 / 22)


def test_the_matched_small_model_spends_exactly_the_larger_models_total_flops() -> None:
    for ratio in (0.01, 0.5, 3.0, 100.0):
        matched = exchange(7e8, 9e9, 2e12, ratio)
        large = 6 * 9e9 * 2e12 + 2 * 9e9 * ratio * 2e12
        assert matched.large_total_flops == pytest.approx(large)
        assert matched.matched_small_total_flops == pytest.approx(large)


def test_the_multiplier_falls_towards_m_as_inference_dominates() -> None:
    values = [flops_multiplier(14, r) for r in (0.1, 1, 10, 1000)]
    assert values == sorted(values, reverse=True)
    assert values[-1] == pytest.approx(14, abs=0.05)


def test_nearest_budget_is_nearest_on_a_log_scale_and_the_smaller_on_a_tie() -> None:
    assert nearest_budget(63.37) == 64
    assert nearest_budget(45) == 32  # log2 45 = 5.49
    assert nearest_budget(46) == 64
    assert nearest_budget(math.sqrt(2) * 8, [8, 16]) == 8
    assert nearest_budget(100, [1, 4, 16]) == 16
    assert nearest_budget(0.5) == 1


def test_the_table_names_each_ratio_with_its_multiplier_and_budget() -> None:
    result = ttc("flops", *PAPER, "--inference-ratio", "0.16,0.79,22")

    assert result.exit_code == 0, result.output
    for shown in ("257.75", "63.37", "15.77", "256", "64", "16"):
        assert shown in result.stdout


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (["--small-params", "0"], "--small-params must be a positive"),
        (["--small-params", "-1e9"], "--small-params must be a positive"),
        (["--large-params", "0"], "--large-params must be a positive"),
        (["--large-params", "1e9"], "must be larger than --small-params"),
        (["--pretrain-tokens", "0"], "--pretrain-tokens must be a positive"),
        (["--inference-ratio", "0.5,0"], "an inference ratio R must be positive"),
        (["--inference-ratio", "a lot"], "comma-separated numbers"),
    ],
)
def test_bad_numbers_are_refused_in_one_line_with_exit_status_2(changed: list[str], message: str) -> None:
    arguments = dict(zip(PAPER[::2], PAPER[1::2], strict=True)) | dict(zip(changed[::2], changed[1::2], strict=True))
    result = ttc("flops", *[part for pair in arguments.items() for part in pair], *changed[2:])

    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_parse_ratios_reads_a_comma_list() -> None:
    assert parse_ratios("0.16, 0.79,22") == [0.16, 0.79, 22.0]


# --- the comparison, on runs recorded in a real database -------------------------------------------


def record_run(
    recorder: Recorder, name: str, proposer: str, strategy: str, budget: int, verdicts: dict[int, list[bool]]
) -> str:
    """A finished run: for each bin, one graded solve per verdict (problem keys shared across runs)."""
    run_id = recorder.open_run(name, {"proposer": proposer, "strategy": strategy, "budget": budget})
    for bin_, outcomes in verdicts.items():
        for index, correct in enumerate(outcomes):
            problem = recorder.problem("toy", f"b{bin_}-{index}", f"question {bin_}.{index}", "1", {"bin": bin_})
            solve = recorder.start_solve(run_id, problem, strategy, {}, budget)
            recorder.finish_solve(
                solve,
                answer="1" if correct else "2",
                correct=correct,
                generations=budget,
                tokens=10 * budget,
                flops=1.0,
                seconds=0.1,
                detail={},
            )
    recorder.close_run(run_id)
    return run_id


@pytest.fixture
def runs(database_url: str) -> str:
    recorder = Recorder(connect(database_url))
    # Bin 1 (easy): the small model at 16 beats the larger one; bin 2 (hard): the larger model wins.
    record_run(recorder, "small-4", "small", "best_of_n_weighted", 4, {1: [True, False, False], 2: [False] * 3})
    record_run(recorder, "small-16", "small", "best_of_n_weighted", 16, {1: [True, True, True], 2: [False] * 3})
    record_run(recorder, "large-1", "large", "majority", 1, {1: [True, True, False], 2: [True, False, False]})
    record_run(recorder, "same", "small", "majority", 1, {1: [True, True, False]})
    return database_url


def test_each_bin_is_won_by_test_time_compute_or_the_larger_model(runs: str) -> None:
    result = ttc(
        "flops",
        *PAPER,
        "--inference-ratio",
        "22,1000",
        "--run",
        "small-4",
        "--run",
        "small-16",
        "--large-run",
        "large-1",
        "--db",
        runs,
        "--json",
    )

    assert result.exit_code == 0, result.output
    rows = {(c["inference_ratio"], c["bin"]): c for c in json.loads(result.stdout)["comparison"]}
    # R = 22: 15.8 generations → the run at N = 16; R = 1000: 14.04 → still 16 (log-nearest of 4 and 16).
    assert {key: row["small_budget"] for key, row in rows.items()} == {
        (r, b): 16 for r in (22.0, 1000.0) for b in ("1", "2", "all")
    }
    assert rows[(22.0, "1")]["winner"] == "test-time compute"
    assert rows[(22.0, "1")]["small_accuracy"] == 1.0
    assert rows[(22.0, "1")]["large_accuracy"] == pytest.approx(2 / 3)
    assert rows[(22.0, "2")]["winner"] == "larger model"
    assert rows[(22.0, "all")]["small_accuracy"] == pytest.approx(0.5)
    assert rows[(22.0, "all")]["large_accuracy"] == pytest.approx(0.5)
    assert rows[(22.0, "all")]["winner"] == "tie"


def test_a_large_budget_of_tokens_picks_the_small_run_nearest_the_matched_budget(runs: str) -> None:
    # M = 2: 2 + 3/R; at R = 1 that is 5 generations, nearest (log scale) to the run at N = 4.
    result = ttc(
        "flops",
        "--small-params",
        "1e9",
        "--large-params",
        "2e9",
        "--pretrain-tokens",
        "1e12",
        "--inference-ratio",
        "1",
        "--run",
        "small-4",
        "--run",
        "small-16",
        "--large-run",
        "large-1",
        "--db",
        runs,
        "--json",
    )

    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)["comparison"]
    assert {c["small_budget"] for c in comparison} == {4}
    assert {c["bin"]: c["winner"] for c in comparison}["1"] == "larger model"


@pytest.mark.parametrize(
    ("runs_given", "message"),
    [
        (["--run", "small-4"], "needs a run of the larger model"),
        (["--large-run", "large-1"], "--large-run needs --run"),
        (["--run", "nope", "--large-run", "large-1"], "no run with id or name 'nope'"),
        (["--run", "small-4", "--large-run", "same"], "used the same proposer"),
    ],
)
def test_comparisons_without_a_larger_models_run_are_refused(runs: str, runs_given: list[str], message: str) -> None:
    result = ttc("flops", *PAPER, *runs_given, "--db", runs)

    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_run_without_graded_solves_is_refused(database_url: str) -> None:
    recorder = Recorder(connect(database_url))
    run_id = recorder.open_run("ungraded", {"proposer": "small"})
    problem = recorder.problem("toy", "k", "q", None, {})
    solve = recorder.start_solve(run_id, problem, "majority", {}, 1)
    recorder.finish_solve(solve, answer="1", correct=None, generations=1, tokens=1, flops=1.0, seconds=0.1, detail={})

    result = ttc("flops", *PAPER, "--run", "ungraded", "--large-run", "ungraded", "--db", database_url)

    assert result.exit_code == 2
    assert "has no graded solves" in result.stderr
