"""The README tells the truth: every command it shows is run here (against a temporary SQLite
database, in a temporary directory), is a line of the Makefile's `run` target, or is listed in
NOT_RUN with the reason; every `ttc` command in it and in docs/ parses as a known command with known
flags; its links resolve; and it stays short."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer._click.exceptions import UsageError  # Typer vendors its own click
from typer.testing import CliRunner

from db import dispose
from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
SHELL_FENCES = {"bash", "sh", "shell", "console"}
TTC_SCRIPT = str(Path(sys.executable).parent / "ttc")

# README commands no test runs, each with the reason. Keys are compared token by token.
NOT_RUN = {
    "make run": "sets up .venv, then runs the Makefile's run target; each of its lines is parsed here",
    "make test": "the whole test suite, this file included; CI runs it",
    "source .venv/bin/activate": "puts .venv's `ttc` on PATH for the lines below; nothing to check",
    'ttc calibrate -d "testbed:arith?n=300&seed=21" --budgets 1,2,4,8,16 --out policy.json': (
        "300 prompts × the paper's grid take many minutes; tests/test_flows.py calibrates a tiny dataset"
    ),
    'ttc evaluate -d "testbed:arith?n=200&seed=11" --policy policy.json --budget 16': (
        "needs the policy.json the calibrate line writes; tests/test_flows.py applies a calibrated policy"
    ),
    "ttc serve --name ttc": "serves deployments until stopped; tests/test_deployments.py serves and triggers them",
    "ttc reproduce --scale quick --out reproduction": (
        "the quick grid takes 10–20 min on 2 cores; tests/test_reproduce.py reproduces on a tiny recipe"
    ),
    "ttc testbed report --out testbed_report.json": (
        "200 problems × 64 samples take 6–10 min; tests/test_testbed_report.py runs a small report on quick models"
    ),
}

# Commands that run in a subprocess: they start a temporary Prefect server that lives as long as the
# process that started it, so they must not leave one in the test process.
IN_SUBPROCESS = {("ttc", "evaluate"), ("ttc", "calibrate"), ("ttc", "serve")}


@dataclass(frozen=True)
class Command:
    line: str  # as written, joined across `\` continuations, without its comment
    env: dict[str, str]  # leading NAME=value assignments
    argv: list[str]


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a word outside quotes (a `#` inside a URI is not a comment)."""
    quote: str | None = None
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def shell_commands(markdown: str) -> list[Command]:
    """Every command line of the fenced shell blocks of a Markdown text."""
    commands: list[Command] = []
    for info, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        if info not in SHELL_FENCES:
            continue
        for line in re.sub(r"\\\n", " ", body).splitlines():
            code = without_comment(line).strip()
            if not code:
                continue
            words = shlex.split(code)
            env: dict[str, str] = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]) and len(words) > 1:
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            commands.append(Command(code, env, words))
    return commands


def make_run_lines() -> list[list[str]]:
    """The Makefile's `run` target, as the argv each of its lines runs (`$(BIN)/` dropped, the
    Makefile's own variables filled in)."""
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) \?= (.*)$", makefile, flags=re.MULTILINE))
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert recipe, "the Makefile has no run target"
    lines = []
    for raw in recipe.group(1).splitlines():
        line = raw.strip().replace("$(BIN)/", "").replace("$$", "$")
        line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line)
        lines.append(shlex.split(line))
    return lines


def parse_ttc(argv: list[str]) -> None:
    """Parse `ttc ...` as the CLI would, without running it; raises a UsageError on an unknown
    command or flag, a missing required option or a value of the wrong type."""
    assert argv[0] == "ttc", argv
    command: Any = typer.main.get_command(app)
    name, args, parent = "ttc", argv[1:], None
    while True:
        try:
            context = command.make_context(name, list(args), parent=parent)
        except typer.Exit as stop:  # --help: printed and stopped, as the CLI does
            assert stop.exit_code == 0
            return
        if not hasattr(command, "resolve_command"):  # a command, not a group of them
            return
        rest = [*context._protected_args, *context.args]
        if not rest:
            return
        name, command, args = command.resolve_command(context, rest)
        parent = context


