"""The `ttc` command line: list strategies and runs, solve a question, show a stored trace, evaluate a
dataset, calibrate a policy and serve the flows; one vocabulary of options across the commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from importlib.metadata import version
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer._click import exceptions as click  # Typer vendors its own click; its usage errors are these
from typer.core import TyperGroup

from flows.cli.process import (
    EXIT_BAD_INPUT,
    EXIT_PROMPTS_FAILED,
    launch_prefect_server,
    pause_collector,
    prefect_server_ready,
    prefect_server_stopped_on_refusal,
    quiet_tracebacks,
    resume_collector,
    secrets_to_environment,
    skip_collection_at_exit,
    stops_cleanly,
)

# Each command imports what it uses, when it runs: `ttc trace` never pays for LangGraph, `ttc solve`
# never for Prefect, `ttc --version` for neither (tests/test_startup.py checks it).
if TYPE_CHECKING:
    from db import queries
    from flows.service.config import ModelSettings
    from graphs.runner import StepEvent


class OneLineErrors(TyperGroup):
    """A usage error (an unknown option, `--budget abc`) is one line and exit status 2, like every
    other refusal, instead of Typer's framed usage box."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            message = error.format_message()
            if isinstance(error, click.UsageError) and error.ctx is not None:
                message = f"{error.ctx.command_path}: {message}"
            say_error(message)
            sys.exit(EXIT_BAD_INPUT if isinstance(error, click.UsageError) else error.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="ttc",
    cls=OneLineErrors,
    help="Test-time compute for LLMs: PRM search, revisions, compute-optimal scaling — every step audited.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_STRATEGY = "best_of_n_weighted"
DEFAULT_BUDGET = 16


def flag(*names: str, help: str, **options: Any) -> Any:
    """A boolean option given bare (`--json`): no `--no-…` twin, and no value shown in the help."""
    return typer.Option(*names, help=help, metavar="", **options)


# --- The shared vocabulary: each option below means the same under every command that takes it, and
# is the flow parameter of the same name (docs/cli.md; tests/test_cli_vocabulary.py checks it).

Proposer = Annotated[str | None, typer.Option("--proposer", help="proposer model URI", show_default="testbed:proposer")]
Verifier = Annotated[str | None, typer.Option("--verifier", help="PRM URI", show_default="testbed:prm")]
Reviser = Annotated[str | None, typer.Option("--reviser", help="reviser model URI", show_default="testbed:reviser")]
SamplingSeed = Annotated[int | None, typer.Option("--seed", help="base sampling seed", show_default="0")]
Database = Annotated[
    str | None, typer.Option("--db", help="database URL", show_default="$TTC_DATABASE_URL or a SQLite file")
]
Assignments = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="strategy setting (repeatable)")
]
Plugins = Annotated[
    list[str] | None,
    typer.Option(
        "--plugin", metavar="MODULE", help="import this module first, to register its strategies (repeatable)"
    ),
]
AsJson = Annotated[bool, flag("--json", help="print the result as one line of JSON on stdout")]
RunName = Annotated[str | None, typer.Option("--run-name", help="name of the run; re-running resumes it")]


def say_error(message: str) -> None:
    # One line whatever the terminal width or the library's message; brackets in paths are not markup.
    line = " ".join(message.split())
    err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    say_error(message)
    raise typer.Exit(EXIT_BAD_INPUT)


def user_error_types() -> tuple[type[BaseException], ...]:
    """The errors a user can cause (a refusal, exit status 2), SQLAlchemy's aside."""
    from db.session import DatabaseError
    from graphs.registry import SettingsError, UnknownStrategy
    from ttc_nodes.budget import BudgetError
    from ttc_nodes.engines import EngineError

    return (UnknownStrategy, SettingsError, DatabaseError, EngineError, FileNotFoundError, BudgetError, ValueError)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one clear line and exit status 2."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except Exception as error:
        # Imported only once something failed: they would cost `ttc trace` a second of imports.
        from sqlalchemy.exc import SQLAlchemyError

        from graphs.runner import SolveError

        if isinstance(error, SolveError):
            fail(f"solve failed: {error} (the trace so far is stored)")
        if isinstance(error, user_error_types()):
            fail(str(error))
        if isinstance(error, SQLAlchemyError):
            # The driver's first line (a NUL on PostgreSQL, a read-only SQLite file), never its SQL.
            reason = str(getattr(error, "orig", None) or error).strip().splitlines() or [type(error).__name__]
            fail(f"database error: {reason[0]}")
        raise


