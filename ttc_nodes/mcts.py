"""Monte-Carlo tree search over solution steps: select by PUCT, expand k next steps, evaluate by PRM
(optionally after a greedy rollout), back up the mean value, and pick the answer.

The tree lives in the state (`tree`: candidates by key, with parents, so the trace rebuilds it) and
its statistics beside it (`visits`, `value_sums`), keyed by candidate key; the virtual root, the
question itself, is `ROOT`. Every new node is evaluated once when it is made, so after each backup

    visits(node) = 1 + Σ visits(children)      (the root: Σ visits(children))

and a node's value is the mean evaluation over its subtree.

Budget: a lane is a sequence slot that lasts across rounds (ttc_nodes/budget.py). A leaf's first
child continues the leaf's lane, each further child opens one, so the search costs the number of
leaves of its tree (+ k lanes for rollouts, P·k when P leaves are expanded at once, reused every
round), and a one-child expansion is free.

Batched iterations (`parallel` = P > 1): select_leaf picks up to P distinct leaves, each by PUCT after
a virtual loss on the paths picked before it (one visit of value 0 each, so the next pick looks
elsewhere; Chaslot et al. 2008), and expand samples all of their steps in one proposer call. Backup
then adds each leaf's children to that leaf's path. P = 1 is the one-leaf search, unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, Literal

from ttc_nodes.budget import new_lanes
from ttc_nodes.propose import call_spend, generate_counts, step_candidate
from ttc_nodes.scoring import Aggregation
from ttc_nodes.state import Candidate, NodeRuntime, SolveState
from ttc_nodes.verify import detail_of, scored_with_results
from ttc_nodes.vote import Selection, _selected, vote

ROOT = "root"
"""The key of the virtual root (the question, no step yet) in `visits` and `value_sums`."""

Prior = Literal["logprob", "uniform"]
FinalRule = Literal["most_visited", "weighted_vote"]


def merged(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, Any]:
    """Reducer for keyed tables: the update's entries replace the state's."""
    return {**left, **right}


class MCTSState(SolveState, total=False):
    """The solve state with the search tree and its statistics."""

    tree: Annotated[dict[str, Candidate], merged]
    visits: Annotated[dict[str, int], merged]
    value_sums: Annotated[dict[str, float], merged]
    selected: str  # the first of `leaves`
    leaves: list[str]  # the leaves this iteration expands, in the order they were picked
    iterations: int


def children_of(tree: Mapping[str, Candidate], key: str) -> list[Candidate]:
    """The children of `key` (ROOT for first steps) in the order they were made."""
    parent = None if key == ROOT else key
    return [c for c in tree.values() if c.parent == parent]


def exhausted(tree: Mapping[str, Candidate], key: str, taken: frozenset[str] = frozenset()) -> bool:
    """No live leaf below `key`: every path under it has finished (or its leaves are `taken` by this
    iteration already), so selecting it would add nothing."""
    if key in taken or (key != ROOT and tree[key].finished):
        return True
    children = children_of(tree, key)
    return bool(children) and all(exhausted(tree, c.key, taken) for c in children)


def priors(children: Sequence[Candidate], prior: Prior) -> list[float]:
    """P(child): a softmax of the siblings' step log-probabilities, or 1/m for m siblings."""
    if prior == "uniform":
        return [1.0 / len(children)] * len(children)
    top = max(c.logprob for c in children)
    weights = [math.exp(c.logprob - top) for c in children]
    return [w / sum(weights) for w in weights]


def puct(value: float, prior: float, parent_visits: int, visits: int, c_puct: float) -> float:
    """Q + c · P · √N(parent) / (1 + N(child)) (Silver et al. 2017); P = 1/m makes it UCT."""
    return value + c_puct * prior * math.sqrt(parent_visits) / (1 + visits)


