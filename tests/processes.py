"""Subprocesses of the tests that start real servers (Prefect, `ttc serve`, vLLM): each in its own
process group, its output in a log file, stopped with everything it started.

Standard library and httpx only, so the vLLM suite's virtualenv can import it too.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    command: list[str], environment: dict[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """`command` in a session of its own, stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=environment, cwd=cwd, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a process started in its own session, with everything it started."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def wait_for_http(process: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """Poll `url` until it answers 200 (True), or the process exits or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    return False
