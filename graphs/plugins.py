"""Strategies from outside the package: plug-ins that register themselves with `graphs.registry`.

A plug-in is a module that calls `registry.register(...)` when imported. It is found two ways: an
installed package declares an entry point of group `ttc.strategies` (naming a module, or a callable
that registers), or a user names the module (`examples.top_half_majority`) or its file
(`examples/top_half_majority.py`) with `--plugin MODULE`. Each is imported once per process. A
module named with `--plugin` that fails raises PluginError; an installed entry point that fails is
logged and named when an unknown strategy is asked for, so it never hides the others' strategies.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType

from graphs import registry

GROUP = "ttc.strategies"  # the entry-point group of plug-in strategies

log = logging.getLogger(__name__)
_lock = threading.RLock()  # solves on several threads may all ask for an unknown strategy at once
_seen_entry_points: set[tuple[str, str]] = set()
_failures: dict[str, str] = {}  # entry point → why it could not register its strategies


class PluginError(ValueError):
    """A plug-in that failed to import, in one line naming it and the error."""


def load_plugins(modules: Sequence[str] = ()) -> list[str]:
    """Import every `ttc.strategies` entry point, then each of `modules` (a dotted name, importable
    from sys.path or the current directory, or a path to a `.py` file). The names of the strategies
    this call registered, sorted; a plug-in imported before in this process registers nothing again.
    A plug-in that fails to import raises PluginError."""
    return _registered_by(lambda: _import_all(modules))


def load_entry_points() -> list[str]:
    """Import the `ttc.strategies` entry points not imported yet; the strategies they registered."""
    return _registered_by(_import_entry_points)


def entry_point_failures() -> dict[str, str]:
    """Each `ttc.strategies` entry point that failed to load (`name = value`), with the error in one line."""
    return dict(_failures)


def _registered_by(load: Callable[[], None]) -> list[str]:
    before = {strategy.name: strategy for strategy in registry.all_strategies()}
    load()
    # A re-registered name counts too: `register` makes a new Strategy each time.
    return [s.name for s in registry.all_strategies() if before.get(s.name) is not s]


def _import_all(modules: Sequence[str]) -> None:
    _import_entry_points()
    for module in modules:
        _import_module(module)


def _import_entry_points() -> None:
    with _lock:
        importlib.invalidate_caches()  # a package installed since the last look is seen
        for entry in entry_points(group=GROUP):
            if (entry.name, entry.value) not in _seen_entry_points:
                _seen_entry_points.add((entry.name, entry.value))
                _load_entry_point(entry)


def _load_entry_point(entry: EntryPoint) -> None:
    try:
        target = entry.load()
        if not isinstance(target, ModuleType) and callable(target):
            target()
    except Exception as error:  # a broken plug-in must not hide the strategies of the others
        _failures[f"{entry.name} = {entry.value}"] = _one_line(error)
        log.warning("strategy plug-in %r (%s) failed to load: %s", entry.name, entry.value, error)


def _import_module(module: str) -> ModuleType:
    if module.endswith(".py") or os.sep in module or "/" in module:
        return _import_file(Path(module))
    # Like `python -m`, a module in the current directory is found, after everything installed.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module)
    except Exception as error:
        raise PluginError(f"plugin {module!r} failed to import: {_one_line(error)}") from error


def _import_file(path: Path) -> ModuleType:
    """Import a `.py` file as the module named by its stem, once per process."""
    resolved = path.expanduser().resolve()
    name = resolved.stem
    imported = sys.modules.get(name)
    if imported is not None:
        if getattr(imported, "__file__", None) == str(resolved):
            return imported
        raise PluginError(
            f"plugin {str(path)!r}: a module named {name!r} is already imported from elsewhere; rename the file"
        )
    if not resolved.is_file():
        raise PluginError(f"plugin {str(path)!r}: no such file")
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {str(path)!r}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, so its classes pickle by reference (what Prefect workers need).
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[name]
        raise PluginError(f"plugin {str(path)!r} failed to import: {_one_line(error)}") from error
    return module


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