def show_version(shown: bool) -> None:
    if shown:
        print(f"ttc {version('ttc')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, flag("--verbose", "-v", help="show tracebacks of failed flows and tasks")] = False,
    _version: Annotated[
        bool, flag("--version", help="print the installed version and exit", callback=show_version, is_eager=True)
    ] = False,
) -> None:
    """Test-time compute for LLMs: PRM search, revisions, compute-optimal scaling — every step audited."""
    quiet_tracebacks(verbose)
    # Off while the command imports and loads; back on once its models are loaded, or as it ends.
    pause_collector()
    ctx.call_on_close(resume_collector)
    skip_collection_at_exit()


def interrupted(database: str | None) -> Callable[[], str]:
    """What a stop signal does: mark this process's solves in flight as interrupted."""
    from db.recorder import Recorder
    from db.session import connect

    def stop() -> str:
        count = Recorder(connect(database)).stop()  # and claims no more solves
        return f"{count} solve(s) in flight marked interrupted; run the same command again to resume"

    return stop


def plugins_loaded(plugins: list[str] | None) -> None:
    """Import the installed plug-ins and the --plugin modules, before any strategy name is checked."""
    from graphs.plugins import load_plugins

    with user_errors():
        load_plugins(plugins or [])


def models_given(proposer: str | None, verifier: str | None, reviser: str | None, seed: int | None) -> dict[str, Any]:
    """The model options given on the command line (`models` of the flows), and only those."""
    given: dict[str, Any] = {"proposer": proposer, "verifier": verifier, "reviser": reviser, "seed": seed}
    return {key: value for key, value in given.items() if value is not None}


