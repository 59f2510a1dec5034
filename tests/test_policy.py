"""The compute-optimal policy: difficulty bins, θ*(bin, N) by cross-validation, budget allocation."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.policy import (
    Allocation,
    Plan,
    Policy,
    PolicyFileError,
    allocate,
    assign_bin,
    fit_policy,
    fold_assignment,
    predicted_difficulty,
    quantile_thresholds,
)

# Outcomes and accuracies on a dyadic grid add up exactly, so brute force and the code agree bit for bit.
dyadic = st.integers(0, 8).map(lambda k: k / 8)


# Difficulty bins


def test_distinct_values_fall_into_five_equal_quintiles_easiest_first() -> None:
    values = [float(v) for v in np.random.default_rng(0).permutation(50)]
    thresholds = quantile_thresholds(values)
    assert len(thresholds) == 4
    bins = {v: assign_bin(v, thresholds) for v in values}
    assert sorted(bins.values()) == [b for b in range(1, 6) for _ in range(10)]
    assert {bins[v] for v in range(40, 50)} == {1}  # highest pass@1 is the easiest bin
    assert {bins[v] for v in range(10)} == {5}


def test_predicted_difficulty_is_the_mean_score_of_the_scored_samples_and_zero_without_any() -> None:
    assert predicted_difficulty([0.25, None, 0.75]) == 0.5
    assert predicted_difficulty([None, None]) == 0.0 and predicted_difficulty([]) == 0.0


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60, unique=True), st.integers(1, 8))
def test_distinct_values_fill_bins_within_one_of_each_other(values: list[float], bins: int) -> None:
    thresholds = quantile_thresholds(values, bins)
    assert thresholds == sorted(thresholds) and len(thresholds) == bins - 1
    # The cut points are numpy's inverse-CDF quantiles.
    assert thresholds == [float(np.quantile(values, i / bins, method="inverted_cdf")) for i in range(1, bins)]
    sizes = [sum(assign_bin(v, thresholds) == b for v in values) for b in range(1, bins + 1)]
    assert sum(sizes) == len(values)
    assert set(sizes) <= {len(values) // bins, -(-len(values) // bins)}


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.floats(0, 1), st.floats(0, 1))
def test_bins_are_monotone_and_total(values: list[float], low: float, high: float) -> None:
    thresholds = quantile_thresholds(values)
    low, high = min(low, high), max(low, high)
    assert 1 <= assign_bin(high, thresholds) <= assign_bin(low, thresholds) <= 5


def test_a_value_on_a_cut_point_goes_to_the_harder_bin() -> None:
    assert assign_bin(0.5, [0.25, 0.5, 0.75]) == 3
    assert assign_bin(0.5000001, [0.25, 0.5, 0.75]) == 2


def test_constant_values_all_land_in_one_bin() -> None:
    thresholds = quantile_thresholds([0.3] * 17)
    assert thresholds == [0.3] * 4
    assert {assign_bin(0.3, thresholds)} == {5}


def test_binning_refuses_nothing_and_nan() -> None:
    with pytest.raises(ValueError, match="no values"):
        quantile_thresholds([])
    with pytest.raises(ValueError, match="NaN"):
        quantile_thresholds([0.1, math.nan])
    with pytest.raises(ValueError, match="NaN"):
        assign_bin(math.nan, [0.5])


# Fitting θ*(bin, N)


def test_folds_are_balanced_per_bin_and_seeded() -> None:
    bins = {f"p{i}": 1 + i % 3 for i in range(31)}
    folds = fold_assignment(bins, seed=3)
    for b in (1, 2, 3):
        sizes = [sum(1 for k in bins if bins[k] == b and folds[k] == f) for f in (0, 1)]
        assert abs(sizes[0] - sizes[1]) <= 1
    assert fold_assignment(bins, seed=3) == folds
    assert fold_assignment(bins, seed=4) != folds
    # A bin's split ignores the other bins.
    only_bin_2 = {k: b for k, b in bins.items() if b == 2}
    assert fold_assignment(only_bin_2, seed=3) == {k: folds[k] for k in only_bin_2}


def test_fit_picks_the_argmax_per_bin_budget_and_fold() -> None:
    bins = {f"e{i}": 1 for i in range(4)} | {f"h{i}": 2 for i in range(4)}
    outcomes: dict[tuple[str, str, int], float] = {}
    for key, budget in itertools.product(bins, (4, 16)):
        easy = key.startswith("e")
        outcomes[(key, "best_of_n_weighted", budget)] = 1.0 if easy else 0.0
        outcomes[(key, "beam M=4", budget)] = 0.5 if easy else (1.0 if budget == 16 else 0.25)
    fit = fit_policy(outcomes, bins)
    assert fit.choices == {1: {4: "best_of_n_weighted", 16: "best_of_n_weighted"}, 2: {4: "beam M=4", 16: "beam M=4"}}
    assert fit.fold_choices[1][4] == ["best_of_n_weighted", "best_of_n_weighted"]
    assert fit.fold_choices[2][16] == ["beam M=4", "beam M=4"]
    assert fit.cv_accuracy == {1: {4: 1.0, 16: 1.0}, 2: {4: 0.25, 16: 1.0}}
    assert fit.plan_accuracy[2][4] == {"beam M=4": 0.25, "best_of_n_weighted": 0.0}
    assert fit.overall(16) == 1.0
    assert fit.overall(4) == 0.625
    assert fit.baseline("best_of_n_weighted", 16) == 0.5
    with pytest.raises(ValueError, match="budget 8 was not calibrated"):
        fit.overall(8)


def test_ties_go_to_the_first_label_in_sorted_order() -> None:
    bins = {"a": 1, "b": 1}
    outcomes = {(p, label, 1): 1.0 for p in bins for label in ("z", "m", "q")}
    fit = fit_policy(outcomes, bins)
    assert fit.choices[1][1] == "m"
    assert fit.fold_choices[1][1] == ["m", "m"]


def test_of_equally_accurate_plans_the_one_that_spent_less_wins_and_its_spend_is_reported() -> None:
    # "stop" reaches the same accuracy as "full" but stops early: 4 of 16 generations on easy prompts.
    bins = {f"e{i}": 1 for i in range(4)} | {f"h{i}": 2 for i in range(4)}
    outcomes = {(p, lb, 16): float(p.startswith("e")) for p in bins for lb in ("full", "stop")}
    spend = {(p, "stop", 16): 4.0 if p.startswith("e") else 16.0 for p in bins}
    fit = fit_policy(outcomes, bins, spend=spend)
    assert fit.choices == {1: {16: "stop"}, 2: {16: "full"}}  # bin 2: a tie on spend too, so by label
    assert fit.plan_spend[1][16] == {"full": 16.0, "stop": 4.0}
    assert fit.cv_spend == {1: {16: 4.0}, 2: {16: 16.0}}
    assert fit.overall_spend(16) == 10.0  # half the prompts at 4, half at 16
    assert fit.overall(16) == 0.5
    # Without spend every cell spent its budget, as before: the tie goes to the label.
    plain = fit_policy(outcomes, bins)
    assert plain.choices[1][16] == "full" and plain.overall_spend(16) == 16.0


def test_a_spend_outside_zero_to_the_budget_is_refused() -> None:
    bins = {"a": 1, "b": 1}
    outcomes = {(p, "x", 4): 1.0 for p in bins}
    with pytest.raises(ValueError, match=r"spend must lie in \[0, N\]; 1 do not, e.g. \('a', 'x', 4\) spent 5.0"):
        fit_policy(outcomes, bins, spend={("a", "x", 4): 5.0})
    with pytest.raises(ValueError, match="spend must lie"):
        fit_policy(outcomes, bins, spend={("b", "x", 4): -1.0})


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_cv_spend_is_the_held_out_spend_of_the_fold_choices_and_never_above_the_budget(data: st.DataObject) -> None:
    n_problems = data.draw(st.integers(2, 8))
    bins = {f"p{i}": 1 for i in range(n_problems)}
    labels = ["a", "b", "c"]
    outcomes = {(p, lb, 8): data.draw(dyadic) for p in bins for lb in labels}
    spend = {cell: float(data.draw(st.integers(0, 8))) for cell in outcomes}
    fit = fit_policy(outcomes, bins, spend=spend)
    held_out = [spend[(p, fit.fold_choices[1][8][fit.folds[p]], 8)] for p in bins]
    assert fit.cv_spend[1][8] == math.fsum(held_out) / len(held_out)
    assert 0.0 <= fit.overall_spend(8) <= 8.0
    for fold, choice in enumerate(fit.fold_choices[1][8]):
        training = [p for p in bins if fit.folds[p] != fold]

        def key(lb: str, training: list[str] = training) -> tuple[float, float, str]:
            return (-sum(outcomes[(p, lb, 8)] for p in training), sum(spend[(p, lb, 8)] for p in training), lb)

        assert choice == min(labels, key=key)  # accuracy first, then spend, then label


def test_each_fold_is_scored_with_the_choice_fitted_on_the_other() -> None:
    # A is perfect on fold 0 only, B on fold 1 only: the fold-1 fit picks B, which scores 0 on fold 0,
    # and the other way round. In-sample, either plan looks half right; a per-fold oracle would be perfect.
    bins = {f"p{i}": 1 for i in range(10)}
    folds = fold_assignment(bins, seed=7)
    outcomes = {
        (key, label, 8): float(folds[key] == (0 if label == "A" else 1)) for key in bins for label in ("A", "B")
    }
    fit = fit_policy(outcomes, bins, seed=7)
    assert fit.folds == folds
    assert fit.fold_choices[1][8] == ["B", "A"]
    assert fit.cv_accuracy[1][8] == 0.0
    assert fit.plan_accuracy[1][8] == {"A": 0.5, "B": 0.5}


def test_a_plan_missing_a_problem_is_not_eligible_in_its_bin() -> None:
    bins = {"a": 1, "b": 1, "c": 2, "d": 2}
    outcomes = {(p, "full", 2): 0.5 for p in bins} | {(p, "holey", 2): 1.0 for p in ("a", "c", "d")}
    fit = fit_policy(outcomes, bins)
    assert fit.choices == {1: {2: "full"}, 2: {2: "holey"}}
    assert "holey" not in fit.plan_accuracy[1][2]
    with pytest.raises(ValueError, match=r"plan 'holey' has no complete outcomes at N=2 in bins \[1\]"):
        fit.baseline("holey", 2)


def test_fit_refuses_what_it_cannot_cross_validate() -> None:
    bins = {"a": 1, "b": 1}
    with pytest.raises(ValueError, match="no plan has outcomes for all 2 problems of bin 1 at N=4"):
        fit_policy({("a", "x", 4): 1.0, ("b", "y", 4): 1.0}, bins)
    with pytest.raises(ValueError, match="bin 1 has 2 problems, fewer than the 3 folds"):
        fit_policy({("a", "x", 4): 1.0, ("b", "x", 4): 1.0}, bins, folds=3)
    with pytest.raises(ValueError, match=r"without a bin: \['c'\]"):
        fit_policy({("c", "x", 4): 1.0}, bins)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        fit_policy({("a", "x", 4): 2.0, ("b", "x", 4): 1.0}, bins)


@st.composite
def tables(draw: st.DrawFn) -> tuple[dict[tuple[str, str, int], float], dict[str, int], int]:
    folds = draw(st.integers(2, 3))
    bins = {f"p{i}": draw(st.integers(1, 3)) for i in range(draw(st.integers(9, 18)))}
    sizes = Counter(bins.values())
    largest = sizes.most_common(1)[0][0]
    bins = {k: (b if sizes[b] >= folds else largest) for k, b in bins.items()}
    labels = draw(st.lists(st.sampled_from("ABCDE"), min_size=1, max_size=4, unique=True))
    budgets = draw(st.lists(st.sampled_from([1, 4, 16]), min_size=1, max_size=2, unique=True))
    outcomes = {(p, lb, n): draw(dyadic) for p in bins for lb in labels for n in budgets}
    return outcomes, bins, folds


def brute_force_cv(
    outcomes: dict[tuple[str, str, int], float], bins: dict[str, int], folds: dict[str, int], n_folds: int
) -> dict[int, dict[int, float]]:
    labels = sorted({lb for _, lb, _ in outcomes})
    result: dict[int, dict[int, float]] = {}
    for b in set(bins.values()):
        members = [p for p in bins if bins[p] == b]
        for n in {n for _, _, n in outcomes}:
            scores = []
            for f in range(n_folds):
                train = [p for p in members if folds[p] != f]
                best = max(labels, key=lambda lb: (sum(outcomes[(p, lb, n)] for p in train), -labels.index(lb)))
                scores += [outcomes[(p, best, n)] for p in members if folds[p] == f]
            result.setdefault(b, {})[n] = sum(scores) / len(scores)
    return result


@settings(max_examples=100, deadline=None)
@given(tables(), st.integers(0, 3))
def test_cv_accuracy_equals_brute_force_and_stays_below_the_per_fold_oracle(
    table: tuple[dict[tuple[str, str, int], float], dict[str, int], int], seed: int
) -> None:
    outcomes, bins, n_folds = table
    fit = fit_policy(outcomes, bins, folds=n_folds, seed=seed)
    assert fit.cv_accuracy == brute_force_cv(outcomes, bins, fit.folds, n_folds)
    for b, by_budget in fit.cv_accuracy.items():
        members = [p for p in bins if bins[p] == b]
        for n, cv in by_budget.items():
            # Each fold's held-out score is at most the best any plan does on that fold.
            oracle = sum(
                max(sum(outcomes[(p, lb, n)] for p in members if fit.folds[p] == f) for lb in fit.plan_accuracy[b][n])
                for f in range(n_folds)
            ) / len(members)
            assert cv <= oracle + 1e-12
            if n_folds == 2:
                # With two folds, the plan fitted on fold 1 scores on fold 1 at least what the other
                # plan does, so CV is at most that plan's in-sample accuracy.
                assert cv <= max(fit.plan_accuracy[b][n].values()) + 1e-12


@settings(max_examples=100, deadline=None)
@given(tables(), st.data())
def test_a_folds_own_outcomes_never_change_the_choice_it_is_scored_with(
    table: tuple[dict[tuple[str, str, int], float], dict[str, int], int], data: st.DataObject
) -> None:
    outcomes, bins, n_folds = table
    fit = fit_policy(outcomes, bins, folds=n_folds)
    fold = data.draw(st.integers(0, n_folds - 1))
    changed = {cell: (data.draw(dyadic) if fit.folds[cell[0]] == fold else v) for cell, v in outcomes.items()}
    refit = fit_policy(changed, bins, folds=n_folds)
    for b, by_budget in fit.fold_choices.items():
        for n, chosen in by_budget.items():
            assert refit.fold_choices[b][n][fold] == chosen[fold]


# The deployable policy


def example_policy() -> Policy:
    bins = {f"p{i}": 1 + i % 2 for i in range(8)}
    outcomes = {
        (p, lb, n): float((bins[p] == 1) == (lb == "best_of_n_weighted")) for p in bins for lb in PLANS for n in (4, 16)
    }
    return Policy(
        difficulty="predicted",
        difficulty_samples=16,
        thresholds=[0.2, 0.4, 0.6, 0.8],
        plans=PLANS,
        fit=fit_policy(outcomes, bins),
        budgets=[4, 16],
        calibration={"dataset": "math500:calibration", "proposer": "testbed:proposer"},
    )


PLANS = {
    "best_of_n_weighted": Plan(strategy="best_of_n", settings={"weighted": True}, label="best_of_n_weighted"),
    "beam M=4": Plan(strategy="beam", settings={"beam_width": 4}, label="beam M=4"),
}


def test_policy_round_trips_through_json(tmp_path: Path) -> None:
    policy = example_policy()
    path = tmp_path / "policy.json"
    policy.save(path)
    assert path.read_text().startswith('{\n  "difficulty": "predicted"')
    assert Policy.load(path) == policy
    assert Policy.load(path).fit.cv_accuracy == {1: {4: 1.0, 16: 1.0}, 2: {4: 1.0, 16: 1.0}}


def test_a_policy_written_before_spend_was_recorded_loads_and_reads_its_spend_as_the_budget(tmp_path: Path) -> None:
    data = example_policy().model_dump(mode="json")
    del data["fit"]["cv_spend"], data["fit"]["plan_spend"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    policy = Policy.load(path)
    assert policy.fit.overall_spend(4) == 4.0 and policy.fit.overall_spend(16) == 16.0


def test_plan_for_uses_the_largest_calibrated_budget_not_above_the_request() -> None:
    policy = example_policy()
    assert policy.plan_for(1, 4) == (PLANS["best_of_n_weighted"], 4)
    assert policy.plan_for(2, 15) == (PLANS["beam M=4"], 4)
    assert policy.plan_for(2, 16) == (PLANS["beam M=4"], 16)
    assert policy.plan_for(1, 1000) == (PLANS["best_of_n_weighted"], 16)
    with pytest.raises(ValueError, match="budget 3 is below the smallest calibrated budget 4"):
        policy.plan_for(1, 3)
    with pytest.raises(ValueError, match=r"bin 6 is outside 1..5"):
        policy.plan_for(6, 4)


def test_a_bin_without_calibration_problems_borrows_the_nearest_one() -> None:
    policy = example_policy()  # calibrated bins 1 and 2 only
    assert policy.bin_of(0.9) == 1 and policy.bin_of(0.1) == 5
    assert policy.plan_for(policy.bin_of(0.1), 4) == (PLANS["beam M=4"], 4)
    policy.fit.cv_accuracy[2] = {4: 0.25, 16: 0.5}
    assert policy.curves() == {1: {4: 1.0, 16: 1.0}} | {b: {4: 0.25, 16: 0.5} for b in (2, 3, 4, 5)}


def test_policy_checks_its_parts() -> None:
    good = example_policy().model_dump()
    with pytest.raises(ValueError, match="chooses unknown plans"):
        Policy.model_validate({**good, "plans": {"beam M=4": PLANS["beam M=4"]}})
    with pytest.raises(ValueError, match=r"fitted at budgets \[4, 16\], not \[4, 8, 16\]"):
        Policy.model_validate({**good, "budgets": [4, 8, 16]})
    with pytest.raises(ValueError, match=r"fit has bin 2, outside 1..1"):
        Policy.model_validate({**good, "thresholds": []})
    with pytest.raises(ValueError, match="must not hold the budget"):
        Plan(strategy="beam", settings={"budget": 4}, label="beam")


def test_loading_a_broken_file_names_it_and_the_fault(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.json"
    truncated.write_text(example_policy().model_dump_json(indent=2)[:100])
    with pytest.raises(PolicyFileError, match=r"policy file .*truncated.json is not JSON"):
        Policy.load(truncated)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**example_policy().model_dump(mode="json"), "difficulty": "guessed"}))
    with pytest.raises(PolicyFileError, match=r"wrong.json is not a valid policy: difficulty: Input should be"):
        Policy.load(wrong)
    with pytest.raises(PolicyFileError, match=r"cannot read policy file .*absent.json"):
        Policy.load(tmp_path / "absent.json")


# Budget allocation


def brute_force_allocation(
    curves: dict[int, dict[int, float]], counts: dict[int, int], total: int
) -> tuple[float, int]:
    best: tuple[float, int] | None = None
    bins = sorted(counts)
    for choice in itertools.product(*(sorted(curves[b]) for b in bins)):
        spent = sum(counts[b] * n for b, n in zip(bins, choice, strict=True))
        value = sum(counts[b] * curves[b][n] for b, n in zip(bins, choice, strict=True))
        if spent <= total and (best is None or (value, -spent) > (best[0], -best[1])):
            best = (value, spent)
    assert best is not None
    return best


@st.composite
def allocation_problems(draw: st.DrawFn) -> tuple[dict[int, dict[int, float]], dict[int, int], int]:
    bins = draw(st.integers(1, 5))
    curves = {
        b: {n: draw(dyadic) for n in draw(st.sets(st.sampled_from([2**k for k in range(9)]), min_size=1, max_size=5))}
        for b in range(1, bins + 1)
    }
    counts = {b: draw(st.integers(0, 20)) for b in curves}
    if not any(counts.values()):
        counts[1] = 1
    minimum = sum(counts[b] * min(curves[b]) for b in curves)
    maximum = sum(counts[b] * max(curves[b]) for b in curves)
    return curves, counts, draw(st.integers(minimum, maximum + 10))


@settings(max_examples=100, deadline=None)
@given(allocation_problems())
def test_allocation_is_exact_and_within_budget(
    problem: tuple[dict[int, dict[int, float]], dict[int, int], int],
) -> None:
    curves, counts, total = problem
    allocation = allocate(curves, counts, total)
    value, spent = brute_force_allocation(curves, counts, total)
    assert allocation.spent == spent <= total
    assert allocation.expected_accuracy == value / sum(counts.values())
    assert allocation.spent == sum(counts[b] * n for b, n in allocation.budgets.items())
    assert all(n in curves[b] for b, n in allocation.budgets.items())


def test_allocation_spends_where_it_helps_and_prefers_the_smaller_spend() -> None:
    curves = {1: {1: 0.9, 4: 0.9, 16: 0.95}, 2: {1: 0.1, 4: 0.5, 16: 0.6}}
    assert allocate(curves, {1: 10, 2: 10}, 50) == Allocation(budgets={1: 1, 2: 4}, spent=50, expected_accuracy=0.7)
    # Bin 1 gains nothing from 1 to 4: with room for both, the tie goes to the smaller spend.
    assert allocate(curves, {1: 10, 2: 10}, 80).budgets == {1: 1, 2: 4}


def test_allocation_below_the_minimum_names_it() -> None:
    with pytest.raises(ValueError, match="total budget 19 is below the minimum needed, 20"):
        allocate({1: {2: 0.5, 4: 0.6}, 2: {1: 0.1}}, {1: 5, 2: 10}, 19)
    with pytest.raises(ValueError, match=r"no calibrated curve for bins \[3\]"):
        allocate({1: {2: 0.5}}, {1: 5, 3: 1}, 100)
