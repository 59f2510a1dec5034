"""Why an answer won, in `ttc trace`: the final vote's totals sorted highest first with full answers, the
winner's total, how a tie was broken, and for tree searches each answer's candidates and score sum beside
the tree. Real solves (deterministic scripted engines) on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from typing import Any

import pytest
from typer.testing import CliRunner

from db import connect, queries
from flows.cli import app
from flows.pipelines.report import tally_votes
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from tests.scripted import ScriptedProposer, ScriptedVerifier
from ttc_nodes.engines import register_scheme

LONG = "1234567890" * 10  # a 100-digit answer: wider than any terminal the trace is printed to
VOTE_LINE = re.compile(r"^  (★|\s) +(\S+)  (\d+) candidates?(?:, score sum (\S+), best (\S+))? +(\S+)$")


def scripted(location: str, uri: str, finish_rate: float) -> Any:
    proposer = ScriptedProposer(finish_rate, location.split(","))
    proposer.uri = uri  # type: ignore[misc]
    return proposer


@pytest.fixture(scope="module", autouse=True)
def votes_scheme() -> None:
    """`votes:A,B,…` proposes the answers A, B, …; `votes:prm` scores steps by a hash."""
    register_scheme(
        "votes",
        proposer=lambda location, options, uri: scripted(location, uri, float(options.get("finish", 0.3))),
        verifier=lambda location, options, uri: ScriptedVerifier(),
    )


def solved(database_url: str, strategy: str, budget: int, answers: str, seed: int = 0, **values: Any) -> Any:
    models = ModelSettings(proposer=f"votes:{answers}", verifier="votes:prm", seed=seed)
    return solve_question(
        "What is 2+3?", strategy=strategy, values={"budget": budget, **values}, models=models, database=database_url
    )


def traced(database_url: str, run_id: str) -> str:
    result = CliRunner().invoke(app, ["trace", run_id, "--db", database_url])
    assert result.exit_code == 0, result.output
    return result.stdout


def vote_rows(output: str) -> list[tuple[bool, float, int, str]]:
    """(won, total, candidates, answer) of each line of the printed final vote, in printed order."""
    lines = output[output.index("final vote") :].splitlines()[1:]
    rows = []
    for line in lines:
        match = VOTE_LINE.match(line)
        if match is None:
            break
        rows.append((match[1] == "★", float(match[2]), int(match[3]), match[6]))
    return rows


def test_the_trace_lists_every_answer_by_total_highest_first_with_the_winner(database_url: str) -> None:
    outcome = solved(database_url, "best_of_n_weighted", 16, f"7,5,11,{LONG}")
    output = traced(database_url, outcome.run_id)

    rows = vote_rows(output)
    expected = sorted(outcome.votes.items(), key=lambda item: -item[1])
    assert len(rows) == len(outcome.votes) >= 3
    assert [total for _, total, _, _ in rows] == [round(total, 4) for _, total in expected]
    assert {answer for *_, answer in rows} == set(outcome.votes)  # the 100-digit answer whole, not cut
    assert LONG in output
    assert sum(count for _, _, count, _ in rows) == 16  # every sample counted once
    (winner,) = [row for row in rows if row[0]]
    assert winner[3] == outcome.answer and winner == rows[0]
    assert f"winner {outcome.answer} with total {max(outcome.votes.values()):.4f}" in output


def test_a_tie_says_how_it_was_broken(database_url: str) -> None:
    for seed in range(20):
        outcome = solved(database_url, "majority", 2, "7,5", seed=seed)
        if len(outcome.votes) == 2:  # one 7 and one 5: a 1–1 tie
            break
    else:
        pytest.fail("no seed in 0..19 drew two different answers")
    output = traced(database_url, outcome.run_id)

    loser = next(answer for answer in outcome.votes if answer != outcome.answer)
    assert f"winner {outcome.answer} with total 1 (50% of 2)" in output
    tie = re.search(r"tie at 1 with (\S+): broken for the answer reached first \(candidate (\S+)\)", output)
    assert tie is not None, output
    assert tie[1] == loser
    with connect(database_url)() as session:
        (trace,) = queries.trace_of(session, outcome.run_id)
    first = {c.key: c.answer for c in trace.candidates}
    assert first[tie[2]] == outcome.answer
    order = [c.answer for c in trace.candidates]
    assert order.index(outcome.answer) < order.index(loser)  # the vote gives a tie to the answer seen first


def test_a_beam_search_shows_each_answers_candidates_and_score_sum_beside_the_tree(database_url: str) -> None:
    outcome = solved(database_url, "beam", 8, "7,5,11", max_rounds=4)
    output = traced(database_url, outcome.run_id)

    with connect(database_url)() as session:
        (trace,) = queries.trace_of(session, outcome.run_id)
    tally = tally_votes(trace)
    assert tally is not None and tally.method == "weighted"
    finished = [c for c in trace.candidates if c.finished and c.answer is not None]
    assert sum(row.candidates for row in tally.rows) == len(finished)
    for row in tally.rows:  # the weighted vote's total is the sum of its leaves' scores
        assert row.score_sum == pytest.approx(row.total)
    totals = {row.answer: row.total for row in tally.rows}
    for leaf in finished:  # each leaf's line in the tree carries its answer's total
        total = totals[tally.answer_of[leaf.key]]
        assert re.search(rf"{re.escape(leaf.key)} r\d+ \w+ s=\S+ → \S+ \(vote {total:.4f}\)", output), leaf.key
    assert [row.total for row in tally.rows] == sorted((row.total for row in tally.rows), reverse=True)


def test_a_winner_whose_best_candidate_scores_below_a_losers_is_said_to_win_on_numbers() -> None:
    from datetime import UTC, datetime

    from db.queries import CandidateInfo, ProblemInfo, ScoreInfo, SolveTrace, StepInfo
    from flows.cli.render import vote_lines

    now = datetime.now(UTC)
    leaves = [("a", "5", 0.9), ("b", "7", 0.5), ("c", "7", 0.5)]
    trace = SolveTrace(
        id=1,
        run_id="r",
        problem=ProblemInfo(1, "toy", "k", "q", "7", {}),
        strategy="beam",
        settings={},
        budget=3,
        status="done",
        answer="7",
        correct=True,
        generations=3,
        tokens=30,
        flops=1.0,
        seconds=0.1,
        started_at=now,
        finished_at=now,
        error=None,
        detail={"votes": {"5": 0.9, "7": 1.0}, "chosen": "b"},
        steps=[StepInfo(1, 0, "select", 1, now, 0.0, 0, 0, 0.0, {"method": "weighted"}, None)],
        candidates=[
            CandidateInfo(i, k, None, 1, 1, 1, "t", "step", None, True, a, None, 1)
            for i, (k, a, _) in enumerate(leaves)
        ],
        scores=[ScoreInfo(i, k, 1, [s], s, "last", "prm", False) for i, (k, _, s) in enumerate(leaves)],
    )

    lines = [line.plain for line in vote_lines(tally_votes(trace))]  # type: ignore[arg-type]

    assert [line.split()[-1] for line in lines[1:3]] == ["7", "5"]
    assert "2 candidates, score sum 1.0000, best 0.5000" in lines[1] and lines[1].startswith("  ★")
    assert "note the winner's best score 0.5000 is below 5's 0.9000: it won on its 2 candidates' total" in lines
