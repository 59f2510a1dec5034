"""The testbed report: its statistics against brute force, and a whole (tiny) report on quick models."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from flows.cli.testbed import print_report
from flows.pipelines.plots import plot_testbed_report
from ttc_nodes.prompts import DEFAULT_FORMAT
from ttc_nodes.testbed import task
from ttc_nodes.testbed.report import (
    ReportSettings,
    auc,
    build_report,
    difficulty_bins,
    majority_vote,
    reviser_section,
    revision_transitions,
    weighted_vote,
    within_problem_auc,
)


@pytest.mark.parametrize("seed", range(5))
def test_auc_is_the_chance_a_positive_outranks_a_negative(seed):
    rng = random.Random(seed)
    scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(40)]  # ties are common
    labels = [rng.random() < 0.4 for _ in range(40)]
    pairs = [(p, n) for p, n in itertools.product(range(40), range(40)) if labels[p] and not labels[n]]
    expected = sum(1.0 if scores[p] > scores[n] else 0.5 if scores[p] == scores[n] else 0.0 for p, n in pairs)
    assert auc(scores, labels) == pytest.approx(expected / len(pairs))
    assert auc(scores, [True] * 40) is None  # undefined with one class


@pytest.mark.parametrize("seed", range(5))
def test_weighted_vote_is_the_answer_with_the_largest_score_sum(seed):
    rng = random.Random(seed)
    answers = [rng.choice(["1", "2", "3", None]) for _ in range(16)]
    weights = [rng.random() for _ in range(16)]
    totals = {a: sum(w for b, w in zip(answers, weights, strict=True) if b == a) for a in set(answers) - {None}}
    assert weighted_vote(answers, weights) == max(totals, key=totals.__getitem__)
    counts = {a: answers.count(a) for a in set(answers) - {None}}
    assert counts[majority_vote(answers)] == max(counts.values())
    assert weighted_vote([None, None], [1.0, 2.0]) is None and majority_vote([None]) is None


def test_within_problem_auc_ranks_each_questions_answers_alone():
    rng = random.Random(3)
    scores = [[rng.random() for _ in range(8)] for _ in range(6)]
    correct = [[rng.random() < 0.5 for _ in range(8)] for _ in range(5)] + [[True] * 8]
    separation = within_problem_auc(scores, correct)

    for index in range(5):
        assert separation[index] == pytest.approx(auc(scores[index], correct[index]))
    assert math.isnan(separation[5])  # every answer right: nothing to rank
    # Scores that only tell questions apart separate nothing within a question.
    constant = within_problem_auc([[float(i)] * 8 for i in range(5)], correct[:5])
    assert constant.tolist() == pytest.approx([0.5] * 5)


def test_revision_transitions_count_keeps_fixes_and_where_a_wrong_answer_was_changed():
    problem = task.problems(1, seed=4, difficulty=3)[0]
    steps = task.worked_solution(problem.start, problem.operations)
    assert len(steps) >= 2

    def slipped(index: int) -> str:  # the same solution with step `index`'s result off by one
        value, op, operand, result = task.parse_step(steps[index])
        wrong = [*steps[:index], task.step_text(value, op, operand, result + 1, index == len(steps) - 1)]
        return DEFAULT_FORMAT.join_steps([*wrong, *steps[index + 1 :]])

    right, wrong_at_1, wrong_at_0 = DEFAULT_FORMAT.join_steps(steps), slipped(1), slipped(0)
    chains = [[wrong_at_1, right, right], [right, wrong_at_0, wrong_at_0], [wrong_at_1, wrong_at_0, right]]
    hits = np.array([[[task.prefix_correct(problem, DEFAULT_FORMAT.split_steps(t))[-1] for t in c] for c in chains]])
    assert hits.tolist() == [[[False, True, True], [True, False, False], [False, False, True]]]

    stats = revision_transitions([problem], [chains], hits)

    assert stats["fix_rate"] == 2 / 4  # four revisions of a wrong answer, two of them right
    assert stats["kept_verbatim_after_right"] == 1 / 2
    assert stats["kept_verbatim_after_wrong"] == 1 / 4
    # Three changed a wrong answer; two changed it at its first wrong step, one before it.
    assert stats["changed_wrong_at_first_error"] == pytest.approx(2 / 3)
    # Chains 0 and 2 start wrong; of the other two chains, one starts right.
    assert stats["resample_fix_baseline"] == 1 / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reviser_chain_split_by_quintile_matches_brute_force_and_averages_to_the_whole(seed):
    rng = np.random.default_rng(seed)
    hits = rng.random((23, 3, 4)) < 0.4  # 23 problems: quintiles of 5, 5, 5, 4, 4
    pass_at_1 = rng.random(23)
    bins = difficulty_bins(pass_at_1)

    section = reviser_section(hits, pass_at_1, bins)

    rows = section["by_quintile"]
    assert [row["bin"] for row in rows] == [1, 2, 3, 4, 5] and [row["problems"] for row in rows] == [5, 5, 5, 4, 4]
    for row in rows:
        members = [i for i in range(23) if bins[i] == row["bin"] - 1]
        for position in range(4):
            brute = sum(hits[i, c, position] for i in members for c in range(3)) / (3 * len(members))
            assert row["pass_at_1_by_position"][position] == pytest.approx(brute)
        assert row["proposer_pass_at_1"] == pytest.approx(np.mean([pass_at_1[i] for i in members]))
    weighted = np.sum([np.array(row["pass_at_1_by_position"]) * row["problems"] for row in rows], axis=0) / 23
    assert weighted == pytest.approx(section["pass_at_1_by_position"])
    assert rows[0]["proposer_pass_at_1"] >= rows[-1]["proposer_pass_at_1"]  # bin 1 holds the easiest problems


@pytest.mark.slow
def test_a_small_report_on_quick_models_measures_every_section(quick_models, monkeypatch, tmp_path):
    import io

    from rich.console import Console

    import flows.cli.testbed

    settings = ReportSettings(
        problems=10,
        samples=4,
        budget=2,
        draws=2,
        rollout_solutions=2,
        rollouts=2,
        chains=1,
        chain_length=2,
        max_tokens=24,
    )
    report = build_report(settings, quick_models)

    assert report["models"] == str(quick_models)
    assert len(report["proposer"]["by_quintile"]) == 5
    assert 0.0 <= report["proposer"]["pass_at_1"] <= 1.0
    for section in (report["best_of_n"], report["confidence"]["best_of_n"]):
        assert section["budget"] == 2 and 0.0 <= section["weighted"] <= 1.0
        assert section["majority"] == report["best_of_n"]["majority"]  # the same draws for every verifier
    assert report["prm"]["steps_scored"] == report["confidence"]["steps_scored"] > 0
    assert len(report["reviser"]["pass_at_1_by_position"]) == 2
    assert all(len(row["pass_at_1_by_position"]) == 2 for row in report["reviser"]["by_quintile"])
    transitions = ("fix_rate", "kept_verbatim_after_right", "kept_verbatim_after_wrong", "changed_wrong_at_first_error")
    for name in transitions:  # None where no revision had that kind of answer before it
        assert report["reviser"][name] is None or 0.0 <= report["reviser"][name] <= 1.0
    assert any(report["reviser"][name] is not None for name in transitions)
    assert report["reviser"]["resample_fix_baseline"] is None  # one chain per question: no other to resample
    printed = io.StringIO()
    monkeypatch.setattr(flows.cli.testbed, "console", Console(file=printed, width=200))
    print_report(report)
    assert "weighted BoN (confidence)" in printed.getvalue() and "reviser pass@1" in printed.getvalue()
    assert "fixed by the next revision" in printed.getvalue() and "AUC within a question" in printed.getvalue()
    assert "quintile" in printed.getvalue()
    figure = plot_testbed_report(report, tmp_path / "report.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