def select_leaf(
    state: MCTSState, runtime: NodeRuntime, *, c_puct: float, prior: Prior, parallel: int = 1
) -> dict[str, Any]:
    """Walk down from the root by the highest PUCT score among children with a live leaf below, to
    a leaf; ties go to the child made first. With `parallel` P, walk up to P times, each after a
    virtual loss (a visit of value 0) on the paths walked before, to P distinct leaves."""
    tree = state.get("tree", {})
    visits, sums = dict(state.get("visits", {})), state.get("value_sums", {})
    leaves: list[str] = []
    paths: list[list[str]] = []
    while len(leaves) < parallel and not exhausted(tree, ROOT, frozenset(leaves)):
        taken = frozenset(leaves)
        key, path = ROOT, [ROOT]
        while siblings := children_of(tree, key):
            # Priors over all siblings; only those with a live leaf below can be chosen.
            options = [
                (c, p)
                for c, p in zip(siblings, priors(siblings, prior), strict=True)
                if not exhausted(tree, c.key, taken)
            ]
            if not options:
                break
            scores = [puct(sums[c.key] / visits[c.key], p, visits[key], visits[c.key], c_puct) for c, p in options]
            children = [c for c, _ in options]
            key = children[max(range(len(children)), key=lambda i: (scores[i], -i))].key
            path.append(key)
        leaves.append(key)
        paths.append(path)
        for node in path:  # the virtual loss: the next walk sees this path visited once more, for nothing
            visits[node] = visits.get(node, 0) + 1
        if key == ROOT:  # the first iteration: one expansion of the question
            break
    detail: dict[str, Any] = {"selected": leaves[0], "path": paths[0]}
    if parallel > 1:
        detail |= {"leaves": leaves, "paths": paths}
    return {"selected": leaves[0], "leaves": leaves, "detail": detail}


def expand_leaf(
    state: MCTSState,
    runtime: NodeRuntime,
    *,
    budget: int,
    expansions: int,
    rollout: bool,
    max_tokens: int,
    temperature: float,
    parallel: int = 1,
) -> dict[str, Any]:
    """Sample the next steps of each selected leaf, in one proposer call: k of them while the budget
    has lanes for them, then as many as are left (at least one, which continues the leaf's own lane
    for free). Leaves are served in the order they were picked. Rollouts reserve k lanes per leaf an
    iteration may expand (P·k)."""
    context = runtime.context
    round_number = state.get("round", 0) + 1
    tree = state.get("tree", {})
    keys = state.get("leaves") or [state.get("selected", ROOT)]
    leaves = len(tree) - len({c.parent for c in tree.values() if c.parent is not None})
    reserve = expansions * parallel if rollout else 0
    parents: list[Candidate | None] = []
    counts: list[int] = []
    for key in keys:
        leaf = None if key == ROOT else tree[key]
        # The first k steps open k lanes; k children of a leaf open k − 1, and the budget left may allow fewer.
        count = expansions if leaf is None else max(1, min(expansions, budget - reserve - leaves + 1))
        leaves += count - (1 if leaf is not None else 0)
        parents.append(leaf)
        counts.append(count)
    prompts = [context.prompt_format.solution(state["question"], leaf.steps if leaf else ()) for leaf in parents]
    batches = generate_counts(
        context.proposer,
        prompts,
        counts,
        max_tokens=max_tokens,
        temperature=temperature,
        stop=[context.prompt_format.step_separator],
        seed=context.seed_for("mcts", round_number),
    )
    made = [
        (leaf, completion) for leaf, completions in zip(parents, batches, strict=True) for completion in completions
    ]
    children = [
        step_candidate(completion, leaf, key=f"{round_number}.{index}", round=round_number)
        for index, (leaf, completion) in enumerate(made)
    ]
    lanes_before = state.get("lanes", 0)
    lanes_now = leaves + reserve
    completions = [completion for _, completion in made]
    detail: dict[str, Any] = {"expanded": keys[0], "children": len(children)}
    if len(keys) > 1:
        detail |= {"leaves": keys, "children_per_leaf": counts}
    return {
        "pool": children,
        "tree": {c.key: c for c in children},
        "round": round_number,
        "lanes": max(lanes_before, lanes_now),
        "spend": call_spend(context.proposer, completions, generations=new_lanes(lanes_before, lanes_now)),
        "detail": detail,
    }


