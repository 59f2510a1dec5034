"""Model URIs: `scheme:location[?key=value&...]` → a loaded engine.

Built-in schemes: `hf:PATH` (transformers causal LM as proposer / reviser; token-classification
PRM as verifier), `gguf:PATH.gguf` (a GGUF file through transformers) and `testbed:NAME` (the
checkpoints shipped with the package). Other backends register themselves with `register_scheme`.
Engines are cached per URI, so a process loads each model once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ttc_nodes.engines.base import EngineError, Proposer, Verifier

Loader = Callable[[str, dict[str, str], str], Any]

_proposer_loaders: dict[str, Loader] = {}
_verifier_loaders: dict[str, Loader] = {}
_cache: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def register_scheme(scheme: str, *, proposer: Loader | None = None, verifier: Loader | None = None) -> None:
    """Teach `load_proposer` / `load_verifier` a new URI scheme. A loader gets (location, options, uri)."""
    if proposer is not None:
        _proposer_loaders[scheme] = proposer
    if verifier is not None:
        _verifier_loaders[scheme] = verifier


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Split `scheme:location?k=v` into its parts; a bad URI raises a ValueError naming it."""
    scheme, sep, rest = uri.partition(":")
    if not sep or not scheme or not rest:
        raise ValueError(f"model URI {uri!r} is not of the form scheme:location (e.g. hf:/path/to/model)")
    location, _, query = rest.partition("?")
    return scheme, location, dict(parse_qsl(query))


def _load(kind: str, loaders: dict[str, Loader], uri: str) -> Any:
    scheme, location, options = parse_uri(uri)
    if scheme not in loaders:
        known = ", ".join(sorted(loaders)) or "none"
        raise ValueError(f"unknown {kind} scheme {scheme!r} in {uri!r}; known schemes: {known}")
    with _lock:
        if (kind, uri) not in _cache:
            _cache[(kind, uri)] = loaders[scheme](location, options, uri)
        return _cache[(kind, uri)]


def load_proposer(uri: str) -> Proposer:
    """The proposer (or reviser) engine a URI names, loaded once per process."""
    _ensure_builtin_schemes()
    engine: Proposer = _load("proposer", _proposer_loaders, uri)
    return engine


def load_verifier(uri: str) -> Verifier:
    """The verifier (PRM) engine a URI names, loaded once per process."""
    _ensure_builtin_schemes()
    engine: Verifier = _load("verifier", _verifier_loaders, uri)
    return engine


def _hf_proposer(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.hf import HFProposer

    return HFProposer(location, uri=uri, **_engine_options(options))


def _gguf_proposer(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.hf import HFProposer

    file = Path(location).expanduser()
    if file.suffix != ".gguf":
        raise EngineError(f"gguf URI must name a .gguf file, got {location!r}")
    return HFProposer(str(file.parent), gguf_file=file.name, uri=uri, **_engine_options(options))


def _hf_verifier(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.hf import HFValueHeadPRM

    return HFValueHeadPRM(location, uri=uri, **_engine_options(options))


def _engine_options(options: dict[str, str]) -> dict[str, Any]:
    known: dict[str, Callable[[str], Any]] = {"device": str, "dtype": str, "max_batch": int}
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"unknown engine option(s) {sorted(unknown)}; known: {sorted(known)}")
    parsed: dict[str, Any] = {}
    for key, value in options.items():
        try:
            parsed[key] = known[key](value)
        except ValueError:
            raise ValueError(f"engine option {key}={value!r} is not a valid {known[key].__name__}") from None
    return parsed


def _testbed_proposer(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.testbed.checkpoints import checkpoint_path

    return _hf_proposer(str(checkpoint_path(location)), options, uri)


def _testbed_verifier(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.testbed.checkpoints import checkpoint_path

    return _hf_verifier(str(checkpoint_path(location)), options, uri)


def _ensure_builtin_schemes() -> None:
    _proposer_loaders.setdefault("hf", _hf_proposer)
    _proposer_loaders.setdefault("gguf", _gguf_proposer)
    _proposer_loaders.setdefault("testbed", _testbed_proposer)
    _verifier_loaders.setdefault("hf", _hf_verifier)
    _verifier_loaders.setdefault("testbed", _testbed_verifier)
