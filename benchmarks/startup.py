"""What `ttc` spends before (and around) the work it was asked to do, part by part, and the totals.

Each part runs in a fresh Python process, as a user's command does, so library imports are paid in
full every time; the rounds alternate over the parts, so other load on the machine falls on all of
them alike, and the median of the rounds is shown (wall seconds, and CPU seconds of the process and
everything it waited for, which load on the machine disturbs less). Every process is bounded by
`--timeout`. Everything is written to a temporary folder: the ttc database, PREFECT_HOME and the
user data dir (no PREFECT_API_URL, as on a user's first run).

Parts (seconds inside the process, after the interpreter started):
- imports: the CLI module, torch, transformers with the model classes the engines use, prefect;
- engines: loading testbed:proposer and testbed:prm once the libraries are imported;
- database: `connect` to an existing SQLite file (the schema check every command makes);
- Prefect: the temporary server a flow run needs (launch to healthy), a first and a second run of a
  flow that does nothing.
Totals (the installed `ttc` script): `--version`, `strategies`, `trace`, `runs`, the issue's
`solve "Compute 2 + 3." -s majority -n 1`, `evaluate` of one prompt with that plan, and the same
evaluate again (a resume with nothing to do). "evaluate's fixed cost" is the one-prompt evaluate
less the solve: what the flow machinery adds.

`--baseline DIR` measures another checkout of ttc (e.g. the code before a change) in the same run,
alternating with this one, and adds its column and the ratio: the same installed libraries serve both
(`PYTHONPATH` picks the checkout).

Run: python benchmarks/startup.py [--rounds 3] [--timeout 180] [--baseline DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TTC = str(Path(sys.executable).parent / "ttc")
QUESTION = "Compute 2 + 3."
PLAN = ["-s", "majority", "-n", "1"]
DATASET = "testbed:arith?n=1&seed=5"

# Each snippet prints one JSON object on its last line: {part: seconds inside the process}.
_TIMER = """
import json, time
_seconds = {}
_start = time.perf_counter()
def lap(name):
    global _start
    now = time.perf_counter()
    _seconds[name] = now - _start
    _start = now
"""

SNIPPETS: dict[str, str] = {
    "imports": """
import flows.cli.app
lap("import flows.cli.app")
import torch
lap("import torch")
import transformers
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, LlamaForCausalLM
lap("import transformers (+ model classes)")
import prefect
lap("import prefect")
""",
    "engines": """
import torch, transformers
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, LlamaForCausalLM
from ttc_nodes.engines import load_proposer, load_verifier
lap("(imports)")
load_proposer("testbed:proposer")
lap("load testbed:proposer")
load_verifier("testbed:prm")
lap("load testbed:prm")
""",
    "database": """
from db.session import connect
lap("(imports)")
connect()
lap("connect (existing SQLite file)")
""",
    "prefect": """
import flows.cli.process as process
from prefect import flow
lap("(imports)")
started = process.start_prefect_server()
lap("Prefect server: launch to healthy")
@flow
def nothing() -> int:
    return 1
nothing()
lap("first flow run (a flow doing nothing)")
nothing()
lap("second flow run")
""",
}


@dataclass
class Samples:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    inside: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def measured(command: list[str], environment: dict[str, str], timeout: float) -> tuple[float, float, str, int]:
    """(wall, CPU seconds, stdout, exit status) of one command; CPU counts the children it waited for.
    It runs in the checkout it measures (`python -c` imports from its working directory first)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    cwd = environment["PYTHONPATH"]
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        status, out = done.returncode, done.stdout + ("\n" + done.stderr[-600:] if done.returncode else "")
    except subprocess.TimeoutExpired:
        status, out = 124, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out, status


