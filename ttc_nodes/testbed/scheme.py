"""The `testbed:NAME` URI scheme: the testbed checkpoints (`proposer`, `prm`, `reviser`; shipped with
the package, or in `$TTC_TESTBED_DIR`) as engines. `testbed:proposer?max_batch=8` is the `hf:` engine
on that checkpoint, options and all, named by its testbed URI; the proposer and reviser sample through
the cached sampler (`sampler=cached`, the fast one for these small Llama models) on any device, unless
the URI asks for `sampler=generate`.

The engines know no testbed: this module registers the scheme as any plug-in does, through the
`ttc.engines` entry point that pyproject.toml declares (see `ttc_nodes.engines.uris`).
"""

from __future__ import annotations

from typing import Any

from ttc_nodes.engines.uris import hf_proposer, hf_verifier, register_scheme
from ttc_nodes.testbed.checkpoints import checkpoint_path


def register() -> None:
    """Teach `load_proposer` / `load_verifier` the `testbed:` scheme."""
    register_scheme(
        "testbed", proposer=proposer, verifier=verifier, resolve=lambda location: str(checkpoint_path(location))
    )


def proposer(location: str, options: dict[str, str], uri: str) -> Any:
    """The testbed proposer (or reviser) `location` names, sampling through `CachedSampler` unless
    `options` say `sampler=generate`."""
    return hf_proposer(str(checkpoint_path(location)), {"sampler": "cached", **options}, uri)


def verifier(location: str, options: dict[str, str], uri: str) -> Any:
    """The testbed PRM `location` names, as the `hf:` verifier `?format=` asks for."""
    return hf_verifier(str(checkpoint_path(location)), options, uri)
