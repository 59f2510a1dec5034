"""A tiny GSM8K-format dataset file for flow, deployment and resume tests."""

from __future__ import annotations

import json
from pathlib import Path

PAIRS = [(1, 2), (2, 1), (3, 0), (1, 1), (2, 2), (0, 3)]


def write_tiny_gsm8k(directory: Path, count: int = 3) -> str:
    """`count` (≤ 6) "Tom has a apples and buys b more" problems as GSM8K JSONL in `directory`;
    returns the `jsonl:` dataset spec of the file."""
    lines = [
        {"question": f"Tom has {a} apples and buys {b} more. How many?", "answer": f"{a}+{b}\n#### {a + b}"}
        for a, b in PAIRS[:count]
    ]
    path = directory / "tiny_gsm8k.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return f"jsonl:{path}"