def models_from(proposer: str | None, verifier: str | None, reviser: str | None, seed: int | None) -> ModelSettings:
    from flows.service.config import ModelSettings

    return ModelSettings(**models_given(proposer, verifier, reviser, seed))


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are read as JSON where they parse (numbers, booleans), else strings."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            fail(f"--set expects key=value, got {assignment!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    return values


@app.command()
def strategies(
    graph: Annotated[
        str | None, typer.Option("--graph", metavar="NAME", help="print this strategy's graph as Mermaid text")
    ] = None,
    plugins: Plugins = None,
    as_json: AsJson = False,
) -> None:
    """List the strategies with their settings and needs, or draw one strategy's graph."""
    from graphs import registry

    plugins_loaded(plugins)
    with user_errors():
        if graph is not None:
            from graphs.drawing import mermaid

            drawing = mermaid(graph)
    if graph is not None:
        print(json.dumps({"strategy": graph, "mermaid": drawing}) if as_json else drawing)
        return
    listing: list[dict[str, Any]] = [
        {
            "name": s.name,
            "summary": s.summary,
            "needs": {"reviser": s.reviser, "stepwise": s.stepwise, "pool_vote": s.pool_vote},
            "settings": {
                name: {"default": field.default, "description": field.description}
                for name, field in s.settings.model_fields.items()
            },
        }
        for s in registry.all_strategies()
    ]
    if as_json:
        print(json.dumps(listing, default=str))
        return
    table = Table(show_lines=True)
    table.add_column("strategy", style="bold", no_wrap=True)
    table.add_column("what it does")
    table.add_column("needs")
    table.add_column("settings (default)")
    for entry in listing:
        needs = {"reviser": "a reviser", "stepwise": "step-wise search", "pool_vote": "one vote over a pool"}
        needed = "\n".join(said for key, said in needs.items() if entry["needs"][key])
        settings = "\n".join(f"{k} ({v['default']}): {v['description']}" for k, v in entry["settings"].items())
        table.add_row(entry["name"], entry["summary"], needed or "—", settings)
    out.print(table)


class StatusLine:
    """Shows the node running and the spend so far while a solve streams (on stderr)."""

    def __init__(self, update: Callable[[str], None]) -> None:
        self.update = update
        self.generations = 0.0
        self.tokens = 0

    def step(self, event: StepEvent) -> None:
        resume_collector()  # the models are loaded and the search runs: collect its garbage
        self.generations += event.spend.generations
        self.tokens += event.spend.tokens
        self.update(
            f"round {event.round} · {event.node} done · {self.generations:g} generations · {self.tokens} tokens"
        )


@app.command()
def solve(
    question: Annotated[str, typer.Argument(help="the question to solve")],
    strategy: Annotated[str, typer.Option("--strategy", "-s", help="see `ttc strategies`")] = DEFAULT_STRATEGY,
    budget: Annotated[int, typer.Option("--budget", "-n", help="generations N")] = DEFAULT_BUDGET,
    assignments: Assignments = None,
    reference: Annotated[str | None, typer.Option(help="reference answer, to grade the result")] = None,
    run_name: RunName = None,
    proposer: Proposer = None,
    verifier: Verifier = None,
    reviser: Reviser = None,
    seed: SamplingSeed = None,
    database: Database = None,
    plugins: Plugins = None,
    as_json: AsJson = False,
) -> None:
    """Solve one question with a strategy; print the answer, the spend and the run id."""
    from flows.service.solving import solve_question

    plugins_loaded(plugins)
    values = {**parse_assignments(assignments or []), "budget": budget}
    with user_errors(), stops_cleanly(interrupted(database)), err.status("loading models…") as status:
        outcome = solve_question(
            question,
            strategy=strategy,
            values=values,
            models=models_from(proposer, verifier, reviser, seed),
            database=database,
            run_name=run_name,
            reference=reference,
            progress=StatusLine(status.update),
        )
    if as_json:
        print(json.dumps(outcome.as_json()))
        return
    verdict = {True: " [green](correct)[/]", False: " [red](wrong)[/]", None: ""}[outcome.correct]
    out.print(f"[bold]answer:[/] {outcome.answer}{verdict}")
    spend = outcome.spend
    out.print(
        f"spent {spend.generations:g} of {budget} generations, {spend.tokens} tokens, "
        f"{spend.flops:.3g} FLOPs in {outcome.seconds:.2f}s"
    )
    out.print(f"run {outcome.run_id} · `ttc trace {outcome.run_id}` shows every step")


@app.command()
def trace(
    run: Annotated[str | None, typer.Argument(help="run id or run name", show_default="the latest run")] = None,
    problem: Annotated[str | None, typer.Option("--problem", help="problem key", show_default="every problem")] = None,
    database: Database = None,
    as_json: AsJson = False,
) -> None:
    """Show a run's stored trace: node executions, and the tree of candidates with their scores."""
    from db import queries
    from db.session import connect
    from flows.cli.render import render_solve

    with user_errors():
        sessions = connect(database)
        with sessions() as session:
            found = queries.find_run(session, run) if run else next(iter(queries.runs(session)), None)
            if found is None:
                fail(f"no run with id or name {run!r} in this database" if run else "this database holds no runs yet")
            traces = queries.trace_of(session, found.id, problem_key=problem)
            if not traces:
                fail(f"run {run!r} has no solve for problem {problem!r}" if problem else f"run {run!r} has no solves")
            trees = [queries.candidate_tree(session, t.id) for t in traces]
    if as_json:
        print(json.dumps({"run_id": found.id, "solves": [asdict(t) for t in traces]}, default=str))
        return
    for solve_trace, roots in zip(traces, trees, strict=True):
        out.print(render_solve(solve_trace, roots), crop=False)  # the vote's answers are shown whole


@app.command()
def runs(
    limit: Annotated[int, typer.Option(help="show at most this many runs")] = 20,
    database: Database = None,
    as_json: AsJson = False,
) -> None:
    """List the runs, newest first: status, solves done of all, and accuracy where graded."""
    if limit < 1:
        fail(f"--limit must be >= 1, got {limit}")
    from db import queries
    from db.session import connect

    with user_errors():
        sessions = connect(database)
        with sessions() as session:
            listing = [run_line(run, queries.accuracy_by(session, run.id)) for run in queries.runs(session)[:limit]]
    if as_json:
        print(json.dumps(listing, default=str))
        return
    if not listing:
        out.print("this database holds no runs yet")
        return
    table = Table()
    table.add_column("run", no_wrap=True)  # ids are copied from here into `ttc trace`
    table.add_column("name", overflow="fold")
    table.add_column("status")
    table.add_column("created", overflow="fold")
    table.add_column("done", justify="right")
    table.add_column("accuracy", justify="right")
    for line in listing:
        accuracy = line["accuracy"]
        table.add_row(
            line["id"],
            escape(line["name"] or "—"),
            line["status"],
            f"{line['created_at']:%Y-%m-%d %H:%M}",
            f"{line['done']}/{line['solves']}",
            "—" if accuracy is None else f"{accuracy:.3f}",
        )
    out.print(table)


def run_line(run: queries.RunInfo, rows: Sequence[queries.AccuracyRow]) -> dict[str, Any]:
    """One run of `ttc runs`: its solve counts, and its accuracy over the graded finished solves."""
    graded, correct = sum(r.graded for r in rows), sum(r.correct for r in rows)
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "created_at": run.created_at,
        "solves": run.solves,
        "done": run.done,
        "failed": run.failed,
        "graded": graded,
        "correct": correct,
        "accuracy": correct / graded if graded else None,
    }


