"""Policies in the database: saved by name, replaced in place, read back by name or id."""

from __future__ import annotations

import threading

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db import Recorder
from db.models import Policy as PolicyRow
from db.queries import policy
from flows.policy import Plan, Policy, fit_policy


def fitted_policy() -> Policy:
    bins = {f"p{i}": 1 + i % 2 for i in range(6)}
    plans = {
        "best_of_n_weighted": Plan(strategy="best_of_n", settings={"weighted": True}, label="best_of_n_weighted"),
        "beam M=4": Plan(strategy="beam", settings={"beam_width": 4}, label="beam M=4"),
    }
    outcomes = {
        (p, label, n): (0.1 * i + 0.05 * (label == "beam M=4")) / n
        for i, p in enumerate(bins)
        for label in plans
        for n in (1, 4)
    }
    return Policy(
        difficulty="oracle",
        difficulty_samples=64,
        thresholds=[0.1, 0.3, 0.5, 0.7],
        plans=plans,
        fit=fit_policy(outcomes, bins),
        budgets=[1, 4],
        calibration={"dataset": "testbed", "created_at": "2026-01-01T12:00:00+00:00"},
    )


def test_a_saved_policy_reads_back_by_name_and_by_id(recorder: Recorder, sessions: sessionmaker[Session]) -> None:
    fitted = fitted_policy()
    policy_id = recorder.save_policy("search-v1", fitted.model_dump(mode="json"))
    with sessions() as session:
        by_name = policy(session, "search-v1")
        by_id = policy(session, str(policy_id))
        assert policy(session, "search-v2") is None
        assert policy(session, str(policy_id + 1)) is None
    assert by_name == by_id == fitted.model_dump(mode="json")
    assert Policy.model_validate(by_name) == fitted


def test_saving_under_an_existing_name_replaces_the_content(
    recorder: Recorder, sessions: sessionmaker[Session]
) -> None:
    first = recorder.save_policy("search", {"version": 1})
    other = recorder.save_policy("revisions", {"version": 1})
    assert recorder.save_policy("search", {"version": 2}) == first != other
    with sessions() as session:
        assert policy(session, "search") == {"version": 2}
        assert policy(session, "revisions") == {"version": 1}
        assert session.scalar(select(func.count(PolicyRow.id))) == 2


def test_a_name_wins_over_an_id(recorder: Recorder, sessions: sessionmaker[Session]) -> None:
    first = recorder.save_policy("first", {"which": "first"})
    recorder.save_policy(str(first), {"which": "named like an id"})
    with sessions() as session:
        assert policy(session, str(first)) == {"which": "named like an id"}


def test_concurrent_saves_of_one_name_leave_one_row(recorder: Recorder, sessions: sessionmaker[Session]) -> None:
    ids: list[int] = []
    barrier = threading.Barrier(4)

    def save(version: int) -> None:
        barrier.wait()
        ids.append(recorder.save_policy("shared", {"version": version}))

    threads = [threading.Thread(target=save, args=(v,)) for v in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 1
    with sessions() as session:
        assert session.scalar(select(func.count(PolicyRow.id))) == 1
        assert policy(session, "shared") in [{"version": v} for v in range(4)]