def readme_commands() -> list[Command]:
    return shell_commands(README.read_text())


def covered_by_make_run(command: Command) -> bool:
    return not command.env and command.argv in make_run_lines()


def not_run(command: Command) -> bool:
    return not command.env and any(shlex.split(key) == command.argv for key in NOT_RUN)


def needs_subprocess(command: Command) -> bool:
    return tuple(command.argv[:2]) in IN_SUBPROCESS


def to_run() -> list[Command]:
    """The README commands this file runs, in order: every one except those in NOT_RUN and the lines
    of `make run` that would need a process of their own (make run runs those)."""
    return [c for c in readme_commands() if not not_run(c) and not (covered_by_make_run(c) and needs_subprocess(c))]


# --- what the README shows ---------------------------------------------------------------------------


def test_readme_is_under_150_lines() -> None:
    assert len(README.read_text().splitlines()) < 150


def test_readme_shows_make_run_and_make_test_as_the_two_commands() -> None:
    argvs = [c.argv for c in readme_commands()]
    assert argvs[:2] == [["make", "run"], ["make", "test"]]  # CI runs exactly `make test`


def test_every_readme_command_is_run_here_by_make_run_or_said_why_not() -> None:
    for command in to_run():
        assert command.argv[0] == "ttc", f"{command.line!r}: not a ttc command, not in make run, not in NOT_RUN"
    assert {"strategies", "solve", "trace", "evaluate"} <= {c.argv[1] for c in to_run()}


def test_not_run_names_only_commands_the_readme_shows() -> None:
    shown = [c.argv for c in readme_commands()]
    assert [key for key in NOT_RUN if shlex.split(key) not in shown] == []


@pytest.mark.parametrize("source", [README, *DOCS], ids=lambda p: p.name)
def test_every_ttc_command_shown_parses_as_a_known_command_with_known_flags(source: Path) -> None:
    for command in shell_commands(source.read_text()):
        if command.argv and command.argv[0] == "ttc":
            try:
                parse_ttc(command.argv)
            except UsageError as error:
                pytest.fail(f"{source.name}: {command.line!r} does not parse: {error.format_message()}")


def test_every_line_of_make_run_parses_as_a_ttc_command() -> None:
    for argv in make_run_lines():
        parse_ttc(argv)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown text."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("source", [README, *DOCS], ids=lambda p: p.name)
def test_every_relative_link_resolves(source: Path) -> None:
    text = source.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        assert resolved.exists(), f"{source.name}: link {target!r} points nowhere"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved.read_text()), f"{source.name}: no heading for {target!r}"


# --- the README's commands, run --------------------------------------------------------------------


@pytest.fixture
def workplace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A temporary working directory and SQLite database, for the commands and the processes they start."""
    url = f"sqlite:///{tmp_path / 'readme.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TTC_DATABASE_URL", url)
    yield url
    dispose(url)


def test_every_cheap_readme_command_runs_and_succeeds(workplace: str) -> None:
    commands = to_run()
    assert commands, "the README shows no command that this test runs"
    for command in commands:
        parse_ttc(command.argv)
        if needs_subprocess(command):
            done = subprocess.run(
                [TTC_SCRIPT, *command.argv[1:]],
                capture_output=True,
                text=True,
                env={**os.environ, **command.env, "OMP_NUM_THREADS": "1"},
                timeout=300,
            )
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        else:
            result = CliRunner().invoke(app, command.argv[1:], env=command.env)
            code, stdout, stderr = result.exit_code, result.stdout, result.stderr
        assert code == 0, f"{command.line!r} exited {code}:\n{stdout}\n{stderr}"
        if "--json" in command.argv:
            json.loads(stdout)  # exactly one JSON object
        if command.argv[:2] == ["ttc", "solve"] and "--json" not in command.argv:
            assert "answer:" in stdout, stdout
