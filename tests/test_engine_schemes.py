"""URI schemes come from `register_scheme` or from `ttc.engines` entry points, the testbed's included:
the engines themselves know no testbed (nor graphs, flows or the database)."""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from ttc_nodes.engines import Completion, EngineError, Proposer, load_proposer, load_verifier, register_scheme, uris
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling

ENGINES = Path(uris.__file__).resolve().parent
ROOT = ENGINES.parents[1]
ABOVE_THE_ENGINES = ("ttc_nodes.testbed", "graphs", "flows", "db")


class EchoProposer(BatchedProposer):
    """A user's engine: completes every prompt with one word, `max_batch` rows at a time."""

    parameters = 0

    def __init__(self, word: str, uri: str, max_batch: int = 2) -> None:
        self.word, self.uri, self.max_batch = word, uri, max_batch
        self.batches: list[int] = []

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        self.batches.append(len(rows))
        done = Completion(self.word, 1, 1, 0.0, "stop")
        return [[done] * sampling.samples for _ in rows]


def echo(location: str, options: dict[str, str], uri: str) -> EchoProposer:
    return EchoProposer(location, uri, **{key: int(value) for key, value in options.items()})


registered: list[str] = []


def register_echo() -> None:
    """A plug-in's entry point."""
    registered.append("echo")
    register_scheme("echo", proposer=echo)


def register_nothing() -> None:
    raise ImportError("no module named 'missing_backend'")


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheme registry as a new process finds it: no scheme registered, no entry point read."""
    monkeypatch.setattr(uris, "_proposer_loaders", {})
    monkeypatch.setattr(uris, "_verifier_loaders", {})
    monkeypatch.setattr(uris, "_cache", {})
    monkeypatch.setattr(uris, "_plugins_loaded", False)
    monkeypatch.setattr(uris, "_plugin_failures", {})
    registered.clear()


def plugins(monkeypatch: pytest.MonkeyPatch, *targets: str) -> None:
    """Make `targets` (name=module:function) the only `ttc.engines` entry points installed."""
    found = [EntryPoint(*target.split("=", 1), group=uris.ENTRY_POINTS) for target in targets]
    monkeypatch.setattr(uris.importlib.metadata, "entry_points", lambda group: found)


def test_a_scheme_registered_in_code_loads_by_uri_once(fresh_registry: None) -> None:
    register_scheme("echo", proposer=echo)
    engine = load_proposer("echo:hello?max_batch=2")
    assert isinstance(engine, Proposer) and isinstance(engine, EchoProposer)
    assert load_proposer("echo:hello?max_batch=2") is engine
    assert (
        engine.generate(["a", "b", "c"], 2, max_tokens=4, temperature=1.0)
        == [[Completion("hello", 1, 1, 0.0, "stop")] * 2] * 3
    )
    assert (engine.uri, engine.batches) == ("echo:hello?max_batch=2", [2, 2, 2])


def test_a_scheme_from_an_entry_point_loads_the_first_time_it_is_asked_for(
    fresh_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins(monkeypatch, f"echo={__name__}:register_echo")
    with pytest.raises(EngineError, match="/does/not/exist"):
        load_proposer("hf:/does/not/exist")  # a known scheme reads no entry point
    assert registered == []
    assert isinstance(load_proposer("echo:hi"), EchoProposer)
    assert registered == ["echo"]


def test_entry_points_are_read_once_per_process_whatever_the_threads(
    fresh_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins(monkeypatch, f"echo={__name__}:register_echo")
    threads = [threading.Thread(target=load_proposer, args=(f"echo:{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with pytest.raises(ValueError, match="'nope'"):
        load_proposer("nope:x")
    assert registered == ["echo"]


def test_a_scheme_registered_in_code_wins_over_a_plug_in_of_the_same_name(
    fresh_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins(monkeypatch, f"echo={__name__}:register_echo")
    mine = EchoProposer("mine", "echo:x")
    register_scheme("echo", proposer=lambda location, options, uri: mine)
    with pytest.raises(ValueError):
        load_proposer("other:x")  # reads the entry points, which register echo again
    assert registered == ["echo"]
    assert load_proposer("echo:x") is mine


def test_an_unknown_scheme_lists_the_known_ones_and_names_a_broken_plug_in(
    fresh_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins(monkeypatch, f"echo={__name__}:register_echo", f"warp={__name__}:register_nothing")
    with pytest.raises(ValueError) as caught:
        load_proposer("warp:x")
    message = str(caught.value)
    assert "\n" not in message
    assert "unknown proposer scheme 'warp' in 'warp:x'; known schemes: echo, gguf, hf, openai, vllm" in message
    assert "plug-in 'warp' failed: ImportError: no module named 'missing_backend'" in message
    assert isinstance(load_proposer("echo:still-works"), EchoProposer)


def test_the_testbed_scheme_is_an_installed_entry_point() -> None:
    [entry] = [entry for entry in entry_points(group=uris.ENTRY_POINTS) if entry.name == "testbed"]
    assert entry.value == "ttc_nodes.testbed.scheme:register"


def test_testbed_uris_resolve_through_the_entry_point(fresh_registry: None) -> None:
    proposer = load_proposer("testbed:proposer?max_batch=4")
    assert (proposer.uri, getattr(proposer, "max_batch", None)) == ("testbed:proposer?max_batch=4", 4)
    assert load_verifier("testbed:prm").uri == "testbed:prm"
    assert uris._plugins_loaded


def test_a_new_process_imports_the_testbed_only_when_a_testbed_uri_is_loaded() -> None:
    script = """
import importlib, pkgutil, sys
import ttc_nodes.engines
from ttc_nodes.engines import load_proposer
for module in pkgutil.iter_modules(ttc_nodes.engines.__path__):
    importlib.import_module(f"ttc_nodes.engines.{module.name}")
before = [name for name in sys.modules if name.startswith("ttc_nodes.testbed")]
engine = load_proposer("testbed:proposer")
print(before, engine.uri, "ttc_nodes.testbed.scheme" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["[]", "testbed:proposer", "True"]


def engine_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at module level or inside a function."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path.name}:{node.lineno}: a relative import"
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("path", sorted(ENGINES.glob("*.py")), ids=lambda path: path.name)
def test_no_engine_module_imports_the_layers_above_it(path: Path) -> None:
    above = [
        f"{path.name}:{line}: {module}"
        for line, module in engine_imports(path)
        if any(module == layer or module.startswith(f"{layer}.") for layer in ABOVE_THE_ENGINES)
    ]
    assert above == []