# --- evaluate and calibrate share these, named as their flows' parameters ---------------------------

Dataset = Annotated[str, typer.Option("--dataset", "-d", help="testbed:arith?n=…, jsonl:PATH, math500, gsm8k, hf:NAME")]
Limit = Annotated[int | None, typer.Option(help="solve only the first K prompts (after --subset-seed and --shard)")]
Shard = Annotated[str | None, typer.Option(metavar="I/N", help="take shard i/n of the prompts")]
SubsetSeed = Annotated[int | None, typer.Option("--subset-seed", help="shuffle the prompts with this seed first")]
SkipBad = Annotated[
    bool, flag("--skip-bad-lines", help="skip malformed dataset lines (each reported) instead of failing")
]
QuestionField = Annotated[
    str | None, typer.Option("--question-field", help="the field holding the question (jsonl and hf datasets)")
]
AnswerField = Annotated[
    str | None, typer.Option("--answer-field", help="the field holding the reference answer (jsonl and hf datasets)")
]
Summary = Annotated[
    str | None, typer.Option("--summary", metavar="FILE", help="also write the summary to this JSON file")
]
Concurrency = Annotated[int, typer.Option(help="prompts solved at once (threads)")]
DaskAddress = Annotated[str | None, typer.Option("--dask", help="run tasks on this Dask scheduler (prefect-dask)")]
Shards = Annotated[
    int | None, typer.Option(help="split the run into this many runs of the pool's evaluate deployment (needs --pool)")
]
Pool = Annotated[str | None, typer.Option(metavar="POOL", help="with --shards: the work pool whose workers run them")]
Timeout = Annotated[float, typer.Option(metavar="SECONDS", help="with --shards: how long to wait for them")]


def task_runner(concurrency: int, dask: str | None) -> Any:
    """Threads by default; a Dask cluster when an address is given (scale-out across machines)."""
    if concurrency < 1:
        fail(f"--concurrency must be >= 1, got {concurrency}")
    if dask:
        try:
            from prefect_dask import DaskTaskRunner
        except ModuleNotFoundError:
            fail("--dask needs the prefect-dask package: pip install 'ttc[dask]'")
        return DaskTaskRunner(address=dask)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=concurrency)


@contextmanager
def checked_while_the_server_boots(database: str | None) -> Iterator[None]:
    """Launch the temporary Prefect server a flow run needs (unless one is configured), so that it
    boots on the other core while the block checks the request and loads its models; what a user
    got wrong is refused in one line (exit status 2), and a refusal stops the server first."""
    launch_prefect_server()
    with prefect_server_stopped_on_refusal(), user_errors():
        if database and database.startswith("secret:"):
            prefect_server_ready()  # the database URL is a Secret block, read from the server
        yield


