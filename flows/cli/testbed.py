"""`ttc testbed ...`: train the built-in testbed models, and report how they stand."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli.process import EXIT_BAD_INPUT

testbed_app = typer.Typer(help="The built-in testbed: a synthetic arithmetic task and three small models.")
console = Console()


@testbed_app.command()
def train(
    out: Annotated[
        Path | None,
        typer.Option(help="where to write proposer/, prm/ and reviser/", show_default="the shipped folder"),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="tiny models and few steps (for tests; under a minute)", metavar="")
    ] = False,
    seed: Annotated[int, typer.Option(help="seed of every random choice in the recipe")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch")] = 2,
    start: Annotated[
        str,
        typer.Option(help="first stage: proposer, samples, prm or reviser (reuses earlier stages' output in --out)"),
    ] = "proposer",
    stop: Annotated[str, typer.Option(help="last stage (--start prm --stop prm retrains the PRM alone)")] = "reviser",
) -> None:
    """Train proposer, PRM (Monte-Carlo rollout labels) and reviser, as the paper does."""
    import torch

    from ttc_nodes.testbed.checkpoints import checkpoint_dir
    from ttc_nodes.testbed.train import train as run_training

    torch.set_num_threads(threads)
    target = out or checkpoint_dir()
    started = time.perf_counter()
    try:
        timings = run_training(target, quick=quick, seed=seed, start=start, stop=stop)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    table = Table(title=f"testbed trained into {target}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, seconds in timings.items():
        table.add_row(stage, f"{seconds:.1f}")
    table.add_row("total", f"{time.perf_counter() - started:.1f}")
    console.print(table)


@testbed_app.command()
def report(
    out: Annotated[Path, typer.Option(help="JSON file for the measurements")] = Path("testbed_report.json"),
    problems: Annotated[int, typer.Option(help="held-out problems")] = 200,
    samples: Annotated[int, typer.Option(help="proposer samples per problem")] = 64,
    models: Annotated[
        Path | None, typer.Option(help="folder with proposer/, prm/, reviser/", show_default="the shipped ones")
    ] = None,
    threads: Annotated[int, typer.Option(help="CPU threads for torch")] = 2,
) -> None:
    """Measure proposer pass@1 by difficulty, PRM AUC, weighted best-of-N vs majority, revisions."""
    import torch

    from flows.pipelines.plots import plot_testbed_report
    from ttc_nodes.testbed.report import ReportSettings, build_report

    torch.set_num_threads(threads)
    settings = ReportSettings(
        problems=problems,
        samples=samples,
        rollout_solutions=min(100, problems),
        chains=max(1, min(4, samples // 16)),
    )
    result = build_report(settings, models)
    out.write_text(json.dumps(result, indent=2))
    print_report(result)
    figure = plot_testbed_report(result, out.with_suffix(".png"))
    console.print(f"saved to {out} and {figure}")


def print_report(result: dict[str, Any]) -> None:
    proposer, best_of_n = result["proposer"], result["best_of_n"]
    confidence = result.get("confidence")  # reports written before the confidence verifier lack it
    table = Table(title=f"difficulty quintiles (oracle pass@1), N={best_of_n['budget']} for voting")
    columns = ["bin", "problems", "mean level", "proposer pass@1", "weighted BoN (PRM)"]
    columns += ["weighted BoN (confidence)"] if confidence else []
    separates = "within_problem_auc" in best_of_n  # reports written before it lack it
    for column in [*columns, "majority", *(["PRM AUC within a question"] if separates else [])]:
        table.add_column(column, justify="right")
    confident = confidence["best_of_n"]["by_quintile"] if confidence else [None] * len(proposer["by_quintile"])
    for row, vote, other in zip(proposer["by_quintile"], best_of_n["by_quintile"], confident, strict=True):
        cells = [str(row["bin"]), str(row["problems"]), f"{row['mean_level']:.1f}", f"{row['pass_at_1']:.3f}"]
        cells += [f"{vote['weighted']:.3f}"] + ([f"{other['weighted']:.3f}"] if other else [])
        table.add_row(*cells, f"{vote['majority']:.3f}", *([_fmt(vote["within_problem_auc"])] if separates else []))
    totals = ["all", "", "", f"{proposer['pass_at_1']:.3f}", f"{best_of_n['weighted']:.3f}"]
    totals += [f"{confidence['best_of_n']['weighted']:.3f}"] if confidence else []
    table.add_row(
        *totals, f"{best_of_n['majority']:.3f}", *([_fmt(best_of_n["within_problem_auc"])] if separates else [])
    )
    console.print(table)

    levels = Table(title="proposer pass@1 by generator level")
    levels.add_column("level", justify="right")
    levels.add_column("problems", justify="right")
    levels.add_column("pass@1", justify="right")
    for row in proposer["by_level"]:
        levels.add_row(str(row["level"]), str(row["problems"]), f"{row['pass_at_1']:.3f}")
    console.print(levels)

    prm = result["prm"]
    scores = Table(title="PRM step-level AUC")
    scores.add_column("against")
    scores.add_column("AUC", justify="right")
    scores.add_row("exact correctness, first-error convention", _fmt(prm["auc_vs_prefix_correctness"]))
    scores.add_row("the step's own arithmetic", _fmt(prm["auc_vs_step_arithmetic"]))
    scores.add_row(f"MC rollout labels >= 0.5 ({prm['mc_steps']} steps)", _fmt(prm["auc_vs_mc_labels"]))
    if confidence:
        scores.add_row("proposer confidence vs exact correctness", _fmt(confidence["auc_vs_prefix_correctness"]))
        scores.add_row("proposer confidence vs the step's arithmetic", _fmt(confidence["auc_vs_step_arithmetic"]))
    console.print(scores)

    reviser = result["reviser"]
    chain = Table(title="reviser pass@1 along a revision chain")
    chain.add_column("quintile")
    for position in range(len(reviser["pass_at_1_by_position"])):
        chain.add_column(f"pos {position}", justify="right")
    chain.add_column("proposer", justify="right")
    for row in reviser.get("by_quintile", []):  # reports written before it lack the split
        chain.add_row(
            str(row["bin"]), *(f"{x:.3f}" for x in row["pass_at_1_by_position"]), _fmt(row["proposer_pass_at_1"])
        )
    chain.add_row(
        "all",
        *(f"{x:.3f}" for x in reviser["pass_at_1_by_position"]),
        _fmt(reviser["proposer_pass_at_1_same_problems"]),
    )
    console.print(chain)
    console.print(
        f"correct answers broken by the next revision: {reviser['share_of_correct_broken_by_next_revision']:.2f}; "
        f"proposer pass@1 on the same problems: {reviser['proposer_pass_at_1_same_problems']:.3f}"
    )
    if "fix_rate" in reviser:
        console.print(
            f"wrong answers fixed by the next revision: {_fmt(reviser['fix_rate'])} "
            f"(a fresh sample: {_fmt(reviser['resample_fix_baseline'])}); copied verbatim: "
            f"{_fmt(reviser['kept_verbatim_after_right'])} of right, {_fmt(reviser['kept_verbatim_after_wrong'])} of "
            f"wrong answers; changes to a wrong answer starting at its first wrong step: "
            f"{_fmt(reviser['changed_wrong_at_first_error'])}"
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
