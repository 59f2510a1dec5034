"""Strategies as pictures: the drawings in docs/strategies.md and the topology snapshot follow the graphs.

When a strategy's graph changes on purpose, regenerate both:

    make docs                                                        # docs/strategies.md
    TTC_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_graph_drawing.py   # the snapshot

The snapshot, tests/snapshots/strategy_graphs.json, holds each built-in strategy's nodes and
(source, target, conditional) edges; a test naming the strategy and what was added or removed fails
until it is regenerated.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graphs import drawing, majority, registry
from graphs.settings import MajoritySettings

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "strategies.md"
SNAPSHOT = ROOT / "tests" / "snapshots" / "strategy_graphs.json"
UPDATE = os.environ.get("TTC_UPDATE_SNAPSHOTS") == "1"


def as_json(topology: drawing.Topology) -> dict[str, Any]:
    return {"nodes": topology["nodes"], "edges": [list(edge) for edge in topology["edges"]]}


@pytest.fixture(scope="module")
def snapshot() -> dict[str, Any]:
    if UPDATE:
        current = {name: as_json(drawing.topology(name)) for name in drawing.BUILT_IN}
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(current, indent=2, sort_keys=True)
        # One edge a line, so a changed graph reads as a one-line diff.
        text = re.sub(r'\[\s+("[^"]*"),\s+("[^"]*"),\s+(true|false)\s+\]', r"[\1, \2, \3]", text)
        SNAPSHOT.write_text(text + "\n", encoding="utf-8")
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


@pytest.fixture
def user_strategy(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A strategy registered as a user would, removed again afterwards (the registry has no unregister)."""
    monkeypatch.setattr(registry, "_strategies", dict(registry._strategies))
    registry.register("drawn_user_majority", MajoritySettings, majority.build, "a user's majority vote")
    yield "drawn_user_majority"
    registry._compiled.cache_clear()


def test_built_in_list_is_every_strategy_the_registry_registers() -> None:
    # A fresh interpreter: strategies registered by other tests (the example's) are not built in.
    names = subprocess.run(
        [sys.executable, "-c", "import json; from graphs import registry; print(json.dumps(registry.names()))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout

    assert json.loads(names) == list(drawing.BUILT_IN)


def test_docs_section_is_what_the_generator_draws_now() -> None:
    documented = drawing.generated_part(PAGE.read_text(encoding="utf-8"))

    assert documented == drawing.section(), (
        "docs/strategies.md's strategy graphs are out of date with graphs/: run `make docs`"
    )


def test_generator_leaves_the_rest_of_the_page_alone_and_is_stable() -> None:
    page = "# Title\n\nprose\n\n" + drawing.BEGIN + "\nold drawing\n" + drawing.END + "\n\nmore prose\n"

    once = drawing.with_section(page, drawing.section(("majority",)))

    assert once.startswith("# Title\n\nprose\n\n" + drawing.BEGIN + "\n")
    assert once.endswith(drawing.END + "\n\nmore prose\n")
    assert "old drawing" not in once and "### majority\n" in once
    assert drawing.with_section(once, drawing.section(("majority",))) == once


def test_a_page_without_markers_is_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="BEGIN strategy graphs"):
        drawing.generated_part("# no markers here\n")


def test_snapshot_covers_exactly_the_built_in_strategies(snapshot: dict[str, Any]) -> None:
    assert sorted(snapshot) == sorted(drawing.BUILT_IN), "rerun with TTC_UPDATE_SNAPSHOTS=1"


@pytest.mark.parametrize("name", drawing.BUILT_IN)
def test_strategy_topology_matches_its_snapshot(name: str, snapshot: dict[str, Any]) -> None:
    now = drawing.topology(name)
    then = snapshot.get(name, {"nodes": [], "edges": []})
    nodes_now, nodes_then = set(now["nodes"]), set(then["nodes"])
    edges_now, edges_then = set(now["edges"]), {tuple(edge) for edge in then["edges"]}

    if (nodes_now, edges_now) != (nodes_then, edges_then):
        pytest.fail(
            f"strategy {name!r}: its graph changed: "
            f"nodes added {sorted(nodes_now - nodes_then)}, removed {sorted(nodes_then - nodes_now)}; "
            f"edges added {sorted(edges_now - edges_then)}, removed {sorted(edges_then - edges_now)}. "
            f"If intended, rerun with TTC_UPDATE_SNAPSHOTS=1 and run `make docs`."
        )


def declares(text: str, node: str) -> bool:
    """Whether Mermaid text declares the node on a line of its own (`expand(expand)`)."""
    return re.search(rf"^\s*{re.escape(node)}[(\[]", text, re.MULTILINE) is not None


@pytest.mark.parametrize("name", drawing.BUILT_IN)
def test_mermaid_declares_every_node_and_draws_every_edge(name: str) -> None:
    text = drawing.mermaid(name)
    shape = drawing.topology(name)

    assert shape["nodes"], name
    for node in shape["nodes"]:
        assert declares(text, node), f"{name}: node {node!r} missing from\n{text}"
    for source, target, conditional in shape["edges"]:
        arrow = "-.->" if conditional else "-->"
        assert f"{source} {arrow} {target};" in text, f"{name}: edge {source} {arrow} {target} missing"


def test_topology_is_sorted_and_starts_and_ends_at_langgraphs_own_nodes() -> None:
    shape = drawing.topology("beam")

    assert shape["nodes"] == sorted(shape["nodes"]) and shape["edges"] == sorted(shape["edges"])
    assert {"__start__", "__end__"} <= set(shape["nodes"])
    assert ("prune", "expand", True) in shape["edges"]


def test_settings_can_be_given_and_default_to_the_drawn_budget() -> None:
    lookahead = registry.get("lookahead").configure({"budget": 8, "lookahead": 3})

    assert drawing.topology("lookahead", lookahead)["nodes"] == drawing.topology("lookahead")["nodes"]
    assert drawing.mermaid("majority") == drawing.mermaid("majority", MajoritySettings(budget=drawing.DRAWN_BUDGET))


def test_a_user_registered_strategy_can_be_drawn(user_strategy: str) -> None:
    text = drawing.mermaid(user_strategy)
    shape = drawing.topology(user_strategy)

    assert shape == drawing.topology("majority")
    assert all(declares(text, node) for node in shape["nodes"])
    assert user_strategy not in drawing.section()


def test_user_strategy_is_gone_from_the_registry_after_its_test() -> None:
    assert "drawn_user_majority" not in registry.names()


def test_an_unknown_strategy_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(registry.UnknownStrategy, match="known: beam"):
        drawing.mermaid("no_such_strategy")
