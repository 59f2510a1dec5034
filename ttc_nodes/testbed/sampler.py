"""The sampler the testbed trains, reports and serves with: the engines' `CachedSampler` (see
`ttc_nodes.engines.cached_sampler`), a fast KV-cache sampler for its small Llama models."""

from __future__ import annotations

from ttc_nodes.engines.cached_sampler import CachedSampler

__all__ = ["CachedSampler"]
