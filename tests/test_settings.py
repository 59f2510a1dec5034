import pytest

from graphs import registry
from graphs.registry import SettingsError, UnknownStrategy
from graphs.settings import BeamSettings, LookaheadSettings, RevisionSettings, default_beam_width


def configure(name: str, **values):
    return registry.get(name).configure(values)


@pytest.mark.parametrize("name", registry.names())
def test_budget_below_one_is_rejected_naming_the_field(name):
    with pytest.raises(SettingsError, match="budget"):
        configure(name, budget=0)


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
