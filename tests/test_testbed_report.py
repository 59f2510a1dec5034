"""The testbed report: its statistics against brute force, and a whole (tiny) report on quick models."""

from __future__ import annotations

import itertools
import random

import pytest

from flows.testbed_cli import print_report
from ttc_nodes.testbed.report import ReportSettings, auc, build_report, majority_vote, weighted_vote


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


@pytest.mark.slow
def test_a_small_report_on_quick_models_measures_every_section(quick_models, monkeypatch):
    import io

    from rich.console import Console

    import flows.testbed_cli

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
    printed = io.StringIO()
    monkeypatch.setattr(flows.testbed_cli, "console", Console(file=printed, width=200))
    print_report(report)
    assert "weighted BoN (confidence)" in printed.getvalue() and "reviser pass@1" in printed.getvalue()
