"""Size of the shipped testbed checkpoints and how long each takes to load (target: ≤ 5 s each).

Run: python benchmarks/testbed_load.py
"""

from __future__ import annotations

import time

from ttc_nodes.engines.hf import HFProposer, HFValueHeadPRM
from ttc_nodes.testbed.checkpoints import checkpoint_path


def main() -> None:
    total = 0
    for name, engine in (("proposer", HFProposer), ("prm", HFValueHeadPRM), ("reviser", HFProposer)):
        path = checkpoint_path(name)
        size = sum(f.stat().st_size for f in path.iterdir())
        total += size
        started = time.perf_counter()
        loaded = engine(str(path), device="cpu")
        seconds = time.perf_counter() - started
        print(f"{name:9s} {size / 1e6:6.2f} MB  {loaded.parameters:>9,d} parameters  loads in {seconds:.2f} s")
    print(f"total     {total / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
