"""`ttc reproduce`: the paper's experiment grid, both compute-optimal policies and the headline ratios,
as one Prefect flow (flows/pipelines/reproduce.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from flows.cli.app import (
    AsJson,
    Concurrency,
    Database,
    Plugins,
    app,
    checked_while_the_server_boots,
    fail,
    out,
    plugins_loaded,
    run_flow,
    task_runner,
)


@app.command()
def reproduce(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for headline.json and the two policies")] = Path(
        "reproduction"
    ),
    scale: Annotated[
        Literal["quick", "full"], typer.Option(help="the testbed recipe: quick (minutes) or full (under an hour)")
    ] = "quick",
    recipe: Annotated[
        Path | None, typer.Option(help="a YAML recipe (models, splits, budgets, plans) instead of --scale")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed (default: the recipe's)")] = None,
    run_name: Annotated[
        str | None, typer.Option(help="prefix of the run names (default: the recipe's); the same one resumes")
    ] = None,
    concurrency: Concurrency = 4,
    database: Database = None,
    plugins: Plugins = None,
    as_json: AsJson = False,
) -> None:
    """Reproduce the paper: calibrate the grid, fit compute-optimal policies, test them, print the headline."""
    from flows.cli.process import secrets_to_environment
    from flows.pipelines.reproduce import SCALES, Recipe, RecipeError

    plugins_loaded(plugins)
    runner = task_runner(concurrency, None)
    try:
        spec = Recipe.load(recipe) if recipe is not None else SCALES[scale]
    except RecipeError as error:
        fail(str(error))
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if run_name is not None:
        changes["name"] = run_name
    models = {k: getattr(spec, k) for k in ("proposer", "verifier", "reviser") if getattr(spec, k) is not None}
    database = secrets_to_environment(database, models)
    changes |= {k: models.get(k) for k in ("proposer", "verifier", "reviser")}  # a secret one now lives in env
    spec = spec.model_copy(update=changes)
    with checked_while_the_server_boots(database):
        from flows.pipelines.reproduce import prepare
        from flows.pipelines.reproduce import reproduce as reproduce_flow

        prepare(spec)
    result = run_flow(
        reproduce_flow, runner, database, recipe=spec.model_dump(mode="json"), out=str(out_dir), plugins=plugins
    )
    if as_json:
        print(json.dumps(result, default=str))
        return
    out.print(headline_table(result))
    out.print(f"wrote {out_dir / 'headline.json'}; `ttc report {spec.name}/test` draws the runs", highlight=False)


def headline_table(result: dict[str, Any]) -> Table:
    table = Table(
        title=(
            f"reproduction: {result['prompts']['calibration']} calibration and {result['prompts']['test']} test prompts"
        ),
        title_justify="left",
    )
    for column in (
        "best-of-N weighted at N",
        "accuracy",
        "policy",
        "matched at N",
        "efficiency (95% CI)",
        "with difficulty cost",
    ):
        table.add_column(column, justify="right")
    for label, rows in result["efficiency"].items():
        for row in rows:
            ratio, with_cost = row["efficiency"], row["efficiency_with_difficulty"]
            table.add_row(
                str(row["budget"]),
                f"{row['baseline_accuracy']:.3f}",
                label.removeprefix("compute-optimal "),
                "—" if row["matching_budget"] is None else str(row["matching_budget"]),
                ratio_text(ratio),
                ratio_text(with_cost),
            )
    table.caption = f"paper: {result['paper']['efficiency']}"
    return table


def ratio_text(cell: dict[str, Any]) -> str:
    if cell["value"] is None:
        return "not matched"
    low, high = cell["ci95"]
    bounds = "" if low is None else f" ({low:.1f}–{high:.1f})"
    return f"{cell['value']:.1f}×{bounds}"
