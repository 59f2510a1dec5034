"""The reproduction: its headline maths (pure, with brute-force checks and fixed seeds) and the
`reproduce` flow end to end on a tiny testbed recipe, resumed, and refused on bad recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect.testing.utilities import prefect_test_harness
from sqlalchemy import func, select
from typer.testing import CliRunner

from db import queries
from db.models import Solve
from db.session import connect
from flows.cli import app
from flows.pipelines.reproduce import SCALES, Recipe, RecipeError, prepare, reproduce
from flows.policy import headline

KEYS = [f"p{i}" for i in range(8)]


def table(values: list[float]) -> dict[str, float]:
    return dict(zip(KEYS, values, strict=True))


def test_efficiency_is_the_baseline_budget_over_what_compute_optimal_spent_where_it_matched() -> None:
    baseline = {4: table([1, 0, 0, 0, 1, 0, 0, 0]), 16: table([1, 1, 1, 0, 1, 1, 0, 0])}
    optimal = {1: table([1, 0, 0, 0, 0, 0, 0, 0]), 4: table([1, 1, 1, 0, 1, 0, 0, 0])}
    spend = {1: table([1.0] * 8), 4: table([4, 4, 4, 4, 2, 2, 2, 2])}
    estimate = table([2.0] * 8)
    rows = headline.efficiency(baseline, optimal, spend, estimate, resamples=200)
    at4, at16 = rows
    assert at4["matching_budget"] == 4 and at16["matching_budget"] is None
    assert at4["efficiency"]["value"] == pytest.approx(4 / 3.0)  # mean spend at N=4 is 3
    assert at4["efficiency_with_difficulty"]["value"] == pytest.approx(4 / 5.0)
    low, high = at4["efficiency"]["ci95"]
    assert low <= at4["efficiency"]["value"] <= high
    # Not matched on these prompts; some resamples do match, and the share that does not is reported.
    assert at16["efficiency"]["value"] is None and 0.0 < at16["efficiency"]["undefined"] < 1.0
    assert headline.efficiency(baseline, optimal, spend, estimate, resamples=200) == rows  # seeded


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=4, max_size=30), st.integers(0, 100))
def test_the_interval_of_a_mean_holds_the_mean_and_is_reproducible(values: list[int], seed: int) -> None:
    keys = [f"k{i}" for i in range(len(values))]
    by_key = dict(zip(keys, map(float, values), strict=True))
    cell = headline.interval(lambda s: headline.mean_over(by_key, s), keys, seed=seed, resamples=100)
    assert cell["value"] == pytest.approx(sum(values) / len(values))
    low, high = cell["ci95"]
    assert 0.0 <= low <= cell["value"] + 1e-12 and cell["value"] - 1e-12 <= high <= 1.0
    assert headline.interval(lambda s: headline.mean_over(by_key, s), keys, seed=seed, resamples=100) == cell


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(1, 3)), min_size=3, max_size=24))
def test_differences_by_bin_are_the_brute_force_means(rows: list[tuple[int, int, int]]) -> None:
    keys = [f"k{i}" for i in range(len(rows))]
    first = {4: {k: float(a) for k, (a, _, _) in zip(keys, rows, strict=True)}}
    second = {4: {k: float(b) for k, (_, b, _) in zip(keys, rows, strict=True)}}
    bins = {k: b for k, (_, _, b) in zip(keys, rows, strict=True)}
    for row in headline.difference_by_bin(first, second, bins, resamples=50):
        members = [i for i, (_, _, b) in enumerate(rows) if b == row["bin"]]
        expected = sum(rows[i][0] - rows[i][1] for i in members) / len(members)
        assert row["prompts"] == len(members) and row["difference"]["value"] == pytest.approx(expected)


def test_the_best_ratio_per_bin_is_the_argmax_and_ties_go_to_the_more_sequential() -> None:
    bins = {k: 1 if i < 4 else 2 for i, k in enumerate(KEYS)}
    ratios = {
        0.25: {16: table([0, 0, 1, 0, 1, 1, 1, 0])},  # bin 1: 1/4, bin 2: 3/4
        4.0: {16: table([1, 1, 1, 0, 1, 0, 0, 0])},  # bin 1: 3/4, bin 2: 1/4
        16.0: {16: table([1, 1, 0, 1, 0, 1, 1, 1])},  # bin 1: 3/4 (tie with 4, more sequential), bin 2: 3/4
    }
    easy, hard = headline.best_ratio_by_bin(ratios, bins, 16, resamples=200)
    assert easy["best_ratio"] == 16.0 and hard["best_ratio"] == 16.0
    assert easy["accuracy"] == {0.25: 0.25, 4.0: 0.75, 16.0: 0.75}
    assert sum(easy["best_share"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no revision ratio was run at budget 64"):
        headline.best_ratio_by_bin(ratios, bins, 64)


# The flow, on a tiny recipe


def tiny(**changes: object) -> Recipe:
    values = {
        "name": "tiny",
        "calibration": "testbed:arith?n=28&seed=5&distinct=true",
        "test": "testbed:arith?n=28&seed=5&distinct=true",
        "calibration_shard": "0/2",
        "test_shard": "1/2",
        "calibration_limit": 12,
        "test_limit": 8,
        "budgets": [1, 2],
        "plans": ["best_of_n_weighted", "majority", "beam M=sqrt", "revisions sequential", "revisions parallel"],
        "bins": 2,
        "difficulty_samples": 2,
        "subsets": 4,
        "resamples": 50,
        "settings": {"max_answer_tokens": 48},
    }
    return Recipe.model_validate({**values, **changes})


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def solve_count(database_url: str) -> int:
    with connect(database_url)() as session:
        return session.scalar(select(func.count()).select_from(Solve)) or 0


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_reproduce_writes_the_headline_the_database_holds_and_resumes(prefect_server, database_url, tmp_path):
    recipe = tiny()
    out = tmp_path / "out"
    result = reproduce(recipe=recipe.model_dump(mode="json"), out=str(out), database=database_url)
    written = json.loads((out / "headline.json").read_text())
    assert written["prompts"] == {"calibration": 12, "test": 8}
    assert set(written["efficiency"]) == {"compute-optimal (predicted)", "compute-optimal (oracle)"}
    assert [row["budget"] for row in written["efficiency"]["compute-optimal (oracle)"]] == [1, 2]
    assert (out / "policy-predicted.json").exists() and (out / "policy-oracle.json").exists()
    for page in ("report.html", "calibration.html"):
        assert (out / page).read_text().startswith("<!DOCTYPE html>")
    # The baseline's test accuracy is what its runs hold.
    with connect(database_url)() as session:
        for n in (1, 2):
            run = queries.find_run(session, f"tiny/test/best_of_n_weighted/{n}")
            assert run is not None
            done = [o for o in queries.solve_outcomes(session, run.id) if o.status == "done"]
            assert len(done) == 8
            assert written["test_accuracy"]["best_of_n_weighted"][str(n)] == pytest.approx(
                sum(bool(o.correct) for o in done) / 8
            )
    assert {row["bin"] for row in written["beam_vs_best_of_n"]} <= {1, 2}
    ratio_rows = written["revision_ratio"]
    assert all(set(r["accuracy"]) == {"0.5", "2.0"} for r in ratio_rows)  # N=2: 1 chain of 2, or 2 of 1
    assert "4x fewer" in written["paper"]["efficiency"]

    # Run again: every run resumes by name, nothing is solved twice, the headline is the same.
    solves = solve_count(database_url)
    again = reproduce(recipe=recipe.model_dump(mode="json"), out=str(out), database=database_url)
    assert solve_count(database_url) == solves
    assert again["efficiency"] == result["efficiency"] and again["test_accuracy"] == result["test_accuracy"]


def test_a_recipe_is_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"shares .* question"):
        prepare(tiny(test="testbed:arith?n=28&seed=5&distinct=true", test_shard="0/2"))
    with pytest.raises(ValueError, match="plans must include 'best_of_n_weighted'"):
        tiny(plans=["majority"])
    with pytest.raises(ValueError, match="budgets must be positive, ascending"):
        tiny(budgets=[4, 1])
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nbudgets: [1]\n")
    with pytest.raises(RecipeError, match=r"recipe .* is not valid: calibration: Field required"):
        Recipe.load(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read recipe"),
        ("[1, 2]\n", "must be a mapping of fields"),
        ("name: [\n", "is not YAML"),
        ("name: x\nbudgets: [1]\nplans: [majority]\ncalibration: a\ntest: b\n", "plans must include"),
        ("name: x\nbudgets: [1]\nplans: [best_of_n_weighted]\ncalibration: a\ntest: b\nflavour: 1\n", "flavour"),
    ],
)
def test_ttc_reproduce_refuses_a_bad_recipe_in_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["reproduce", "--recipe", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_shipped_recipes_load_and_the_testbed_ones_match_the_scales() -> None:
    root = Path(__file__).resolve().parent.parent / "recipes"
    loaded = {path.stem: Recipe.load(path) for path in sorted(root.glob("*.yaml"))}
    assert loaded["testbed-quick"] == SCALES["quick"] and loaded["testbed-full"] == SCALES["full"]
    assert all(r.proposer and r.verifier for name, r in loaded.items() if not name.startswith("testbed"))
