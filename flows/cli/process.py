"""How a `ttc` process runs its flows: quiet refusals, a Prefect server that dies with it, secrets kept
out of flow parameters, and a prompt stop on SIGINT or SIGTERM that leaves the run resumable."""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from db.session import has_password
from ttc_nodes.engines.uris import masked_uri

# Exit statuses of `ttc evaluate` and `ttc calibrate` (documented in docs/cli.md).
EXIT_BAD_INPUT = 2
EXIT_PROMPTS_FAILED = 3

_PR_SET_PDEATHSIG = 1


class _NoTracebacks(logging.Filter):
    """Drops Prefect's report of an exception raised inside a flow or task (a 20–40 line traceback):
    the CLI says what went wrong in one line. `--verbose` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None and not record.getMessage().startswith("Finished in state Failed")


_FILTER = _NoTracebacks()


def quiet_tracebacks(verbose: bool) -> None:
    """Hide (or, with `verbose`, show) the tracebacks Prefect logs for failed flows and tasks."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if verbose:
            logger.removeFilter(_FILTER)
        elif _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def secrets_to_environment(database: str | None, models: MutableMapping[str, Any]) -> str | None:
    """Keep secrets out of flow parameters, which Prefect stores and shows in plain text.

    A database URL with a password travels to the flow (which runs in this process) as
    `env:TTC_DATABASE_URL`; a model URI with credentials is removed from `models` and set as its
    `TTC_PROPOSER`/`TTC_VERIFIER`/`TTC_REVISER` variable, which the flow's ModelSettings reads.
    Returns the database argument to pass."""
    for name in ("proposer", "verifier", "reviser"):
        uri = models.get(name)
        if isinstance(uri, str) and masked_uri(uri) != uri:
            os.environ[f"TTC_{name.upper()}"] = models.pop(name)
    if database and has_password(database):
        os.environ["TTC_DATABASE_URL"] = database
        return "env:TTC_DATABASE_URL"
    return database


def start_prefect_server() -> None:
    """Start the temporary Prefect API server a flow run without PREFECT_API_URL needs, so that it dies
    with this process even on `kill -9` (the kernel signals it when its parent goes). Prefect would
    start the same server on first use, but as an orphan that outlives a killed parent."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    if get_current_settings().api.url or not sys.platform.startswith("linux"):
        return
    server = SubprocessASGIServer()
    if server.running:
        return
    launch: Callable[[], Any] = server._run_uvicorn_command

    def launch_tied() -> Any:
        import subprocess

        popen: Any = subprocess.Popen

        def tied(*args: Any, **kwargs: Any) -> Any:
            return popen(*args, preexec_fn=_die_with_parent, **kwargs)

        subprocess.Popen = tied  # type: ignore[misc, assignment]
        try:
            return launch()
        finally:
            subprocess.Popen = popen  # type: ignore[misc]

    server._run_uvicorn_command = launch_tied  # type: ignore[method-assign]
    server.start()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; the main thread that forks it lives as long as ttc.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@contextmanager
def stops_cleanly(on_stop: Callable[[], str]) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM stop the process within seconds: `on_stop` marks the work
    in flight (it gets 10 s and returns a line to print), then the process exits with 128 + the
    signal's number. Threads busy in a long generation are not waited for; their solves are left
    'interrupted', which a re-run of the same run resumes. A second signal exits at once.

    Python runs signal handlers in the main thread only, which may be blocked for minutes in a wait
    or a C call; so the handler here does nothing but let the signal reach the wakeup file
    descriptor, which the C-level handler writes from whichever thread the kernel picked, and a
    watcher thread acts on it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            ready, _, _ = select.select([read_end], [], [], 0.25)
            if ready:
                for signum in os.read(read_end, 64):
                    if signum in (signal.SIGINT, signal.SIGTERM):
                        _stop(signum, on_stop, read_end)

    watcher = threading.Thread(target=watch, name="ttc-stop-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        finished.set()
        watcher.join(timeout=2)
        signal.set_wakeup_fd(previous_fd)
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.close(read_end)
        os.close(write_end)


def _stop(signum: int, on_stop: Callable[[], str], signals: int) -> None:
    said: list[str] = []
    worker = threading.Thread(target=lambda: said.append(on_stop()), daemon=True)
    worker.start()
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        worker.join(timeout=0.1)
        ready, _, _ = select.select([signals], [], [], 0)
        if ready and any(s in (signal.SIGINT, signal.SIGTERM) for s in os.read(signals, 64)):
            break  # a second signal: exit at once
    name = signal.Signals(signum).name
    line = said[0] if said else "the database did not answer in time; the run resumes once its leases expire"
    sys.stderr.write(f"stopped by {name}: {line}\n")
    sys.stderr.flush()
    os._exit(128 + signum)
