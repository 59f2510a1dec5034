"""Imports run one way: ttc → flows → graphs → ttc_nodes and flows → db, and inside each package from the
top of the house down (the CLI over the Prefect flows over the solve service over the policy maths;
the testbed over the engines). Every import is read, module-level or inside a function."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ttc", "flows", "graphs", "ttc_nodes", "db")

# Each layer (the longest matching module prefix) and the layers it may import. A layer always
# may import itself.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "ttc": ("flows", "graphs", "ttc_nodes", "db"),  # the public API: re-exports from the four packages
    "flows": (),  # the package's __init__: environment defaults only
    "flows.cli": ("flows", "graphs", "ttc_nodes", "db"),
    "flows.gateway": ("flows.gateway", "flows.service", "flows.policy", "graphs", "ttc_nodes", "db"),
    "flows.pipelines": ("flows.pipelines", "flows.service", "flows.policy", "graphs", "ttc_nodes", "db"),
    "flows.service": ("flows.service", "graphs", "ttc_nodes", "db"),
    "flows.policy": ("flows.policy", "graphs", "ttc_nodes"),
    "graphs": ("graphs", "ttc_nodes"),
    "ttc_nodes": ("ttc_nodes",),
    "ttc_nodes.testbed": ("ttc_nodes",),
    "ttc_nodes.engines": ("ttc_nodes.engines", "ttc_nodes.prompts"),
    "db": ("db",),
}
# Third-party frameworks a layer must not reach: nodes and strategies never open a database session
# or a Prefect context, and the policy maths are pure.
MUST_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "flows.gateway": ("prefect",),  # it serves solves, not flows: no Prefect server behind a request
    "flows.policy": ("prefect", "sqlalchemy"),
    "graphs": ("prefect", "sqlalchemy"),
    "ttc_nodes": ("prefect", "sqlalchemy"),
    "db": ("langgraph", "graphs", "flows"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names.append((node.lineno, base))
    return names


def layer_of(module: str, layers: dict[str, tuple[str, ...]]) -> str | None:
    matches = [layer for layer in layers if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts)


def backward_imports() -> list[str]:
    problems = []
    for path in sources():
        here = module_name(path)
        layer = layer_of(here, MAY_IMPORT)
        assert layer is not None, f"{here} is in no layer of MAY_IMPORT"
        allowed = (layer, *MAY_IMPORT[layer])
        forbidden = MUST_NOT_IMPORT.get(layer_of(here, MUST_NOT_IMPORT) or "", ())
        for line, target in imported(path):
            ours = target.split(".")[0] in PACKAGES
            if ours and not within(target, allowed):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {here} ({layer}) imports {target}")
            if within(target, forbidden):
                problems.append(f"{path.relative_to(ROOT)}:{line}: {here} ({layer}) must not import {target}")
    return problems


def test_imports_run_one_way() -> None:
    problems = backward_imports()
    assert not problems, "imports that run back up:\n" + "\n".join(problems)


def test_the_walk_sees_every_package_and_lazy_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {module_name(p).split(".")[0] for p in sources()} == set(PACKAGES)
    engines = tmp_path / "ttc_nodes" / "engines"
    engines.mkdir(parents=True)
    (tmp_path / "ttc_nodes" / "__init__.py").write_text("")
    (engines / "__init__.py").write_text("")
    (engines / "bad.py").write_text("def load():\n    from ttc_nodes.testbed import task\n    return task\n")
    for package in ("ttc", "flows", "graphs", "db"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert backward_imports() == [
        "ttc_nodes/engines/bad.py:2: ttc_nodes.engines.bad (ttc_nodes.engines) imports ttc_nodes.testbed"
    ]
