"""Property: no strategy ever spends more generations than its budget, whatever the settings and
however often candidates finish early."""

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from graphs import registry
from graphs.registry import SettingsError
from graphs.runner import run_graph
from tests.scripted import ScriptedProposer, ScriptedVerifier
from ttc_nodes.state import SolveContext

STEPWISE = {"beam", "lookahead", "dvts", "particle_filtering"}


@st.composite
def plans(draw):
    name = draw(st.sampled_from(registry.names()))
    budget = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64]))
    values: dict = {"budget": budget}
    if name in {"beam", "lookahead", "dvts"}:
        values["beam_width"] = draw(st.sampled_from([1, 2, 4, 8]))
        values["max_rounds"] = draw(st.integers(1, 12))
    if name == "lookahead":
        values["lookahead"] = draw(st.sampled_from([1, 3]))
    if name == "particle_filtering":
        values["max_rounds"] = draw(st.integers(1, 12))
        values["resample_temperature"] = draw(st.sampled_from([0.1, 1.0, 5.0]))
    if name == "revisions":
        values["chains"] = draw(st.sampled_from([c for c in (1, 2, 4, 8) if budget % c == 0]))
        values["selection"] = draw(st.sampled_from(["verifier", "majority"]))
    if name == "mcts":
        values["expansions"] = draw(st.integers(1, 8))
        values["max_iterations"] = draw(st.integers(1, 40))
        values["rollout"] = draw(st.booleans())
    values["aggregation"] = draw(st.sampled_from(["last", "min", "prod"]))
    return name, values


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans(), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_no_strategy_spends_more_than_its_budget(plan, finish_rate, seed):
    name, values = plan
    try:
        strategy_settings = registry.get(name).configure(values)
    except SettingsError:
        assume(False)
    proposer = ScriptedProposer(finish_rate=finish_rate)
    context = SolveContext(proposer=proposer, verifier=ScriptedVerifier(), reviser=proposer, seed=seed)
    result = run_graph(registry.compile_graph(name, strategy_settings), "q?", context)

    budget = strategy_settings.budget
    assert 0 < result.spend.generations <= budget
    sampled = [len(prompts) * n for prompts, n, temperature in proposer.calls if temperature > 0]
    if name == "mcts":
        # One lane per leaf of the tree (ttc_nodes/mcts.py), plus k rollout lanes reused every round.
        tree = result.state["tree"]
        leaves = len(tree) - len({c.parent for c in tree.values() if c.parent is not None})
        reserve = strategy_settings.expansions if strategy_settings.rollout else 0
        assert max(sampled) <= strategy_settings.expansions
        assert result.spend.generations == leaves + reserve
    elif name in STEPWISE:
        # Peak parallel lanes, each lookahead lane carrying k greedy rollout lanes beside it.
        lanes = getattr(strategy_settings, "beams", budget)
        assert max(sampled) <= lanes
        assert result.spend.generations == max(sampled) * (getattr(strategy_settings, "lookahead", 0) + 1)
    else:
        assert sum(sampled) == budget == result.spend.generations
    assert result.spend.tokens > 0 and result.spend.flops > 0


def test_lookahead_costs_n_times_k_plus_one_generations():
    proposer = ScriptedProposer(finish_rate=0.0)
    context = SolveContext(proposer=proposer, verifier=ScriptedVerifier(), seed=1)
    chosen = registry.get("lookahead").configure({"budget": 16, "lookahead": 3, "beam_width": 2, "max_rounds": 3})
    result = run_graph(registry.compile_graph("lookahead", chosen), "q?", context)
    assert result.spend.generations == 16
    rollout_calls = [n for prompts, n, temperature in proposer.calls if temperature == 0 and len(prompts) == 4]
    assert len(rollout_calls) >= 3  # k greedy rollout steps in each round, all 4 beams batched
