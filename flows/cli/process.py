"""How a `ttc` process runs its flows: quiet refusals, a Prefect server that boots while the models
load and dies with the process, secrets kept out of flow parameters, a garbage collector paused while
the libraries load, and a prompt stop on SIGINT or SIGTERM that leaves the run resumable."""

from __future__ import annotations

import atexit
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager, suppress
from typing import Any

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
    from db.session import has_password
    from ttc_nodes.engines.uris import masked_uri

    for name in ("proposer", "verifier", "reviser"):
        uri = models.get(name)
        if isinstance(uri, str) and masked_uri(uri) != uri:
            os.environ[f"TTC_{name.upper()}"] = models.pop(name)
    if database and has_password(database):
        os.environ["TTC_DATABASE_URL"] = database
        return "env:TTC_DATABASE_URL"
    return database


_collector_paused = threading.Event()


def pause_collector() -> None:
    """Turn Python's cyclic garbage collector off while a command imports its libraries and loads its
    models (`resume_collector` turns it back on). torch and transformers create about a million
    long-lived objects as they import, and the collector would scan the growing heap again and again:
    a fifth of a command's start-up. Nothing is lost: garbage made meanwhile is collected once it is
    back on."""
    if gc.isenabled():
        gc.disable()
        _collector_paused.set()


def resume_collector() -> None:
    """Turn the collector back on if `pause_collector` turned it off (later calls do nothing)."""
    if _collector_paused.is_set():
        _collector_paused.clear()
        gc.enable()


_exit_collection_skipped = threading.Event()


def skip_collection_at_exit() -> None:
    """As the process exits, after every other exit handler (this one is registered first), freeze
    what is alive: the interpreter's last collection would walk every object of torch, transformers
    and Prefect (1.5 s) only to free memory the process is giving back anyway."""
    if not _exit_collection_skipped.is_set():
        _exit_collection_skipped.set()
        atexit.register(gc.freeze)


# The temporary Prefect server -------------------------------------------------------------------------
#
# A flow run needs a Prefect API. Without PREFECT_API_URL, Prefect starts a temporary server on first
# use, after the command has loaded everything else, and it is an orphan that outlives a killed
# parent. So `ttc evaluate` and `ttc calibrate` launch it themselves as they start, on 127.0.0.1: it
# boots (a few seconds of imports and its database check) on the other core while the command checks
# its input and loads its models, it is tied to the process (the kernel sends it SIGTERM when the
# process goes, even on `kill -9`), and this process's Prefect settings point at it, so Prefect never
# imports its server code here (another second and a half).

_SERVER_ENVIRONMENT = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind its port


class TemporaryServer:
    """A Prefect API server (the one Prefect's own temporary server runs, UI off) on a free port of
    127.0.0.1, started in the background and tied to this process."""

    def __init__(self) -> None:
        import prefect
        from prefect.settings import get_current_settings

        # What Prefect's own temporary server gets: this process's environment and settings.
        self.environment = {
            **os.environ,
            **_SERVER_ENVIRONMENT,
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        self.app_dir = str(prefect.__module_path__.parent)
        self.port = _free_port()
        self.process = self._launch()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "uvicorn", "--app-dir", self.app_dir, "--factory"]
        command += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen(command, env=self.environment, preexec_fn=_die_with_parent)

    def wait(self, timeout: float) -> None:
        """Return once the server answers its health check; RuntimeError if it exits, or `timeout`
        seconds pass, first. A server that lost its port to another process starts again on another."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                status = self.process.poll()
                if status == _PORT_IN_USE:
                    self.port = _free_port()
                    self.process = self._launch()
                    continue
                if status is not None:
                    raise RuntimeError(f"the temporary Prefect server exited with status {status} as it started")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(
            f"the temporary Prefect server did not answer within {timeout:.0f} s "
            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS; or set PREFECT_API_URL to a running server)"
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_server: TemporaryServer | None = None
_server_lock = threading.Lock()


def launch_prefect_server() -> None:
    """Launch the temporary Prefect server this process's flow runs will use, unless a server is
    configured (PREFECT_API_URL, a Prefect profile, a test harness) or this process has one already;
    it boots in the background (`prefect_server_ready` waits for it). It is stopped when the process
    exits (last, after Prefect has sent its logs and events), and goes with the process on `kill -9`."""
    global _server
    from prefect.settings import get_current_settings

    with _server_lock:
        if _server is not None or get_current_settings().api.url or not sys.platform.startswith("linux"):
            return
        _server = TemporaryServer()
        # Registered before Prefect's log and event workers register theirs, so it runs after them.
        atexit.register(stop_prefect_server)
        _point_prefect_at(_server.api_url)


def prefect_server_ready() -> None:
    """Wait until the server `launch_prefect_server` started answers (at once if it started none)."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    with _server_lock:
        server = _server
        if server is not None:
            server.wait(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
            _point_prefect_at(server.api_url)  # it moved if another process took its port


def _point_prefect_at(api_url: str | None) -> None:
    """Make `api_url` (None: no server) the Prefect API of every thread of this process."""
    from prefect.context import refresh_global_settings_context

    if os.environ.get("PREFECT_API_URL") != api_url:
        if api_url is None:
            del os.environ["PREFECT_API_URL"]
        else:
            os.environ["PREFECT_API_URL"] = api_url
        refresh_global_settings_context()  # the settings every thread's Prefect client reads


def start_prefect_server() -> None:
    """Launch the temporary Prefect server (see `launch_prefect_server`) and wait until it answers."""
    launch_prefect_server()
    prefect_server_ready()


def stop_prefect_server() -> None:
    """Stop the temporary server this process launched, if any, and point Prefect back at none."""
    global _server
    with _server_lock:
        server, _server = _server, None
        if server is None:
            return
        server.stop()
        if os.environ.get("PREFECT_API_URL") == server.api_url:
            _point_prefect_at(None)


@contextmanager
def prefect_server_stopped_on_refusal() -> Iterator[None]:
    """Within the block (a command checking its input while the server boots), any exception stops
    the temporary server first: a refused command leaves no server behind, even when it runs in
    another program's process."""
    try:
        yield
    except BaseException:
        stop_prefect_server()
        raise


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
        with suppress(BlockingIOError):  # a full pipe has woken it already
            os.write(write_end, b"\0")  # wakes the watcher now (0 is no signal), not at its next poll
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
