"""The recorder: traces written per step, atomically, and runs that resume."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from db import (
    CandidateRecord,
    Recorder,
    ScoreRecord,
    StepRecord,
    TreeNode,
    candidate_tree,
    paths,
    trace_of,
)
from db.models import Candidate, Score, Solve, Step
from tests.db_fixtures import T0, beam_steps, record_beam


def counts(sessions: sessionmaker[Session], solve_id: int | None = None) -> dict[str, int]:
    """Rows per trace table (of one solve, or of all)."""
    steps = select(func.count(Step.id))
    candidates = select(func.count(Candidate.id))
    scores = select(func.count(Score.id)).join(Candidate, Score.candidate_id == Candidate.id)
    if solve_id is not None:
        steps = steps.where(Step.solve_id == solve_id)
        candidates = candidates.where(Candidate.solve_id == solve_id)
        scores = scores.where(Candidate.solve_id == solve_id)
    with sessions() as session:
        return {
            "steps": session.scalar(steps) or 0,
            "candidates": session.scalar(candidates) or 0,
            "scores": session.scalar(scores) or 0,
        }


def shape(node: TreeNode) -> tuple[object, ...]:
    return (node.key, node.text, node.score, [shape(child) for child in node.children])


@pytest.fixture
def run_and_problem(recorder: Recorder) -> tuple[str, int]:
    return recorder.open_run("r", {"strategy": "beam_search"}), recorder.problem("gsm8k", "7", "2+2?", "4")


def test_beam_tree_is_rebuilt_exactly(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    solve_id = record_beam(recorder, *run_and_problem)
    with sessions() as session:
        tree = candidate_tree(session, solve_id)
        texts = paths(session, solve_id)
    t = "text of "
    assert [shape(root) for root in tree] == [
        ("r0.0", t + "r0.0", 0.0, []),
        ("r0.1", t + "r0.1", 0.1, []),
        (
            "r0.2",
            t + "r0.2",
            0.2,
            [("r1.2", t + "r1.2", None, []), ("r1.3", t + "r1.3", None, [("r1.3a", t + "r1.3a", 0.8, [])])],
        ),
        ("r0.3", t + "r0.3", 0.35, [("r1.0", t + "r1.0", None, []), ("r1.1", t + "r1.1", None, [])]),
    ]
    answer = tree[2].children[1].children[0]
    assert (answer.kind, answer.finished, answer.answer, answer.depth, answer.round) == (
        "answer",
        True,
        "42",
        3,
        1,
    )
    assert answer.step_scores == [0.2, 0.9, 0.8]
    assert tree[3].step_scores == [0.3, 0.35]  # the latest score replaces the first
    assert texts["r1.3a"] == [t + "r0.2", t + "r1.3", t + "r1.3a"]
    assert texts["r0.0"] == [t + "r0.0"]
    assert len(texts) == 9


def test_trace_lists_steps_candidates_and_scores(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    run_id, _ = run_and_problem
    solve_id = record_beam(recorder, *run_and_problem)
    with sessions() as session:
        [trace] = trace_of(session, run_id, problem_key="7")
        assert trace_of(session, run_id, problem_key="8") == []
        assert trace_of(session, run_id, dataset="math500") == []
    assert trace.id == solve_id
    assert (trace.problem.dataset, trace.problem.key, trace.problem.reference) == ("gsm8k", "7", "4")
    assert [(s.seq, s.node, s.started_at) for s in trace.steps] == [(r.seq, r.node, r.started_at) for r in beam_steps()]
    assert {c.key: c.parent_key for c in trace.candidates}["r1.3a"] == "r1.3"
    assert [s.candidate_key for s in trace.scores][-2:] == ["r1.3a", "r0.3"]
    assert trace.scores[-1].truncated
    assert {c.step_id for c in trace.candidates} == {trace.steps[0].id, trace.steps[2].id}


def test_score_for_unknown_key_writes_nothing_of_the_step(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    solve_id = record_beam(recorder, *run_and_problem)
    before = counts(sessions, solve_id)
    bad = StepRecord(
        seq=3,
        node="propose",
        round=2,
        started_at=T0,
        seconds=0.1,
        candidates=[CandidateRecord("r2.0", "r1.0", 2, 3, "x", "step", False, None)],
        scores=[
            ScoreRecord("r2.0", [0.5], 0.5, "last", "prm"),
            ScoreRecord("nope", [0.5], 0.5, "last", "prm"),
        ],
    )
    with pytest.raises(ValueError, match="nope"):
        recorder.record_step(solve_id, bad)
    assert counts(sessions, solve_id) == before
    # The failed step left the key cache clean: the same keys can be recorded once fixed.
    bad.scores.pop()
    recorder.record_step(solve_id, bad)
    assert counts(sessions, solve_id) == {k: v + 1 for k, v in before.items()}


def test_failure_inside_the_transaction_rolls_back_step_and_candidates(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    solve_id = record_beam(recorder, *run_and_problem)
    before = counts(sessions, solve_id)
    unserialisable = StepRecord(
        seq=3,
        node="verify",
        round=2,
        started_at=T0,
        seconds=0.1,
        candidates=[CandidateRecord("r2.0", "r1.0", 2, 3, "x", "step", False, None)],
        scores=[ScoreRecord("r2.0", [object()], 0.5, "last", "prm")],  # type: ignore[list-item]
    )
    with pytest.raises((TypeError, StatementError)):  # SQLAlchemy wraps it on SQLite
        recorder.record_step(solve_id, unserialisable)
    assert counts(sessions, solve_id) == before


def test_unknown_or_duplicate_candidate_keys_are_refused(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    solve_id = record_beam(recorder, *run_and_problem)
    orphan = CandidateRecord("r2.0", "missing", 2, 3, "x", "step", False, None)
    again = CandidateRecord("r0.0", None, 2, 1, "x", "step", False, None)
    for candidate in (orphan, again):
        with pytest.raises(ValueError):
            recorder.record_step(solve_id, StepRecord(3, "propose", 2, T0, 0.1, candidates=[candidate]))
    assert counts(sessions, solve_id)["steps"] == 3


def test_reopening_a_run_by_name_returns_its_id(recorder: Recorder) -> None:
    first = recorder.open_run("sweep", {"budget": 4})
    assert recorder.open_run("sweep", {"budget": 4}) == first
    assert len({recorder.open_run(None, {}), recorder.open_run(None, {}), first}) == 3


def test_problems_are_stored_once_even_when_raced(recorder: Recorder) -> None:
    barrier = threading.Barrier(4)
    ids: list[int] = []

    def add() -> None:
        barrier.wait()
        ids.append(recorder.problem("math500", "p1", "q", None, {"bin": 2}))

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1 and len(ids) == 4
    assert recorder.problem("math500", "p2", "q", None) != ids[0]


def test_restarting_a_crashed_solve_leaves_no_orphans(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    other = record_beam(recorder, run_id, recorder.problem("gsm8k", "8", "3+3?", "6"))
    crashed = record_beam(recorder, run_id, problem_id)  # never finished: the process died

    restarted = recorder.start_solve(run_id, problem_id, "best_of_n", {"n": 4}, budget=4)

    assert restarted == crashed
    assert counts(sessions, crashed) == {"steps": 0, "candidates": 0, "scores": 0}
    assert counts(sessions) == counts(sessions, other)
    with sessions() as session:
        solve = session.get_one(Solve, restarted)
        assert (solve.status, solve.strategy, solve.settings, solve.finished_at) == (
            "running",
            "best_of_n",
            {"n": 4},
            None,
        )
    # The old keys are free again in the restarted solve.
    recorder.record_step(restarted, beam_steps()[0])


def test_failed_solve_restarts_but_finished_solve_refuses(recorder: Recorder, run_and_problem: tuple[str, int]) -> None:
    run_id, problem_id = run_and_problem
    solve_id = record_beam(recorder, run_id, problem_id)
    recorder.fail_solve(solve_id, "engine timeout")
    assert recorder.start_solve(run_id, problem_id, "beam_search", {}, budget=4) == solve_id
    recorder.finish_solve(
        solve_id, answer="4", correct=True, generations=8, tokens=63, flops=1e9, seconds=1.0, detail={}
    )
    with pytest.raises(ValueError, match="already solved"):
        recorder.start_solve(run_id, problem_id, "beam_search", {}, budget=4)


def test_resume_set_holds_only_finished_problems_of_the_run(
    sessions: sessionmaker[Session], recorder: Recorder
) -> None:
    run_id = recorder.open_run("resume", {})
    other_run = recorder.open_run("other", {})
    p = [recorder.problem("gsm8k", str(i), "q", "1") for i in range(4)]
    done = dict(answer="1", correct=True, generations=1, tokens=1, flops=1.0, seconds=1.0, detail={})
    recorder.finish_solve(recorder.start_solve(run_id, p[0], "best_of_n", {}, 1), **done)  # type: ignore[arg-type]
    recorder.fail_solve(recorder.start_solve(run_id, p[1], "best_of_n", {}, 1), "boom")
    recorder.start_solve(run_id, p[2], "best_of_n", {}, 1)
    recorder.finish_solve(recorder.start_solve(other_run, p[3], "best_of_n", {}, 1), **done)  # type: ignore[arg-type]
    assert recorder.finished_problems(run_id) == {p[0]}
    # A new recorder (a new process) sees the same, and continues a half-written solve by its keys.
    fresh = Recorder(sessions)
    assert fresh.finished_problems(run_id) == {p[0]}
    solve_id = fresh.start_solve(run_id, p[2], "beam_search", {}, 4)
    recorder.record_step(solve_id, beam_steps()[0])
    fresh.record_step(solve_id, beam_steps()[1])
    assert counts(sessions, solve_id) == {"steps": 2, "candidates": 4, "scores": 4}


def test_finish_and_fail_record_spend_and_error(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    solve_id = recorder.start_solve(run_id, problem_id, "beam_search", {}, budget=4)
    recorder.finish_solve(
        solve_id,
        answer="4",
        correct=True,
        generations=8.5,
        tokens=63,
        flops=2.5e12,
        seconds=1.25,
        detail={"votes": {"4": 0.9}},
    )
    with sessions() as session:
        [trace] = trace_of(session, run_id)
    assert (trace.status, trace.answer, trace.correct, trace.flops, trace.detail) == (
        "done",
        "4",
        True,
        2.5e12,
        {"votes": {"4": 0.9}},
    )
    assert trace.finished_at is not None and trace.finished_at > datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="no solve"):
        recorder.fail_solve(10_000, "x")
