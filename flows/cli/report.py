"""`ttc report`: one self-contained HTML file of runs, built from the database alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.app import Database, app, fail, out, user_errors


@app.command()
def report(
    sources: Annotated[
        list[str], typer.Argument(metavar="RUN_OR_DIR...", help="run ids or names, or folders of run summaries")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write report.html into")] = Path("report"),
    database: Database = None,
) -> None:
    """Write an HTML report of runs: accuracy against budget and difficulty, spend, and each prompt's search."""
    from db.session import connect
    from flows.pipelines.report import ReportError, build_report, resolve_runs

    with user_errors():
        sessions = connect(database)
        try:
            with sessions() as session:
                runs = resolve_runs(session, sources)
                html = build_report(session, runs)
        except ReportError as error:
            fail(str(error))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "report.html"
        path.write_text(html, encoding="utf-8")
    out.print(f"wrote {path} ({len(html) / 1e6:.2f} MB, {len(runs)} run(s))", highlight=False)