def evaluate_children(
    state: MCTSState, runtime: NodeRuntime, *, aggregation: Aggregation, rollout: bool, max_tokens: int
) -> dict[str, Any]:
    """Score each new step prefix with the PRM; with `rollout`, each unfinished one is first rolled out
    greedily to an answer (recorded as its `rollout` child) and valued by the rollout's score."""
    context = runtime.context
    verifier = context.require_verifier("evaluate")
    question = state["question"]
    children = list(state.get("pool", []))
    scored, spend, results = scored_with_results(question, children, verifier, aggregation)
    ends: list[Candidate] = []
    rolled: list[Any] = []
    if rollout and (live := [c for c in scored if not c.finished]):
        completions = context.proposer.generate(
            [context.prompt_format.solution(question, c.steps) for c in live],
            1,
            max_tokens=max_tokens,
            temperature=0.0,
            seed=context.seed_for("mcts-rollout", state.get("round", 0)),
        )
        rolled = [c[0] for c in completions]
        spend += call_spend(context.proposer, rolled, generations=0)
        tips = []
        for child, completion in zip(live, rolled, strict=True):
            tip = step_candidate(completion, child, key=f"{child.key}+", round=child.round, kind="rollout")
            rest = tuple(context.prompt_format.split_steps(tip.text)) or (tip.text,)
            tips.append(replace(tip, steps=(*child.steps, *rest), finished=True))
        ends, verifier_cost, more = scored_with_results(question, tips, verifier, aggregation)
        spend += verifier_cost
        results = [*results, *more]
    value_of = {c.key: c.score or 0.0 for c in scored}
    value_of.update({end.parent or "": end.score or 0.0 for end in ends})
    return {
        "pool": scored,
        "tree": {c.key: c for c in scored},
        "rollouts": ends,
        "spend": spend,
        "detail": {"values": value_of, **detail_of(verifier=results, rollouts=rolled).get("detail", {})},
    }


def backup(state: MCTSState, runtime: NodeRuntime) -> dict[str, Any]:
    """Each new child counts one visit with its own value; its leaf and the leaf's ancestors up to
    the root count one visit per new child and add the children's values (a mean, per node)."""
    tree = state.get("tree", {})
    visits, sums = dict(state.get("visits", {})), dict(state.get("value_sums", {}))
    children = list(state.get("pool", []))
    values = {end.parent: end.score or 0.0 for end in state.get("rollouts", [])}
    value_of = {c.key: values.get(c.key, c.score or 0.0) for c in children}
    changed = set(value_of)
    for key, value in value_of.items():
        visits[key], sums[key] = 1, value
    below: dict[str, list[float]] = {}  # leaf -> its new children's values, leaves in the order picked
    for child in children:
        below.setdefault(child.parent or ROOT, []).append(value_of[child.key])
    for leaf, added in below.items():
        node: str | None = leaf
        while node is not None:
            visits[node] = visits.get(node, 0) + len(added)
            sums[node] = sums.get(node, 0.0) + sum(added)
            changed.add(node)
            node = None if node == ROOT else (tree[node].parent or ROOT)
    iterations = state.get("iterations", 0) + 1
    return {
        "visits": {k: visits[k] for k in changed},
        "value_sums": {k: sums[k] for k in changed},
        "iterations": iterations,
        "detail": {
            "visits": {k: visits[k] for k in sorted(changed)},
            "values": {k: sums[k] / visits[k] for k in sorted(changed)},
        },
    }


def searching(state: MCTSState, *, max_iterations: int) -> str:
    """The loop condition: go on while a live leaf remains and iterations are left."""
    if state.get("iterations", 0) >= max_iterations or exhausted(state.get("tree", {}), ROOT):
        return "select"
    return "select_leaf"


def most_visited(tree: Mapping[str, Candidate], visits: Mapping[str, int]) -> Candidate | None:
    """The end of the most-visited complete path: from the root, the most-visited child among those
    with a finished answer below, until a finished node (ties go to the child made first)."""

    def complete_below(key: str) -> bool:
        node = tree.get(key)
        if node is not None and node.finished:
            return node.answer is not None
        return any(complete_below(c.key) for c in children_of(tree, key))

    key = ROOT
    while True:
        options = [c for c in children_of(tree, key) if complete_below(c.key)]
        if not options:
            return None
        best = max(options, key=lambda c: (visits.get(c.key, 0), -options.index(c)))
        if best.finished:
            return best
        key = best.key


def select_answer(state: MCTSState, runtime: NodeRuntime, *, final: FinalRule) -> dict[str, Any]:
    """The answer of the most-visited complete path, or a best-of-N weighted vote over the finished
    leaves by PRM score; the detail keeps the final visits and values of every node."""
    tree, visits, sums = state.get("tree", {}), state.get("visits", {}), state.get("value_sums", {})
    leaves = [c for c in tree.values() if c.finished]
    if final == "weighted_vote":
        selection = vote(leaves, "weighted")
    else:
        end = most_visited(tree, visits)
        selection = (
            Selection(end.answer, end.key, {end.answer or "": float(visits[end.key])}) if end else Selection(None, None)
        )
    update = _selected(selection, final, len(leaves))
    update["detail"] |= {
        "visits": {k: visits[k] for k in sorted(visits)},
        "values": {k: sums[k] / visits[k] for k in sorted(visits)},
    }
    return {**update, "finished": leaves}
