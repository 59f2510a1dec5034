"""An OpenAI-compatible gateway (`ttc gateway`): an application points its `base_url` here, names a
strategy and budget as the model (`beam@16`, `compute-optimal@16`), and every request is a traced
solve through the same solve service as `ttc solve` (docs/gateway.md)."""

from __future__ import annotations

from flows.gateway.app import GatewaySettings, create_app
from flows.gateway.solver import Solver

__all__ = ["GatewaySettings", "Solver", "create_app", "serve"]


def serve(solver: Solver, settings: GatewaySettings, host: str, port: int, log_level: str = "info") -> None:
    """Serve the gateway until stopped (Ctrl-C or SIGTERM); searches still running then are stopped
    at their next node boundary and marked failed, their traces kept."""
    import uvicorn

    config = uvicorn.Config(
        create_app(solver, settings), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5
    )
    try:
        uvicorn.Server(config).run()
    finally:
        solver.close()
