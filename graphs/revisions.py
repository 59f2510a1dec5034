"""Sequential revisions: parallel chains, each answer revised given the chain's last ≤4 answers.

N = chains × chain_length. The final answer is selected across each whole chain (revisions can
break a correct answer): hierarchically with the PRM, or by one flat majority vote. With `early_stop`
set, a settle node between revision rounds stops the chains once their answers agree.
"""

from __future__ import annotations

from functools import partial

from langgraph.graph import END, START, StateGraph

from graphs.early_stopping import add_settle
from graphs.runner import StrategyGraph
from graphs.settings import RevisionSettings
from ttc_nodes.revise import revise, start_chains
from ttc_nodes.state import SolveContext, SolveState
from ttc_nodes.verify import verify_chains
from ttc_nodes.vote import select_from_chains


def build(settings: RevisionSettings) -> StrategyGraph:
    assert settings.chains is not None and settings.chain_length is not None
    length = settings.chain_length
    graph = StateGraph(SolveState, context_schema=SolveContext)
    graph.add_node(
        "start",
        partial(
            start_chains,
            chains=settings.chains,
            max_tokens=settings.max_answer_tokens,
            temperature=settings.temperature,
        ),
    )
    graph.add_node("revise", partial(revise, max_tokens=settings.max_answer_tokens, temperature=settings.temperature))
    verifying = settings.selection == "verifier"
    after_chains = "verify" if verifying else "select"
    if verifying:
        graph.add_node("verify", partial(verify_chains, aggregation=settings.aggregation))
        graph.add_edge("verify", "select")
    graph.add_node("select", partial(select_from_chains, method=settings.selection))

    def chains_growing(state: SolveState) -> str:
        """Revise until every chain holds chain_length answers."""
        return "revise" if len(state["chains"][0]) < length else after_chains

    graph.add_edge(START, "start")
    if settings.early_stop != "off":
        # Scores come only after the chains end, so the rounds settle on a count of all answers so far.
        add_settle(graph, settings, after=["start", "revise"], again="revise", done=after_chains, source="chains")
    else:
        graph.add_conditional_edges("start", chains_growing, ["revise", after_chains])
        graph.add_conditional_edges("revise", chains_growing, ["revise", after_chains])
    graph.add_edge("select", END)
    return graph.compile(name="revisions")
