"""Where the testbed checkpoints live: shipped inside the package, or `$TTC_TESTBED_DIR`."""

from __future__ import annotations

import os
from pathlib import Path

NAMES = ("proposer", "prm", "reviser")
SHIPPED = Path(__file__).resolve().parent / "checkpoints"


def checkpoint_dir() -> Path:
    """The folder holding the three checkpoints (`$TTC_TESTBED_DIR` overrides the shipped one)."""
    override = os.environ.get("TTC_TESTBED_DIR")
    return Path(override).expanduser() if override else SHIPPED


def checkpoint_path(name: str) -> Path:
    """The checkpoint directory of testbed model `name` (proposer, prm or reviser)."""
    if name not in NAMES:
        raise ValueError(f"unknown testbed model {name!r}; known: {', '.join(NAMES)}")
    path = checkpoint_dir() / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"testbed checkpoint {name!r} not found at {path}; run `ttc testbed train` "
            f"(add `--out {checkpoint_dir()}` or set TTC_TESTBED_DIR to choose where it goes)"
        )
    return path
