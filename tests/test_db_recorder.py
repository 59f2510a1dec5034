"""The recorder: traces written per step, atomically, runs that resume, and workers that share a run
through leased claims on its solves."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta

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
from db.recorder import Claimed, RunConfigMismatch, Stopped, this_worker
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
    with pytest.raises(Claimed, match="already solved"):
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


DONE = dict(answer="4", correct=True, generations=8, tokens=63, flops=1e9, seconds=1.0, detail={})


def solve_row(sessions: sessionmaker[Session], solve_id: int) -> Solve:
    with sessions() as session:
        return session.get_one(Solve, solve_id)


def expire(sessions: sessionmaker[Session], solve_id: int) -> None:
    """Let the solve's lease run out, as it does when its worker stops writing."""
    with sessions.begin() as session:
        session.get_one(Solve, solve_id).lease_until = datetime.now(UTC) - timedelta(seconds=1)


def test_a_done_solve_is_never_reset_by_any_worker(
    sessions: sessionmaker[Session], recorder: Recorder, run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    solve_id = record_beam(recorder, run_id, problem_id)
    recorder.finish_solve(solve_id, **DONE)  # type: ignore[arg-type]
    before = counts(sessions, solve_id)
    for worker in (recorder, Recorder(sessions, worker="elsewhere:1:b")):
        with pytest.raises(Claimed, match="already solved") as raised:
            worker.start_solve(run_id, problem_id, "beam_search", {}, budget=4)
        assert (raised.value.solve_id, raised.value.status) == (solve_id, "done")
    assert counts(sessions, solve_id) == before
    assert (solve_row(sessions, solve_id).status, solve_row(sessions, solve_id).lease_until) == ("done", None)


def test_a_live_claim_of_another_worker_is_neither_taken_nor_written(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    mine, other = Recorder(sessions, worker="host-a:1:a"), Recorder(sessions, worker="host-b:1:b")
    solve_id = record_beam(mine, run_id, problem_id)
    before = counts(sessions, solve_id)

    with pytest.raises(Claimed, match="being solved by worker host-a:1:a") as raised:
        other.start_solve(run_id, problem_id, "beam_search", {}, budget=4)
    assert raised.value.worker == "host-a:1:a"
    for write in (
        lambda: other.record_step(solve_id, StepRecord(3, "select", 2, T0, 0.1)),
        lambda: other.finish_solve(solve_id, **DONE),  # type: ignore[arg-type]
        lambda: other.fail_solve(solve_id, "not mine"),
        lambda: other.renew(solve_id),
    ):
        with pytest.raises(Claimed, match="claimed by worker host-a:1:a"):
            write()
    assert counts(sessions, solve_id) == before
    # The holder goes on undisturbed.
    mine.record_step(solve_id, StepRecord(3, "select", 2, T0, 0.1))
    mine.finish_solve(solve_id, **DONE)  # type: ignore[arg-type]
    assert solve_row(sessions, solve_id).status == "done"


def test_an_expired_claim_is_taken_over_and_its_old_holder_is_fenced_off(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    stalled, rescuer = Recorder(sessions, worker="host-a:1:a"), Recorder(sessions, worker="host-b:1:b")
    solve_id = record_beam(stalled, run_id, problem_id)
    expire(sessions, solve_id)

    assert rescuer.start_solve(run_id, problem_id, "beam_search", {}, budget=4) == solve_id

    row = solve_row(sessions, solve_id)
    assert (row.status, row.worker) == ("running", "host-b:1:b")
    assert row.lease_until is not None and row.lease_until > datetime.now(UTC)
    assert counts(sessions, solve_id) == {"steps": 0, "candidates": 0, "scores": 0}
    # The stalled worker wakes up: nothing it writes lands in the rescuer's trace.
    with pytest.raises(Claimed, match="claimed by worker host-b:1:b"):
        stalled.record_step(solve_id, beam_steps()[0])
    with pytest.raises(Claimed):
        stalled.finish_solve(solve_id, **DONE)  # type: ignore[arg-type]
    for record in beam_steps():
        rescuer.record_step(solve_id, record)
    rescuer.finish_solve(solve_id, **DONE)  # type: ignore[arg-type]
    assert counts(sessions, solve_id) == {"steps": 3, "candidates": 9, "scores": 6}


def test_a_tiny_lease_lapses_by_itself(sessions: sessionmaker[Session], run_and_problem: tuple[str, int]) -> None:
    run_id, problem_id = run_and_problem
    solve_id = Recorder(sessions, worker="host-a:1:a", lease_seconds=0.001).start_solve(
        run_id, problem_id, "beam_search", {}, budget=4
    )
    deadline = solve_row(sessions, solve_id).lease_until
    assert deadline is not None
    while datetime.now(UTC) <= deadline:
        pass
    assert Recorder(sessions, worker="host-b:1:b").start_solve(run_id, problem_id, "beam_search", {}, 4) == solve_id


def test_the_claim_of_a_gone_process_of_this_host_is_taken_at_once(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Recorder(sessions, worker=f"{socket.gethostname()}:{int(ended.stdout)}:dead")
    alive = Recorder(sessions, worker=f"{socket.gethostname()}:1:init")  # pid 1 always exists
    solve_id = dead.start_solve(run_id, problem_id, "beam_search", {}, budget=4)
    other_problem = alive.start_solve(run_id, alive.problem("gsm8k", "8", "3+3?", "6"), "beam_search", {}, 4)
    mine = Recorder(sessions)

    assert mine.pending(run_id).held == {solve_row(sessions, other_problem).problem_id}
    assert mine.start_solve(run_id, problem_id, "beam_search", {}, budget=4) == solve_id
    with pytest.raises(Claimed):
        mine.start_solve(run_id, solve_row(sessions, other_problem).problem_id, "beam_search", {}, budget=4)


def test_renewing_extends_the_lease_and_each_step_renews_it(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    recorder = Recorder(sessions, lease_seconds=60)
    solve_id = recorder.start_solve(run_id, problem_id, "beam_search", {}, budget=4)
    first = solve_row(sessions, solve_id).lease_until
    assert first is not None and timedelta(seconds=59) < first - datetime.now(UTC) <= timedelta(seconds=60)
    expire(sessions, solve_id)

    renewed = recorder.renew(solve_id)

    assert solve_row(sessions, solve_id).lease_until == renewed and renewed >= first
    expire(sessions, solve_id)
    recorder.record_step(solve_id, beam_steps()[0])
    stepped = solve_row(sessions, solve_id).lease_until
    assert stepped is not None and stepped > datetime.now(UTC) + timedelta(seconds=59)
    recorder.finish_solve(solve_id, **DONE)  # type: ignore[arg-type]
    assert solve_row(sessions, solve_id).lease_until is None  # finishing releases the claim
    with pytest.raises(Claimed, match="it is done"):
        recorder.renew(solve_id)
    with pytest.raises(ValueError, match="no solve 10000"):
        recorder.renew(10_000)


def test_interrupt_running_releases_this_workers_solves_for_anyone_to_resume(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    other_run = Recorder(sessions).open_run("other", {})
    mine, theirs = Recorder(sessions, worker="host-a:1:a"), Recorder(sessions, worker="host-b:1:b")
    p = [mine.problem("gsm8k", str(i), "q", "1") for i in range(3)]
    interrupted = record_beam(mine, run_id, problem_id)
    finished = mine.start_solve(run_id, p[0], "beam_search", {}, 4)
    mine.finish_solve(finished, **DONE)  # type: ignore[arg-type]
    elsewhere = mine.start_solve(other_run, p[1], "beam_search", {}, 4)
    not_mine = theirs.start_solve(run_id, p[2], "beam_search", {}, 4)

    assert mine.interrupt_running(run_id) == 1

    row = solve_row(sessions, interrupted)
    assert (row.status, row.worker, row.lease_until) == ("interrupted", "host-a:1:a", None)
    assert [solve_row(sessions, i).status for i in (finished, elsewhere, not_mine)] == ["done", "running", "running"]
    assert theirs.pending(run_id).claimable == {problem_id, p[2]}  # the interrupted one, and its own
    assert theirs.start_solve(run_id, problem_id, "beam_search", {}, budget=4) == interrupted
    assert mine.interrupt_running() == 1  # every run's: the one in `other_run`
    assert solve_row(sessions, elsewhere).status == "interrupted"


def test_a_stopped_worker_starts_no_solve_and_none_slips_in_while_it_stops(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, _ = run_and_problem
    worker = f"host-stop:1:{uuid.uuid4().hex[:8]}"  # a name of its own: a stop lasts as long as the process
    mine = Recorder(sessions, worker=worker)
    problems = [mine.problem("gsm8k", f"stop-{i}", "q", "1") for i in range(24)]
    started: list[int] = []
    refused: list[int] = []

    def claim(problem_id: int) -> None:
        try:
            started.append(mine.start_solve(run_id, problem_id, "s", {}, 1))
        except Stopped:
            refused.append(problem_id)

    threads = [threading.Thread(target=claim, args=(p,)) for p in problems]
    for index, thread in enumerate(threads):
        thread.start()
        if index == 8:
            interrupted = mine.stop()
    for thread in threads:
        thread.join(timeout=30)
    assert len(started) + len(refused) == 24 and refused  # every claim either ran before the stop or was refused
    with sessions() as s:
        statuses = list(s.scalars(select(Solve.status).where(Solve.worker == worker)))
    assert "running" not in statuses and len(statuses) == len(started) == interrupted
    with pytest.raises(Stopped, match=f"worker {worker} is stopping"):
        mine.start_solve(run_id, problems[0], "s", {}, 1)


def test_pending_tells_claimable_from_held_problems(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, _ = run_and_problem
    mine, theirs = Recorder(sessions, worker="host-a:1:a"), Recorder(sessions, worker="host-b:1:b")
    p = [mine.problem("gsm8k", str(i), "q", "1") for i in range(6)]
    mine.finish_solve(mine.start_solve(run_id, p[0], "s", {}, 1), **DONE)  # type: ignore[arg-type]
    mine.fail_solve(mine.start_solve(run_id, p[1], "s", {}, 1), "boom")
    mine.start_solve(run_id, p[2], "s", {}, 1)
    held = theirs.start_solve(run_id, p[3], "s", {}, 1)
    expire(sessions, theirs.start_solve(run_id, p[4], "s", {}, 1))

    pending = mine.pending(run_id, p)

    assert pending.claimable == {p[1], p[2], p[4], p[5]}  # failed, its own, expired, not started
    assert pending.held == {p[3]}
    assert pending.next_expiry == solve_row(sessions, held).lease_until
    assert mine.pending(run_id).claimable == {p[1], p[2], p[4]}  # without ids: only problems with a solve
    assert mine.await_claims(run_id, [p[0]]) == frozenset()  # all done: nothing to wait for


def test_racing_workers_claim_a_problem_exactly_once(
    sessions: sessionmaker[Session], run_and_problem: tuple[str, int]
) -> None:
    run_id, problem_id = run_and_problem
    workers = [Recorder(sessions, worker=f"host-{i}:1:w") for i in range(6)]
    barrier = threading.Barrier(len(workers))
    won: list[int] = []
    refused: list[Claimed] = []

    def claim(worker: Recorder) -> None:
        barrier.wait()
        try:
            won.append(worker.start_solve(run_id, problem_id, "beam_search", {}, budget=4))
        except Claimed as claimed:
            refused.append(claimed)

    for round_ in range(2):  # first the insert races, then the take-over of an expired claim does
        threads = [threading.Thread(target=claim, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(won), len(refused)) == (round_ + 1, len(workers) * (round_ + 1) - round_ - 1)
        expire(sessions, won[0])
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Solve)) == 1


def test_the_lease_comes_from_the_environment_unless_given(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_LEASE_SECONDS", "5")
    assert Recorder(sessions).lease == timedelta(seconds=5)
    assert Recorder(sessions, lease_seconds=0.5).lease == timedelta(seconds=0.5)
    monkeypatch.setenv("TTC_LEASE_SECONDS", "soon")
    with pytest.raises(ValueError, match="TTC_LEASE_SECONDS='soon': expected a number of seconds"):
        Recorder(sessions)
    monkeypatch.delenv("TTC_LEASE_SECONDS")
    assert Recorder(sessions).lease == timedelta(seconds=120)
    assert Recorder(sessions).worker == Recorder(sessions).worker == this_worker()


def test_a_run_name_is_bound_to_its_config(recorder: Recorder) -> None:
    run_id = recorder.open_run("demo", {"strategy": "beam", "budget": 8, "settings": None, "seed": 0})

    with pytest.raises(RunConfigMismatch) as raised:
        recorder.open_run("demo", {"strategy": "majority", "budget": 4, "settings": None, "seed": 0})

    assert str(raised.value) == (
        "run 'demo' was started with strategy=beam, budget=8; this call asks strategy=majority, budget=4: "
        "use another --run-name"
    )
    assert raised.value.differences == {"strategy": ("beam", "majority"), "budget": (8, 4)}
    with pytest.raises(RunConfigMismatch, match=r"settings=null; this call asks settings={\"beam_width\": 2}"):
        recorder.check_run("demo", {"strategy": "beam", "budget": 8, "settings": {"beam_width": 2}, "seed": 0})
    # None on both sides (or a key one side lacks) is no difference; the same config rejoins the run.
    assert recorder.open_run("demo", {"seed": 0, "budget": 8, "strategy": "beam", "policy": None}) == run_id
    recorder.check_run("never-started", {"strategy": "beam"})
