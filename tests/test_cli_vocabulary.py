"""One vocabulary for the command line and the deployments: each deployment in prefect.yaml has exactly
its flow's parameters, each named by the comment of the `ttc` flag that sets it; every flow parameter is
the flag of its own name in kebab case (a few named exceptions); the options `solve`, `evaluate`,
`calibrate` and `serve` share are one and the same; and every option's help reads alike."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from typer._click.core import Command
from typer.core import TyperGroup as Group
from typer.core import TyperOption as Option
from typer.main import get_command

from flows.cli import app

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}

# Flow parameters whose flags are not their names in kebab case: (flag, the CLI function's parameter).
EXCEPTIONS: dict[str, list[tuple[str, str]]] = {
    "models": [("--proposer", "proposer"), ("--verifier", "verifier"), ("--reviser", "reviser"), ("--seed", "seed")],
    "database": [("--db", "database")],
    "settings": [("--set", "assignments")],
    "plugins": [("--plugin", "plugins")],
    "out": [("--out", "out_file")],
}
# Options of the commands that are not flow parameters: how this process runs the flow, and prints.
CLI_ONLY = {"concurrency", "dask", "as_json"}
# The command of each deployment: the one named for it, except flows a command runs in another mode.
COMMAND_OF = {"evaluate-shards": "evaluate"}  # `ttc evaluate --shards K --pool POOL`

MODEL_OPTIONS = ["--proposer", "--verifier", "--reviser", "--seed"]
SHARED = {
    ("solve", "evaluate", "calibrate", "serve"): [*MODEL_OPTIONS, "--db", "--set", "--plugin"],
    ("solve", "evaluate", "calibrate", "strategies", "trace", "runs"): ["--json"],
    ("evaluate", "calibrate"): [
        "--dataset",
        "--limit",
        "--shard",
        "--subset-seed",
        "--skip-bad-lines",
        "--run-name",
        "--summary",
        "--concurrency",
        "--dask",
    ],
}


def commands() -> dict[str, Command]:
    """Every command of `ttc`, by its path below `ttc` (`testbed train`)."""
    root = get_command(app)
    assert isinstance(root, Group)
    found: dict[str, Command] = {}
    for name, command in root.commands.items():
        if isinstance(command, Group):
            found.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        else:
            found[name] = command
    return found


def option(command: str, flag: str) -> Option:
    matching = [p for p in commands()[command].params if isinstance(p, Option) and flag in p.opts]
    assert matching, f"`ttc {command}` has no {flag}"
    return matching[0]


def flow_parameters(deployment: str) -> dict[str, inspect.Parameter]:
    path, _, name = DEPLOYMENTS[deployment]["entrypoint"].partition(":")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{name}")
    return dict(inspect.signature(flow.fn).parameters)


def described(param: Option) -> dict[str, Any]:
    keys = ("name", "opts", "help", "default", "show_default", "metavar", "multiple", "is_flag")
    return {key: getattr(param, key) for key in keys} | {"type": param.type_descriptor.annotation}


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_each_deployment_names_every_flow_parameter_with_a_valid_default(deployment: str) -> None:
    parameters = DEPLOYMENTS[deployment]["parameters"]
    path, _, name = DEPLOYMENTS[deployment]["entrypoint"].partition(":")

    assert list(parameters) == list(flow_parameters(deployment))
    load_flow_from_entrypoint(f"{REPO / path}:{name}").validate_parameters(parameters)


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_each_deployment_parameter_is_commented_with_the_flag_that_sets_it(deployment: str) -> None:
    text = (REPO / "prefect.yaml").read_text()
    block = text[text.index(f"  - name: {deployment}\n") :].split("    parameters:\n", 1)[1]
    comments = dict(re.findall(r"^      (\w+):[^#\n]*#\s*(.*)$", block, flags=re.MULTILINE))
    for parameter in DEPLOYMENTS[deployment]["parameters"]:
        flags = [flag for flag, _ in EXCEPTIONS.get(parameter, [])] or [f"--{parameter.replace('_', '-')}"]
        assert comments.get(parameter, "").startswith(", ".join(flags)), (parameter, comments.get(parameter))


@pytest.mark.parametrize("deployment", sorted(DEPLOYMENTS))
def test_every_flow_parameter_is_the_flag_of_its_name_in_kebab_case(deployment: str) -> None:
    command = COMMAND_OF.get(deployment, deployment)  # the deployments are named for their flows, as the commands
    for parameter in flow_parameters(deployment):
        for flag, cli_name in EXCEPTIONS.get(parameter, [(f"--{parameter.replace('_', '-')}", parameter)]):
            assert option(command, flag).name == cli_name, (parameter, flag)
    # every option of the command is a parameter of a flow it runs, or says how this process runs it
    runs = [d for d in DEPLOYMENTS if COMMAND_OF.get(d, d) == command]
    parameters = {parameter for d in runs for parameter in flow_parameters(d)}
    mapped = {cli for parameter in parameters for _, cli in EXCEPTIONS.get(parameter, [])} | parameters
    unmapped = {p.name for p in commands()[command].params if isinstance(p, Option)} - mapped
    assert unmapped == CLI_ONLY


@pytest.mark.parametrize(("group", "flags"), SHARED.items(), ids=[" ".join(g) for g in SHARED])
def test_shared_options_are_one_option_everywhere(group: tuple[str, ...], flags: list[str]) -> None:
    for flag in flags:
        first, *others = (described(option(command, flag)) for command in group)
        assert all(other == first for other in others), flag


def test_every_option_helps_in_one_style_and_every_flag_is_bare() -> None:
    root = get_command(app)
    typers_own = {"install_completion", "show_completion"}
    for path, command in {"": root, **commands()}.items():
        assert command.help and len(command.help.strip().splitlines()) == 1, path
        for param in (p for p in command.params if p.name not in typers_own):
            text = getattr(param, "help", None) or ""
            assert text, (path, param.name)
            assert not re.match(r"[A-Z][a-z]", text) and not text.endswith("."), (path, param.name, text)
            if isinstance(param, Option) and param.is_flag:
                assert param.secondary_opts == [], (path, param.opts)
