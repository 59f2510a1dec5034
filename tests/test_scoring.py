import math

import pytest

from ttc_nodes.scoring import AGGREGATIONS, aggregate

STEPS = [0.9, 0.4, 0.7]


def test_each_aggregation_gives_its_own_score():
    assert aggregate(STEPS, "last") == pytest.approx(0.7)
    assert aggregate(STEPS, "min") == pytest.approx(0.4)
    assert aggregate(STEPS, "prod") == pytest.approx(0.9 * 0.4 * 0.7)
    assert len({aggregate(STEPS, how) for how in AGGREGATIONS}) == 3


def test_unknown_aggregation_and_empty_scores_are_errors():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(STEPS, "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        aggregate([], "last")


def test_aggregation_setting_changes_which_answer_wins():
    """The configured aggregation must reach the vote (a known bug elsewhere: always 'last')."""
    from ttc_nodes.state import Candidate
    from ttc_nodes.vote import vote

    def answer(key: str, value: str, steps: list[float], how: str) -> Candidate:
        base = Candidate(key, None, ("a",) * len(steps), "a", 1, "answer", True, value)
        return base.scored(steps, aggregate(steps, how))  # type: ignore[arg-type]

    winners = {
        how: vote([answer("a", "1", [0.2, 0.9], how), answer("b", "2", [0.6, 0.7], how)], "best_of_n").answer
        for how in ("last", "min")
    }
    assert winners == {"last": "1", "min": "2"}
    assert not math.isnan(aggregate([1e-9] * 50, "prod"))
