"""The named queries: runs, accuracy tables and failed steps."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db import AccuracyRow, Recorder, StepRecord, accuracy_by, failed_steps, find_run, runs
from tests.db_fixtures import T0


def finish(recorder: Recorder, run_id: str, problem_id: int, strategy: str, budget: int, **result: object) -> int:
    solve_id = recorder.start_solve(run_id, problem_id, strategy, {}, budget)
    spend = dict(answer="x", generations=budget, flops=result["tokens"] * 1e7, seconds=result["tokens"] / 100)  # type: ignore[operator]
    recorder.finish_solve(solve_id, **{"detail": {}, **spend, **result})  # type: ignore[arg-type]
    return solve_id


def test_accuracy_by_strategy_budget_and_bin_matches_hand_count(
    sessions: sessionmaker[Session], recorder: Recorder
) -> None:
    run_id = recorder.open_run("acc", {})
    p = {
        name: recorder.problem("math500", name, "q", "1", meta)
        for name, meta in [
            ("a", {"bin": 1}),
            ("b", {"bin": 1}),
            ("c", {"bin": 1}),
            ("d", {"bin": 2}),
            ("e", {"bin": 2}),
            ("f", {}),
            ("g", {"bin": 1}),
        ]
    }
    finish(recorder, run_id, p["a"], "beam_search", 16, correct=True, tokens=100)
    finish(recorder, run_id, p["b"], "beam_search", 16, correct=False, tokens=300)
    finish(recorder, run_id, p["c"], "beam_search", 16, correct=None, tokens=200)  # no verdict
    finish(recorder, run_id, p["d"], "best_of_n", 16, correct=True, tokens=50)
    # The bin the plan was chosen for (the solve's) wins over the problem's.
    finish(recorder, run_id, p["e"], "best_of_n", 16, correct=True, tokens=70, detail={"bin": 3})
    finish(recorder, run_id, p["f"], "best_of_n", 4, correct=False, tokens=10)
    recorder.fail_solve(recorder.start_solve(run_id, p["g"], "beam_search", {}, 16), "boom")  # not counted
    finish(recorder, recorder.open_run("elsewhere", {}), p["a"], "beam_search", 16, correct=False, tokens=1)

    with sessions() as session:
        table = accuracy_by(session, run_id)

    assert table == [
        AccuracyRow("beam_search", 16, 1, 3, 2, 1, 0.5, 16.0, 200.0, 2e9, 2.0),
        AccuracyRow("best_of_n", 4, None, 1, 1, 0, 0.0, 4.0, 10.0, 1e8, 0.1),
        AccuracyRow("best_of_n", 16, 2, 1, 1, 1, 1.0, 16.0, 50.0, 5e8, 0.5),
        AccuracyRow("best_of_n", 16, 3, 1, 1, 1, 1.0, 16.0, 70.0, 7e8, 0.7),
    ]


def test_failed_steps_of_a_run(sessions: sessionmaker[Session], recorder: Recorder) -> None:
    run_id = recorder.open_run("failing", {})
    other_run = recorder.open_run("other", {})
    problem = recorder.problem("gsm8k", "7", "q", "1")
    solve_id = recorder.start_solve(run_id, problem, "beam_search", {}, 4)
    recorder.record_step(solve_id, StepRecord(0, "propose", 0, T0, 0.1))
    recorder.record_step(solve_id, StepRecord(1, "verify", 0, T0, 0.1, error="PRM out of memory"))
    other = recorder.start_solve(other_run, problem, "beam_search", {}, 4)
    recorder.record_step(other, StepRecord(0, "propose", 0, T0, 0.1, error="elsewhere"))

    with sessions() as session:
        [failed] = failed_steps(session, run_id)
    assert (failed.solve_id, failed.dataset, failed.problem_key, failed.seq, failed.node, failed.error) == (
        solve_id,
        "gsm8k",
        "7",
        1,
        "verify",
        "PRM out of memory",
    )


def test_runs_are_found_by_name_or_id_with_their_counts(sessions: sessionmaker[Session], recorder: Recorder) -> None:
    run_id = recorder.open_run("named", {"strategy": "beam_search"})
    problem = recorder.problem("gsm8k", "1", "q", "1")
    recorder.fail_solve(recorder.start_solve(run_id, problem, "beam_search", {}, 4), "boom")
    unnamed = recorder.open_run(None, {})

    with sessions() as session:
        by_name = find_run(session, "named")
        by_id = find_run(session, run_id)
        listed = runs(session)
        missing = find_run(session, "nope")

    assert by_name == by_id
    assert by_name is not None
    assert (by_name.config, by_name.solves, by_name.done, by_name.failed) == (
        {"strategy": "beam_search"},
        1,
        0,
        1,
    )
    assert {r.id for r in listed} == {run_id, unnamed}
    assert missing is None
