"""`ttc gateway`: the OpenAI-compatible HTTP door into ttc (flows.gateway), with the CLI's own
vocabulary for the engines and the database."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from flows.cli.app import (
    Database,
    Plugins,
    Proposer,
    Reviser,
    SamplingSeed,
    Verifier,
    app,
    err,
    fail,
    models_from,
    plugins_loaded,
    user_errors,
)
from flows.cli.process import resume_collector

TOKEN_VARIABLE = "TTC_GATEWAY_TOKEN"


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8100,
    policy: Annotated[
        str | None, typer.Option(help="a policy file from `ttc calibrate`: serves compute-optimal@N")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds a request may take before its search is stopped")] = 300.0,
    concurrency: Annotated[int, typer.Option(help="searches run at once (threads); more requests queue")] = 8,
    max_request_bytes: Annotated[int, typer.Option(help="largest request body accepted (413 above)")] = 256 * 1024,
    proposer: Proposer = None,
    verifier: Verifier = None,
    reviser: Reviser = None,
    seed: SamplingSeed = None,
    database: Database = None,
    plugins: Plugins = None,
) -> None:
    """Serve an OpenAI-compatible API: the model names the strategy and budget, each request a traced solve."""
    if concurrency < 1 or timeout <= 0 or max_request_bytes < 1:
        fail("--concurrency and --max-request-bytes must be >= 1 and --timeout > 0")
    plugins_loaded(plugins)
    token = os.environ.get(TOKEN_VARIABLE) or None
    with user_errors(), err.status("loading models…"):
        from db.session import connect
        from flows.gateway import GatewaySettings, Solver, serve
        from flows.policy import Policy

        connect(database)  # migrates now, so a bad URL is refused before serving
        loaded = Policy.load(policy) if policy else None
        solver = Solver(models_from(proposer, verifier, reviser, seed), database, loaded, workers=concurrency)
        solver.warm_up()
    guarded = f"a bearer token ({TOKEN_VARIABLE})" if token else f"no token (set {TOKEN_VARIABLE} to require one)"
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"[bold yellow]warning:[/] listening on {host} with no token: anyone who reaches it can spend compute"
        )
    err.print(f"ttc gateway on http://{host}:{port}/v1 · {guarded} · Ctrl-C stops", highlight=False)
    resume_collector()  # it serves for as long as it is left running
    serve(solver, GatewaySettings(token=token, timeout=timeout, max_request_bytes=max_request_bytes), host, port)
