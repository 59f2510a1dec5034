"""The `ttc` command line: Typer commands (`app`), their tables and live status, process control
(signals, the local Prefect server) and the `ttc testbed` commands."""

from flows.cli.app import app

__all__ = ["app"]
