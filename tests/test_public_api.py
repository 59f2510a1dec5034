"""`import ttc`: one call solves a question (traced, on the testbed, in a temporary SQLite file unless
told otherwise) or evaluates a dataset, and a bad request fails before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

import ttc
from db import dispose
from db.queries import runs, trace_of
from db.session import connect


def test_solve_returns_the_answer_the_spend_and_a_run_traced_in_a_temporary_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TTC_DATABASE_URL", raising=False)

    result = ttc.solve("Compute 2+3.", strategy="beam", budget=4)

    assert isinstance(result, ttc.Result)
    assert result.answer == "5" and result.solution and "\\boxed{5}" in result.solution
    assert result.strategy == "beam" and result.settings["budget"] == 4 and result.spend.generations == 4
    assert result.database.startswith("sqlite:///") and Path(result.database.removeprefix("sqlite:///")).exists()
    with connect(result.database)() as session:
        [trace] = trace_of(session, result.run_id)
    assert trace.status == "done" and trace.id == result.solve_id and trace.steps
    assert ttc.solve("Compute 2+3.", strategy="majority", budget=2).database == result.database  # one per process


def test_solve_takes_the_strategys_settings_and_grades_against_a_reference(database_url: str) -> None:
    result = ttc.solve(
        "Compute (12 + 5) * 2 - 3.", "best_of_n", 4, reference="31", weighted=True, database=database_url
    )

    assert result.settings["weighted"] is True and result.correct is (result.answer == "31")
    assert result.database == database_url


def test_a_bad_strategy_or_setting_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    with pytest.raises(ttc.UnknownStrategy, match=r"unknown strategy 'beems'.*known: beam"):
        ttc.solve("Compute 2+3.", strategy="beems", budget=4, database=url)
    with pytest.raises(ttc.SettingsError, match="budget"):
        ttc.solve("Compute 2+3.", strategy="beam", budget=0, database=url)
    with pytest.raises(ttc.SettingsError, match="beam_width"):
        ttc.solve("Compute 2+3.", strategy="beam", budget=4, beam_width=3, database=url)

    with connect(url)() as session:
        assert runs(session) == []
    dispose(url)


@pytest.mark.slow
def test_evaluate_runs_the_flow_and_returns_its_summary(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"

    summary = ttc.evaluate("testbed:arith?n=2&seed=3", strategy="majority", budget=2, database=url)

    assert summary["done"] == 2 and summary["failed"] == 0 and summary["database"] == url
    with connect(url)() as session:
        assert len(trace_of(session, summary["run_id"])) == 2
    dispose(url)