def run_flow(flow: Any, runner: Any, database: str | None, **parameters: Any) -> dict[str, Any]:
    """Run a flow in this process with the task runner, on the temporary Prefect server the command
    launched as it started (see `launch_prefect_server`); a stop signal leaves its run resumable."""
    resume_collector()  # the models are loaded: from here on the flow runs, and makes garbage
    with user_errors(), stops_cleanly(interrupted(database)):
        prefect_server_ready()
        result: dict[str, Any] = flow.with_options(task_runner=runner)(database=database, **parameters)
    return result


@app.command()
def evaluate(
    dataset: Dataset,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            "-s",
            help="one strategy for every prompt",
            show_default=f"{DEFAULT_STRATEGY} without --policy",
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget", "-n", help="generations per prompt", show_default=f"{DEFAULT_BUDGET} without --policy"
        ),
    ] = None,
    policy: Annotated[str | None, typer.Option(help="a policy file from `ttc calibrate`")] = None,
    total_budget: Annotated[int | None, typer.Option(help="with --policy: generations for the whole dataset")] = None,
    assignments: Assignments = None,
    limit: Limit = None,
    shard: Shard = None,
    subset_seed: SubsetSeed = None,
    skip_bad_lines: SkipBad = False,
    question_field: QuestionField = None,
    answer_field: AnswerField = None,
    run_name: RunName = None,
    summary: Summary = None,
    concurrency: Concurrency = 4,
    dask: DaskAddress = None,
    shards: Shards = None,
    pool: Pool = None,
    timeout: Timeout = 6 * 3600.0,
    proposer: Proposer = None,
    verifier: Verifier = None,
    reviser: Reviser = None,
    seed: SamplingSeed = None,
    database: Database = None,
    plugins: Plugins = None,
    as_json: AsJson = False,
) -> None:
    """Evaluate a dataset with one strategy, or with a compute-optimal policy; print accuracy and spend."""
    from flows.service.datasets import Selection

    plugins_loaded(plugins)
    runner = task_runner(concurrency, dask)
    if policy is None:  # the plan `ttc solve` uses when none is given
        strategy, budget = strategy or DEFAULT_STRATEGY, DEFAULT_BUDGET if budget is None else budget
    models = models_from(proposer, verifier, reviser, seed).model_dump()
    database = secrets_to_environment(database, models)
    request: dict[str, Any] = {
        "strategy": strategy,
        "budget": budget,
        "settings": parse_assignments(assignments or []),
        "policy": policy,
        "total_budget": total_budget,
        "models": models,
    }
    selection = Selection(limit, shard, subset_seed, skip_bad_lines, question_field, answer_field)
    if shards is not None:
        from flows.cli.shards import evaluate_in_shards

        return evaluate_in_shards(
            shards=shards,
            pool=pool,
            timeout=timeout,
            dataset=dataset,
            request=request,
            selection=selection,
            run_name=run_name,
            summary=summary,
            concurrency=concurrency,
            dask=dask,
            database=database,
            plugins=plugins,
            as_json=as_json,
        )
    if pool is not None:
        fail("--pool goes with --shards: how many runs to split the evaluation into")
    with checked_while_the_server_boots(database):
        # Everything a user can get wrong is refused here, in one line, before the flow runs.
        from db.recorder import Recorder
        from db.session import connect
        from flows.pipelines.evaluate import evaluate as evaluate_flow
        from flows.pipelines.evaluate import prepare

        checked = prepare(dataset, **request, selection=selection, warn=lambda *a: None)
        sessions = connect(database)
        if run_name is not None:
            Recorder(sessions).check_run(run_name, checked.config)
    result = run_flow(
        evaluate_flow,
        runner,
        database,
        dataset=dataset,
        **request,
        **asdict(selection),
        run_name=run_name,
        summary=summary,
        plugins=plugins,
    )
    if as_json:
        print(json.dumps(result, default=str))
    else:
        out.print(summary_table(result))
    if result["failed"]:
        for failure in result["failures"][:20]:
            err.print(f"[red]failed[/] {escape(failure['key'])}: {escape(failure['error'])}", highlight=False)
        err.print(f"{result['failed']} prompt(s) failed; re-run the same command to retry them (exit status 3)")
        raise typer.Exit(EXIT_PROMPTS_FAILED)


