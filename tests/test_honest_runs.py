"""A run is what it says it is: hostile model output is stored (not a crash), each problem draws its own
random stream, and the solve command closes the run it opened. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from db import connect, dispose
from db.models import Candidate, Run, Solve
from flows.service.config import ModelSettings
from flows.service.solving import problem_seed, solve_question
from tests.scripted import ScriptedProposer
from ttc_nodes.engines import register_scheme


@pytest.fixture(scope="module", autouse=True)
def hostile_scheme() -> None:
    """`hostile:` proposes answers holding a NUL character, markup and right-to-left text."""
    answers = ("4\x00", "<b>4</b>", "\u202e4")
    register_scheme("hostile", proposer=lambda location, options, uri: _Named(ScriptedProposer(0.9, answers), uri))


class _Named:
    def __init__(self, inner: ScriptedProposer, uri: str) -> None:
        self.inner, self.uri, self.parameters = inner, uri, inner.parameters

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.generate(*args, **kwargs)


def test_model_output_with_a_nul_character_is_stored_not_fatal(database_url: str) -> None:
    models = ModelSettings(proposer="hostile:x")

    outcome = solve_question(
        "What is 2+2?", strategy="majority", values={"budget": 6}, models=models, database=database_url
    )

    with connect(database_url)() as session:
        solve = session.get(Solve, outcome.solve_id)
        texts = session.scalars(select(Candidate.text).where(Candidate.solve_id == outcome.solve_id)).all()
    assert solve is not None and solve.status == "done"
    assert texts and not any("\x00" in t for t in texts)
    assert any("4\ufffd" in t for t in texts)  # the NUL is replaced, the rest kept verbatim
    dispose(database_url)


def test_each_problem_of_a_run_draws_its_own_seed_and_a_rerun_the_same() -> None:
    seeds = {problem_seed(0, "testbed:arith", f"p{i}") for i in range(200)}
    assert len(seeds) == 200
    assert problem_seed(0, "d", "p1") == problem_seed(0, "d", "p1") != problem_seed(1, "d", "p1")


def test_solve_closes_the_run_it_opened(database_url: str) -> None:
    models = ModelSettings(proposer="hostile:x")

    outcome = solve_question(
        "What is 3+3?", strategy="majority", values={"budget": 2}, models=models, database=database_url
    )

    with connect(database_url)() as session:
        assert session.scalar(select(Run.status).where(Run.id == outcome.run_id)) == "done"
    dispose(database_url)
