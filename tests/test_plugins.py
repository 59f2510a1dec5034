"""User strategies from outside the package: a module or file named with `--plugin`, or an installed
package's `ttc.strategies` entry point, registered like a built-in strategy."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from graphs import registry
from graphs.plugins import PluginError, load_plugins

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "top_half_majority.py"

# A user strategy in a few lines: the built-in majority vote under another name.
PLUGIN_SOURCE = """
from graphs import majority, registry
from graphs.settings import MajoritySettings

def register():
    registry.register("{name}", MajoritySettings, majority.build, "a plug-in's majority vote")
"""


# The modules the tests import as plug-ins, forgotten after each test so the next imports them afresh.
PLUGIN_MODULES = ("examples", "examples.top_half_majority", "top_half_majority", "fake_plugin_strategies")


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """The registry as it was before each test: its registrations undone, strategies it replaced back."""
    before = {s.name: s for s in registry.all_strategies()}
    yield
    for name in PLUGIN_MODULES:
        sys.modules.pop(name, None)
    for strategy in registry.all_strategies():
        if before.get(strategy.name) is not strategy:
            registry.unregister(strategy.name)
    for name, s in before.items():
        if name not in registry.names():
            registry.register(
                name, s.settings, s.build, s.summary, reviser=s.reviser, stepwise=s.stepwise, pool_vote=s.pool_vote
            )


def test_the_example_loads_by_module_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLE.parents[1])
    assert load_plugins(["examples.top_half_majority"]) == ["top_half_majority"]
    assert registry.get("top_half_majority").summary == "PRM keeps the best half, then majority vote"


def test_the_example_loads_by_file_path_once_per_process() -> None:
    assert load_plugins([str(EXAMPLE)]) == ["top_half_majority"]
    assert "top_half_majority" in registry.names()
    assert load_plugins([str(EXAMPLE)]) == []  # already imported: nothing registers again


def test_a_broken_plugin_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("import graphs\nraise RuntimeError('no GPU\\nin sight')\n")
    with pytest.raises(PluginError) as refused:
        load_plugins([str(broken)])
    assert "\n" not in str(refused.value)
    assert str(broken) in str(refused.value) and "RuntimeError: no GPU in sight" in str(refused.value)
    with pytest.raises(PluginError, match=r"'no_such_plugin_module' failed to import: ModuleNotFoundError"):
        load_plugins(["no_such_plugin_module"])


def test_an_unknown_strategy_suggests_a_plugin() -> None:
    with pytest.raises(registry.UnknownStrategy, match=r"unknown strategy 'teleport'.*--plugin MODULE"):
        registry.get("teleport")


def fake_package(root: Path, strategy: str, entry_point: str) -> None:
    """An installed package `fake_plugin` whose `ttc.strategies` entry point is `entry_point`."""
    (root / "fake_plugin_strategies.py").write_text(PLUGIN_SOURCE.format(name=strategy))
    info = root / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake_plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(f"""
            [ttc.strategies]
            fake = {entry_point}
        """)
    )


def test_an_installed_entry_point_is_found_by_get_without_any_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_package(tmp_path, "entry_point_majority", "fake_plugin_strategies:register")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "entry_point_majority" not in registry.names()
    assert registry.get("entry_point_majority").summary == "a plug-in's majority vote"


def test_an_entry_point_naming_a_module_registers_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_package(tmp_path, "module_majority", "fake_plugin_strategies")
    (tmp_path / "fake_plugin_strategies.py").write_text(PLUGIN_SOURCE.format(name="module_majority") + "register()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins() == ["module_majority"]


def test_a_broken_entry_point_is_named_but_hides_no_other_strategy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_package(tmp_path, "unused", "fake_plugin_strategies:no_such_function")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins() == []
    assert registry.get("majority").name == "majority"
    with pytest.raises(
        registry.UnknownStrategy, match=r"plug-in fake = fake_plugin_strategies:no_such_function failed"
    ):
        registry.get("teleport")