def summary_table(summary: dict[str, Any]) -> Table:
    from flows.pipelines.evaluate import plan_line

    accuracy = summary["accuracy"]
    low, high = summary["accuracy_ci95"]
    title = (
        f"run {summary.get('run_name') or summary['run_id']} · {summary.get('dataset')} · {plan_line(summary)} · "
        f"{summary['done']} solved, {summary['failed']} failed · "
        f"accuracy {'—' if accuracy is None else f'{accuracy:.3f}'} (95% CI {low:.3f}–{high:.3f})\n"
        f"proposer {summary.get('proposer')} · verifier {summary.get('verifier')}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("bin", "prompts", "correct", "accuracy", "generations / prompt"):
        table.add_column(column, justify="right")
    for label, row in summary["by_bin"].items():
        acc = row["accuracy"]
        table.add_row(
            label,
            str(row["prompts"]),
            str(row["correct"]),
            "—" if acc is None else f"{acc:.3f}",
            f"{row['mean_generations']:.1f}",
        )
    caption = f"spend: {summary['generations']:g} generations, {summary['tokens']} tokens, {summary['flops']:.3g} FLOPs"
    if "generations_with_difficulty" in summary:
        caption += f"; with difficulty estimation {summary['generations_with_difficulty']:g} generations"
    table.caption = caption
    return table


@app.command()
def calibrate(
    dataset: Dataset,
    budgets: Annotated[str, typer.Option(help="comma-separated budgets, e.g. 1,2,4,8,16")] = "1,2,4,8,16",
    plans: Annotated[
        str | None, typer.Option(help="comma-separated plan labels", show_default="the paper's grid")
    ] = None,
    out_file: Annotated[str, typer.Option("--out", help="where to write the policy JSON")] = "policy.json",
    difficulty: Annotated[
        Literal["predicted", "oracle"], typer.Option(help="predicted (mean PRM score) or oracle (pass@1)")
    ] = "predicted",
    difficulty_samples: Annotated[int, typer.Option(help="samples K behind each difficulty estimate")] = 16,
    subsets: Annotated[int, typer.Option(help="random N-subsets of a pool behind each vote's accuracy at N")] = 16,
    bins: Annotated[int, typer.Option(help="difficulty bins (quantiles)")] = 5,
    assignments: Assignments = None,
    limit: Limit = None,
    shard: Shard = None,
    subset_seed: SubsetSeed = None,
    skip_bad_lines: SkipBad = False,
    question_field: QuestionField = None,
    answer_field: AnswerField = None,
    run_name: RunName = None,
    summary: Summary = None,
    concurrency: Concurrency = 4,
    dask: DaskAddress = None,
    proposer: Proposer = None,
    verifier: Verifier = None,
    reviser: Reviser = None,
    seed: SamplingSeed = None,
    database: Database = None,
    plugins: Plugins = None,
    as_json: AsJson = False,
) -> None:
    """Fit a compute-optimal policy θ*(difficulty bin, budget) on a calibration dataset."""
    from flows.service.datasets import Selection

    plugins_loaded(plugins)
    try:
        budget_list = [int(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        fail(f"--budgets must be comma-separated integers, got {budgets!r}")
    runner = task_runner(concurrency, dask)
    models = models_from(proposer, verifier, reviser, seed).model_dump()
    database = secrets_to_environment(database, models)
    request: dict[str, Any] = {
        "budgets": budget_list,
        "plans": [p.strip() for p in plans.split(",")] if plans else None,
        "difficulty_samples": difficulty_samples,
        "bins": bins,
        "models": models,
        "settings": parse_assignments(assignments or []),
    }
    selection = Selection(limit, shard, subset_seed, skip_bad_lines, question_field, answer_field)
    with checked_while_the_server_boots(database):
        # Everything a user can get wrong is refused here, in one line, before the flow runs.
        from db.session import connect
        from flows.pipelines.calibrate import calibrate as calibrate_flow
        from flows.pipelines.calibrate import prepare

        prepare(dataset, **request, selection=selection, warn=lambda *a: None)
        connect(database)
    report = run_flow(
        calibrate_flow,
        runner,
        database,
        dataset=dataset,
        **request,
        **asdict(selection),
        out=out_file,
        difficulty=difficulty,
        subsets=subsets,
        run_name=run_name,
        summary=summary,
        plugins=plugins,
    )
    if as_json:
        print(json.dumps(report, default=str))
    else:
        out.print(calibration_table(report))
    if report["failed"]:
        err.print(f"{report['failed']} calibration solve(s) failed; re-run the same command to retry them")
        raise typer.Exit(EXIT_PROMPTS_FAILED)


def calibration_table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"policy {report['policy']} → {report['out']} ({report['prompts']} prompts)", title_justify="left"
    )
    for column in ("budget", "best-of-N weighted", "compute-optimal (2-fold CV)", "generations spent"):
        table.add_column(column, justify="right")
    for row in report["curve"]:
        baseline = row["best_of_n_weighted"]
        table.add_row(
            str(row["budget"]),
            "—" if baseline is None else f"{baseline:.3f}",
            f"{row['compute_optimal']:.3f}",
            f"{row['compute_optimal_spend']:.1f}",
        )
    table.caption = f"{efficiency_sentence(report)}; accuracy against budget plotted in {report['plot']}"
    return table


def efficiency_sentence(report: dict[str, Any]) -> str:
    """The calibration's headline in words: how many times fewer generations compute-optimal needs."""
    baseline = report["baseline_budget"]
    if report["efficiency"] is None:
        return f"compute-optimal does not reach best-of-N weighted's accuracy at N={baseline} at any budget"
    return (
        f"compute-optimal reaches best-of-N weighted's accuracy at N={baseline} with "
        f"{report['matching_spend']:.1f} generations per prompt (budget {report['matching_budget']}): "
        f"{report['efficiency']:.1f}× fewer"
    )


@app.command()
def serve(
    name: Annotated[str, typer.Option(help="deployment name")] = "ttc",
    concurrency: Concurrency = 4,
    dask: DaskAddress = None,
    assignments: Assignments = None,
    proposer: Proposer = None,
    verifier: Verifier = None,
    reviser: Reviser = None,
    seed: SamplingSeed = None,
    database: Database = None,
    plugins: Plugins = None,
) -> None:
    """Serve `evaluate`, `calibrate` and `evaluate-shards` as Prefect deployments, the options as their defaults."""
    import asyncio

    from prefect.runner import Runner

    from db.session import connect
    from flows.pipelines.calibrate import calibrate as calibrate_flow
    from flows.pipelines.evaluate import evaluate as evaluate_flow
    from flows.pipelines.sharded import evaluate_shards

    plugins_loaded(plugins)
    with user_errors():
        if database is not None:
            connect(database)
    tasks = task_runner(concurrency, dask)
    models = models_given(proposer, verifier, reviser, seed)
    database = secrets_to_environment(database, models)  # takes credentials out of `models` too
    # A run's own parameters replace these defaults whole: `models` given at run time is every model.
    given = {
        "models": models,
        "database": database,
        "settings": parse_assignments(assignments or []),
        "plugins": plugins,
    }
    defaults = {parameter: value for parameter, value in given.items() if value}
    # Flows added as objects run as themselves, with this task runner; `prefect.serve(deployment)` would
    # re-import them from their entrypoint and silently drop --concurrency and --dask.
    runner = Runner(name=f"ttc-{name}")
    for served in (evaluate_flow, calibrate_flow, evaluate_shards):
        runner.add_flow(served.with_options(task_runner=tasks), name=name, parameters=defaults)
    shown = f" with default parameters {', '.join(defaults)}" if defaults else ""
    served_names = f"evaluate/{name}, calibrate/{name} and evaluate-shards/{name}"
    err.print(f"serving deployments {served_names}{shown}; Ctrl-C stops")
    resume_collector()  # it serves for as long as it is left running
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        err.print("stopped")


def _mount_testbed() -> None:
    try:
        from flows.cli.testbed import testbed_app
    except ModuleNotFoundError as missing:
        if missing.name != "flows.cli.testbed":
            raise
        return
    app.add_typer(testbed_app, name="testbed", help="Train and report on the built-in testbed models.")


_mount_testbed()
# Each registers its command on `app` as it is imported.
from flows.cli import flops as _flops, gateway as _gateway, report as _report, reproduce as _reproduce  # noqa: E402, F401, I001

if __name__ == "__main__":
    app()
