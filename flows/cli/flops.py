"""`ttc flops`: the FLOPs-matched exchange of test-time compute for a larger model (Snell et al. 2024,
§7), and, given runs of both models, which of the two wins each difficulty bin at each ratio."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from flows.cli.app import AsJson, Database, app, fail, out, user_errors

if TYPE_CHECKING:
    from db.queries import SolveOutcome
    from flows.policy.flops import Comparison, Exchange

PAPER_RATIOS = "0.16,0.79,22"
NEEDS_LARGE_RUN = (
    "the comparison needs a run of the larger model on the same prompts: `ttc evaluate --dataset SAME "
    "--proposer LARGER_MODEL_URI --strategy majority --budget 1 --run-name large`, then --large-run large"
)


@app.command()
def flops(
    small_params: Annotated[float, typer.Option("--small-params", help="parameters of the small model, e.g. 1e9")],
    large_params: Annotated[float, typer.Option("--large-params", help="parameters of the larger model, e.g. 14e9")],
    pretrain_tokens: Annotated[
        float, typer.Option("--pretrain-tokens", help="pretraining tokens D_pretrain of both models, e.g. 1e12")
    ],
    inference_ratio: Annotated[
        str, typer.Option("--inference-ratio", help="comma-separated R = D_inference / D_pretrain")
    ] = PAPER_RATIOS,
    runs: Annotated[
        list[str] | None,
        typer.Option("--run", metavar="RUN", help="a run of the small model (repeatable: one per budget)"),
    ] = None,
    large_run: Annotated[
        str | None, typer.Option("--large-run", metavar="RUN", help="the larger model's run on the same prompts")
    ] = None,
    database: Database = None,
    as_json: AsJson = False,
) -> None:
    """FLOPs-matched test-time budget of a small model against a larger one, and who wins by difficulty."""
    from flows.policy.flops import exchange, parse_ratios

    with user_errors():
        ratios = parse_ratios(inference_ratio)
        exchanges = [exchange(small_params, large_params, pretrain_tokens, r) for r in ratios]
    if runs and large_run is None:
        fail(NEEDS_LARGE_RUN)
    if large_run is not None and not runs:
        fail("--large-run needs --run: the small model's run(s) to compare it with")
    comparisons = compared(exchanges, runs or [], large_run, database) if runs and large_run else None
    if as_json:
        result: dict[str, Any] = {
            "small_params": small_params,
            "large_params": large_params,
            "parameter_multiplier": large_params / small_params,
            "pretrain_tokens": pretrain_tokens,
            "ratios": [exchange_json(e) for e in exchanges],
        }
        if comparisons is not None:
            result["comparison"] = [asdict(c) | {"winner": c.winner} for c in comparisons]
        print(json.dumps(result))
        return
    out.print(exchange_table(small_params, large_params, exchanges))
    if comparisons is not None:
        out.print(comparison_table(comparisons))


def exchange_json(matched: Exchange) -> dict[str, Any]:
    """One ratio as JSON; the multiplier is rounded to 0.01, as the paper quotes it (14 + 39/0.79 = 63.37)."""
    return asdict(matched) | {
        "multiplier": round(matched.multiplier, 2),
        "matched_generations": round(matched.multiplier, 2),
        "large_total_flops": matched.large_total_flops,
    }


def exchange_table(small_params: float, large_params: float, exchanges: Sequence[Exchange]) -> Table:
    ratio = large_params / small_params
    table = Table(
        title=f"a {ratio:g}× larger model ({large_params:.3g} vs {small_params:.3g} parameters), FLOPs matched",
        title_justify="left",
    )
    for column in ("R", "D_inference (tokens)", "multiplier M+3(M−1)/R", "budget N", "total FLOPs (each)"):
        table.add_column(column, justify="right")
    for e in exchanges:
        table.add_row(
            f"{e.inference_ratio:g}",
            f"{e.inference_tokens:.3g}",
            f"{e.multiplier:.2f}",
            str(e.matched_budget),
            f"{e.large_total_flops:.3g}",
        )
    table.caption = (
        "R = D_inference / D_pretrain; the small model may spend the multiplier's worth of generations per prompt "
        "(budget N: the nearest power of two) for the larger model's one (Snell et al. 2024, §7)"
    )
    return table


def comparison_table(comparisons: Sequence[Comparison]) -> Table:
    table = Table(title="test-time compute against the larger model, by difficulty bin", title_justify="left")
    for column in ("R", "bin", "small model", "accuracy", "larger model", "winner"):
        table.add_column(column, justify="left" if column in {"small model", "winner"} else "right")
    for c in comparisons:
        table.add_row(
            f"{c.inference_ratio:g}",
            c.bin,
            f"{c.small_strategy} N={c.small_budget}",
            f"{c.small_accuracy:.3f} ({c.small_prompts})",
            f"{c.large_accuracy:.3f} ({c.large_prompts})",
            c.winner,
        )
    return table


def compared(
    exchanges: Sequence[Exchange], small_runs: Sequence[str], large_run: str, database: str | None
) -> list[Comparison]:
    """Read both models' graded solves and compare them bin by bin (bins of the small model's runs)."""
    from db.session import connect
    from flows.pipelines.report import group_field
    from flows.policy.flops import compare

    with user_errors():
        with connect(database)() as session:
            small = [graded_of(session, name) for name in small_runs]
            large_info, large = graded_of(session, large_run)
        proposers = {info.config.get("proposer") for info, _ in small}
        if large_info.config.get("proposer") in proposers:
            fail(
                f"--large-run {large_run!r} used the same proposer ({large_info.config.get('proposer')}) "
                f"as --run; {NEEDS_LARGE_RUN}"
            )
        # Difficulty groups as in `ttc report`: the solves' bin, else the problems' level or difficulty.
        groups = {o.problem_id: {**o.meta, "bin": o.bin} for _, outcomes in small for o in outcomes}
        field = group_field(list(groups.values()))
        bins: dict[int, str] = {}
        small_cells: dict[tuple[str, int, str], list[int]] = {}
        for _, outcomes in small:
            for o in outcomes:
                label = bins.setdefault(o.problem_id, str(groups[o.problem_id][field]) if field else "all")
                for key in {(o.strategy, o.budget, label), (o.strategy, o.budget, "all")}:
                    cell = small_cells.setdefault(key, [0, 0])
                    cell[0] += bool(o.correct)
                    cell[1] += 1
        large_cells: dict[str, list[int]] = {}
        shared = [o for o in large if o.problem_id in bins]
        if not shared:
            fail(f"--large-run {large_run!r} solved none of the prompts of --run")
        budgets = {o.budget for o in shared}
        if len(budgets) > 1:
            fail(f"--large-run {large_run!r} mixes budgets {sorted(budgets)}; give a run at one budget")
        for o in shared:
            for label in {bins[o.problem_id], "all"}:
                cell = large_cells.setdefault(label, [0, 0])
                cell[0] += bool(o.correct)
                cell[1] += 1
    return compare(
        exchanges,
        {key: (c, n) for key, (c, n) in small_cells.items()},
        {key: (c, n) for key, (c, n) in large_cells.items()},
        large_budget=budgets.pop(),
    )


def graded_of(session: Any, name: str) -> tuple[Any, list[SolveOutcome]]:
    """The run (by name or id) and its finished, graded solves; an unknown run or none graded is refused."""
    from db import queries

    found = queries.find_run(session, name)
    if found is None:
        fail(f"no run with id or name {name!r} in this database")
    graded = [o for o in queries.solve_outcomes(session, found.id) if o.status == "done" and o.correct is not None]
    if not graded:
        fail(f"run {name!r} has no graded solves (a reference answer is needed to grade)")
    return found, graded
