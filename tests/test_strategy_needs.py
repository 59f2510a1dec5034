"""A strategy declares what it needs when it is registered: a reviser is loaded for a strategy that
revises, and one whose answer is one vote over N samples is calibrated off the shared pool, for a
user's strategy exactly as for a built-in one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from db import queries
from db.session import connect
from flows.pipelines.calibrate import Calibration, read_pool_plans
from flows.policy.grid import plan_grid, pool_plans
from flows.service.config import ModelSettings
from flows.service.solving import engines_for, solve_question
from graphs import best_of_n, registry, revisions
from graphs.settings import BestOfNSettings, RevisionSettings
from ttc_nodes.vote import vote_samples

REVISING = {"budget": 4, "chains": 1, "max_answer_tokens": 32}


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Strategies a test registers are unregistered afterwards."""
    before = set(registry.names())
    yield
    for name in set(registry.names()) - before:
        registry.unregister(name)


@pytest.fixture
def testbed() -> ModelSettings:
    """The testbed checkpoints, with a reviser URI other than the default `testbed:reviser`."""
    return ModelSettings(
        proposer="testbed:proposer", verifier="testbed:prm", reviser="testbed:reviser?max_batch=4", seed=1
    )


def test_built_in_strategies_declare_what_they_need() -> None:
    needs = {s.name: (s.reviser, s.stepwise, s.pool_vote) for s in registry.all_strategies()}
    assert needs["revisions"] == (True, False, None)
    assert all(needs[name][1] for name in ("beam", "lookahead", "dvts", "particle_filtering"))
    assert pool_plans() == {"best_of_n": "best_of_n", "best_of_n_weighted": "weighted", "majority": "majority"}


def test_a_user_strategy_that_revises_gets_the_reviser_it_is_given(testbed: ModelSettings, database_url: str) -> None:
    registry.register("my_revisions", RevisionSettings, revisions.build, "my chains of revisions", reviser=True)
    context = engines_for("my_revisions", registry.get("my_revisions").configure(REVISING), testbed)
    assert context.reviser is not None and context.reviser.uri == "testbed:reviser?max_batch=4"
    assert context.proposer.uri == "testbed:proposer"

    outcome = solve_question(
        "What is 12 + 7?", strategy="my_revisions", values=REVISING, models=testbed, database=database_url
    )
    with connect(database_url)() as session:
        [trace] = queries.trace_of(session, outcome.run_id)
    assert trace.strategy == "my_revisions" and trace.status == "done"
    assert [c.kind for c in trace.candidates].count("revision") == 3


def test_a_strategy_registered_without_reviser_gets_none_loaded(testbed: ModelSettings) -> None:
    registry.register("undeclared_revisions", RevisionSettings, revisions.build)
    context = engines_for("undeclared_revisions", registry.get("undeclared_revisions").configure(REVISING), testbed)
    assert context.reviser is None


def test_a_user_strategy_with_a_pool_vote_is_calibrated_off_the_pool() -> None:
    registry.register("my_best_of_n", BestOfNSettings, best_of_n.build, pool_vote="best_of_n")
    assert pool_plans()["my_best_of_n"] == "best_of_n"
    request = Calibration(
        dataset="test",
        difficulty_samples=2,
        budgets=[1, 2],
        plans=plan_grid(["my_best_of_n", "beam M=sqrt"]),
        engines=ModelSettings(),
        problems=[],
        pool={"budget": 2},
        settings={},
    )
    pools = {"p": ([("4", 0.2), ("3", 0.9)], "3")}
    outcomes = read_pool_plans(pools, request, subsets=8)
    assert set(outcomes) == {("p", "my_best_of_n", 1), ("p", "my_best_of_n", 2)}
    assert outcomes[("p", "my_best_of_n", 2)] == 1.0  # both samples: the best-scored one is right


def test_a_pool_vote_must_be_a_vote_method() -> None:
    with pytest.raises(ValueError, match="pool_vote of 'odd_vote' must be one of majority, best_of_n, weighted"):
        registry.register("odd_vote", BestOfNSettings, best_of_n.build, pool_vote="plurality")  # type: ignore[arg-type]


def test_a_vote_over_bare_samples_names_the_chosen_sample_by_its_index() -> None:
    samples = [("4", 0.9), ("3", 0.2), ("3", 0.3), (None, None)]
    assert vote_samples(samples, "majority").chosen == "1"
    assert vote_samples(samples, "best_of_n").chosen == "0"
    weighted = vote_samples(samples, "weighted")
    assert (weighted.answer, weighted.chosen) == ("4", "0")


def test_shared_calibration_settings_join_every_plan_and_refuse_a_conflict() -> None:
    grid = plan_grid(["majority", "beam M=4"], {"max_answer_tokens": 12})
    assert grid["beam M=4"].settings == {"beam_width": 4, "max_answer_tokens": 12}
    assert grid["majority"].settings == {"max_answer_tokens": 12}
    with pytest.raises(ValueError, match=r"beam_width=2 conflicts with plan 'beam M=4', which sets beam_width=4"):
        plan_grid(["beam M=4"], {"beam_width": 2})
    with pytest.raises(ValueError, match=r"'beam_width' is not a setting of plan 'majority'"):
        plan_grid(["majority"], {"beam_width": 2})