def environment_for(tree: Path, folder: Path) -> dict[str, str]:
    """The environment of every measured process: the checkout `tree`, and state under `folder`."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    return environment | {
        "PREFECT_HOME": str(folder / "prefect"),
        "TTC_DATABASE_URL": f"sqlite:///{folder / 'ttc.db'}",
        "XDG_DATA_HOME": str(folder / "data"),
        "PYTHONPATH": str(tree),
    }


def run_rounds(rounds: int, timeout: float, folder: Path, trees: dict[str, Path]) -> dict[str, dict[str, Samples]]:
    """{checkout label: {part or command: samples}}, the checkouts alternating within each round."""
    commands: dict[str, list[str]] = {
        "python -c pass": [PYTHON, "-c", "pass"],
        **{
            f"parts: {name}": [PYTHON, "-c", _TIMER + code + "\nprint(json.dumps(_seconds))"]
            for name, code in SNIPPETS.items()
        },
        "ttc --version": [TTC, "--version"],
        "ttc strategies --json": [TTC, "strategies", "--json"],
        "ttc trace --json": [TTC, "trace", "--json"],
        "ttc runs --json": [TTC, "runs", "--json"],
        "ttc solve (majority, n=1)": [TTC, "solve", QUESTION, *PLAN, "--json"],
    }
    evaluate = [TTC, "evaluate", "--dataset", DATASET, *PLAN, "--json", "--run-name"]
    environments = {label: environment_for(tree, folder / label) for label, tree in trees.items()}
    # Warm-up, not counted: creates the ttc database, the Prefect database and the resumable run.
    for environment in environments.values():
        for warm in ([TTC, "solve", QUESTION, *PLAN, "--json"], [*evaluate, "resumed"]):
            _, _, out, status = measured(warm, environment, timeout)
            if status:
                raise SystemExit(f"warm-up {' '.join(warm)} failed ({status}): {out}")
    names = [*commands, "ttc evaluate (1 prompt)", "ttc evaluate (resume, nothing to do)"]
    samples = {label: {name: Samples() for name in names} for label in trees}
    for round_ in range(rounds):
        for name, command in commands.items():
            for label, environment in environments.items():
                record(samples[label][name], command, environment, timeout)
        for label, environment in environments.items():
            record(samples[label]["ttc evaluate (1 prompt)"], [*evaluate, f"fresh-{round_}"], environment, timeout)
            record(samples[label]["ttc evaluate (resume, nothing to do)"], [*evaluate, "resumed"], environment, timeout)
    return samples


def record(into: Samples, command: list[str], environment: dict[str, str], timeout: float) -> None:
    wall, cpu, out, status = measured(command, environment, timeout)
    if status:
        into.failures.append(f"exit {status}: {out.strip().splitlines()[-1] if out.strip() else ''}")
        return
    into.wall.append(wall)
    into.cpu.append(cpu)
    lines = out.strip().splitlines()
    if command[0] == PYTHON and len(command) > 2 and lines:
        for part, seconds in json.loads(lines[-1]).items():
            into.inside.setdefault(part, []).append(seconds)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report(samples: dict[str, Samples]) -> dict[str, Any]:
    parts = {
        part: median(seconds)
        for s in samples.values()
        for part, seconds in s.inside.items()
        if not part.startswith("(")
    }
    totals = {name: {"wall": median(s.wall), "cpu": median(s.cpu)} for name, s in samples.items()}
    evaluate, solve = totals["ttc evaluate (1 prompt)"]["wall"], totals["ttc solve (majority, n=1)"]["wall"]
    fixed = evaluate - solve if evaluate is not None and solve is not None else None
    failures = {name: s.failures for name, s in samples.items() if s.failures}
    return {"parts": parts, "totals": totals, "evaluate_fixed_cost": fixed, "failures": failures}


def number(value: object) -> str:
    return f"{value:7.2f}" if isinstance(value, float) else "    n/a"


def ratio(new: object, old: object) -> str:
    return f"{new / old:6.2f}" if isinstance(new, float) and isinstance(old, float) and old > 0 else "   n/a"


def show(results: dict[str, dict[str, Any]]) -> None:
    """One column per checkout (this one last), and new ÷ baseline where there is a baseline."""
    labels = list(results)
    current = results[labels[-1]]
    base = results[labels[0]] if len(labels) > 1 else None
    heading = "".join(f" {label[:7]:>7s}" for label in labels) + ("  ratio" if base else "")
    print(f"{'part (seconds inside a fresh process, median)':46s}{heading}")
    for part in current["parts"]:
        cells = "".join(f" {number(results[label]['parts'].get(part))}" for label in labels)
        extra = f" {ratio(current['parts'][part], base['parts'].get(part))}" if base else ""
        print(f"  {part:44s}{cells}{extra}")
    print(f"\n{'command, wall seconds (median)':46s}{heading}   cpu:{''.join(f' {la[:7]:>7s}' for la in labels)}")
    for name in current["totals"]:
        walls = "".join(f" {number(results[label]['totals'][name]['wall'])}" for label in labels)
        cpus = "".join(f" {number(results[label]['totals'][name]['cpu'])}" for label in labels)
        extra = f" {ratio(current['totals'][name]['wall'], base['totals'][name]['wall'])}" if base else ""
        print(f"  {name:44s}{walls}{extra}       {cpus}")
    fixed = "".join(f" {number(results[label]['evaluate_fixed_cost'])}" for label in labels)
    extra = f" {ratio(current['evaluate_fixed_cost'], base['evaluate_fixed_cost'])}" if base else ""
    print(f"\n  {'evaluate fixed cost (1-prompt evaluate - solve)':44s}{fixed}{extra}")
    for label in labels:
        for name, failures in results[label]["failures"].items():
            print(f"  FAILED [{label}] {name}: {failures[0]} ({len(failures)}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every part (median shown)")
    parser.add_argument("--timeout", type=float, default=180, help="seconds each process may take")
    parser.add_argument("--baseline", type=Path, help="another ttc checkout to measure alongside this one")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve()} if args.baseline else {}
    trees["current"] = ROOT
    with tempfile.TemporaryDirectory(prefix="ttc-startup-") as folder:
        samples = run_rounds(args.rounds, args.timeout, Path(folder), trees)
    results = {label: report(measured_samples) for label, measured_samples in samples.items()}
    if args.json:
        print(json.dumps(results))
    else:
        show(results)


if __name__ == "__main__":
    main()
