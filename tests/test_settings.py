import time

import pytest

from graphs import registry
from graphs.registry import SettingsError, UnknownStrategy
from graphs.settings import (
    MAX_BUDGET,
    BeamSettings,
    DVTSSettings,
    LookaheadSettings,
    ParticleFilteringSettings,
    RevisionSettings,
    default_beam_width,
)


def configure(name: str, **values):
    return registry.get(name).configure(values)


@pytest.mark.parametrize("name", registry.names())
def test_budget_below_one_is_rejected_naming_the_field(name):
    with pytest.raises(SettingsError, match="budget"):
        configure(name, budget=0)


@pytest.mark.parametrize("name", registry.names())
@pytest.mark.parametrize("budget", [MAX_BUDGET + 1, 10**12, 10**18])
def test_budget_above_the_maximum_is_refused_naming_the_field_and_quickly(name, budget):
    begun = time.perf_counter()
    with pytest.raises(SettingsError, match=rf"budget: .*less than or equal to {MAX_BUDGET}"):
        configure(name, budget=budget)
    assert time.perf_counter() - begun < 1.0


@pytest.mark.parametrize("name", registry.names())
def test_the_maximum_budget_itself_is_accepted(name):
    assert configure(name, budget=MAX_BUDGET).budget == MAX_BUDGET == 4096


@pytest.mark.parametrize("name", registry.names())
def test_a_budget_that_is_not_a_number_is_refused_naming_the_field(name):
    with pytest.raises(SettingsError, match=r"budget: "):
        configure(name, budget="lots")


def test_the_comparison_choices_default_to_the_current_behaviour():
    assert (BeamSettings().refill, LookaheadSettings().refill) == (False, False)
    assert DVTSSettings().final_vote == "subtree_winners"
    assert ParticleFilteringSettings().final_vote == "unique"
    assert configure("beam", refill="true").refill is True  # --set refill=true arrives as JSON or text
    assert configure("lookahead", budget=16, refill=True).refill is True
    assert configure("dvts", final_vote="all_leaves").final_vote == "all_leaves"
    assert configure("particle_filtering", final_vote="multiplicity").final_vote == "multiplicity"


@pytest.mark.parametrize(
    ("name", "values", "field"),
    [
        ("beam", {"refill": "sometimes"}, "refill"),
        ("lookahead", {"budget": 16, "refill": 3}, "refill"),
        ("dvts", {"final_vote": "everyone"}, "final_vote"),
        ("dvts", {"final_vote": "multiplicity"}, "final_vote"),
        ("dvts", {"refill": True}, "refill"),
        ("particle_filtering", {"final_vote": "all_leaves"}, "final_vote"),
        ("particle_filtering", {"refill": True}, "refill"),
        ("best_of_n", {"final_vote": "unique"}, "final_vote"),
    ],
)
def test_bad_comparison_choices_are_refused_naming_the_field(name, values, field):
    with pytest.raises(SettingsError, match=rf"{field}: "):
        configure(name, **values)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(UnknownStrategy, match=r"known: .*beam"):
        registry.get("bogus")


def test_beam_width_defaults_to_root_n_and_must_divide_n():
    assert BeamSettings(budget=16).beam_width == 4
    assert BeamSettings(budget=8).beam_width == 2
    assert [default_beam_width(n) for n in (1, 2, 4, 64, 256)] == [1, 1, 2, 8, 16]
    with pytest.raises(SettingsError, match="beam_width M=3 does not divide"):
        configure("beam", budget=8, beam_width=3)


def test_lookahead_spends_n_times_k_plus_one():
    settings = LookaheadSettings(budget=16, lookahead=3)
    assert settings.beams * (settings.lookahead + 1) == 16
    with pytest.raises(SettingsError, match="multiple of lookahead"):
        configure("lookahead", budget=6, lookahead=3)


def test_revision_split_multiplies_to_the_budget():
    assert (
        RevisionSettings(budget=16, chains=4).chain_length,
        RevisionSettings(budget=16, chain_length=16).chains,
    ) == (4, 1)
    assert RevisionSettings(budget=8, chains=2).ratio == 2.0
    with pytest.raises(SettingsError, match="must equal budget"):
        configure("revisions", budget=8, chains=3, chain_length=2)


def test_unknown_setting_is_rejected():
    with pytest.raises(SettingsError, match="colour"):
        configure("majority", budget=4, colour="red")


def test_majority_needs_no_verifier_but_search_does():
    assert not configure("majority").needs_verifier
    assert configure("beam").needs_verifier
    assert not configure("revisions", budget=4, selection="majority").needs_verifier
