"""Model engines behind two small protocols, chosen by URI (`hf:PATH`, `testbed:proposer`, ...)."""

from ttc_nodes.engines.base import (
    Completion,
    EngineError,
    PromptTooLong,
    Proposer,
    Scored,
    TransientEngineError,
    Verifier,
)
from ttc_nodes.engines.uris import load_proposer, load_verifier, masked_uri, register_scheme

__all__ = [
    "Completion",
    "EngineError",
    "PromptTooLong",
    "Proposer",
    "Scored",
    "TransientEngineError",
    "Verifier",
    "load_proposer",
    "load_verifier",
    "masked_uri",
    "register_scheme",
]
