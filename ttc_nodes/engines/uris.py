"""Model URIs: `scheme:location[?key=value&...]` → a loaded engine.

Built-in schemes:
- `hf:PATH` — a transformers causal LM as proposer / reviser (`sampler=cached`: the fast KV-cache sampler
  of `engines.cached_sampler`, the default for a Llama model in float32 on CPU, keeping prompts' KV
  cache across calls in `prefix_cache_mb=N` MiB, 256 by default, 0 for none; `sampler=generate`:
  `model.generate`, the default otherwise); as verifier, a PRM in the layout
  `?format=` names: `value_head` (token classification at step separators, the default), `step_tag`
  (Math-Shepherd: `&tag=ки&good=%2B&bad=-`), `chat_judge` (RLHFlow: `&good=%2B&bad=-`) or
  `confidence` (a causal LM's own lowest token probability so far; no reward model, see
  `engines.confidence`).
- `gguf:PATH.gguf` — a GGUF file through transformers (needs the `gguf` and `accelerate` packages).
- `openai:URL[,URL...]#MODEL` — an OpenAI-compatible completions server (see `engines.openai`).
- `vllm:PATH_OR_NAME` — vLLM's offline engine with prefix caching (see `engines.vllm`; needs vllm installed);
  as verifier, a PRM on vLLM's pooling runner, `?format=` `value_head`, `step_tag` or `qwen_prm`
  (see `engines.vllm_prm`).
- `judge:<proposer URI>` (verifier) — an LLM rating each step (see `engines.judge`).

Common options: `device`, `dtype`, `max_batch`; `chat=1` on an `hf:`/`gguf:` proposer wraps prompts in
the model's chat template (`prompt_format_of(engine)` gives the layout to put in the solve context).
Other backends register themselves with `register_scheme`, in code or from a plug-in: the first time
a URI names a scheme not registered, every entry point of the group `ttc.engines` (a function that
calls `register_scheme`) is run, once per process. The testbed's `testbed:NAME` (the checkpoints
shipped with the package) is one, declared in pyproject.toml. Engines are cached per URI, so a process
loads each model once. Credentials in a URI (`openai:http://user:KEY@host/v1#m`, `?api_key=`) never
reach a message or an engine's `.uri`: both go through `masked_uri`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from ttc_nodes.engines.base import EngineError, Proposer, Verifier
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat

log = logging.getLogger(__name__)

Loader = Callable[[str, dict[str, str], str], Any]
ENTRY_POINTS = "ttc.engines"  # the entry-point group of plug-in schemes

_proposer_loaders: dict[str, Loader] = {}
_verifier_loaders: dict[str, Loader] = {}
_resolvers: dict[str, Callable[[str], str]] = {}
_cache: dict[tuple[str, str, str], Any] = {}
_lock = threading.RLock()  # re-entrant: a `judge:` loader loads the proposer it wraps
_plugins_loaded = False
_plugin_failures: dict[str, str] = {}  # entry point → why it could not register its schemes

# `//userinfo@` of every URL in the text: the authority runs to the next `/`, `?` or `#`, and its last
# `@` ends the userinfo (so an unescaped `@` in a password is hidden too).
_USERINFO = re.compile(r"//([^/?#@\s]*(?:@[^/?#@\s]*)*)@")
SECRET_OPTIONS = ("api_key", "apikey", "key", "token", "access_token", "password", "secret")
_SECRET_OPTION = re.compile(rf"([?&](?:{'|'.join(SECRET_OPTIONS)})=)[^&#\s]*", re.IGNORECASE)


def masked_uri(uri: str) -> str:
    """`uri` (any engine URI, a base URL, or a message holding them) with its credentials shown as
    `***`: the password of every `user:password@` (a lone `key@` whole), and the value of the
    query options in `SECRET_OPTIONS`. A URI without credentials comes back unchanged; masking
    twice changes nothing more. Fit for messages, logs and what is stored (as `db.session.masked`
    is for database URLs)."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group(1).partition(":")
        return f"//{user}:***@" if colon else "//***@"

    return _SECRET_OPTION.sub(r"\1***", _USERINFO.sub(hide, uri))


def register_scheme(
    scheme: str,
    *,
    proposer: Loader | None = None,
    verifier: Loader | None = None,
    resolve: Callable[[str], str] | None = None,
) -> None:
    """Teach `load_proposer` / `load_verifier` a new URI scheme. A loader gets (location, options, uri).
    `resolve(location)` names what a location stands for now (a scheme whose names point to files an
    environment variable chooses): engines are cached by URI and by that, so a changed target loads anew."""
    with _lock:
        if proposer is not None:
            _proposer_loaders[scheme] = proposer
        if verifier is not None:
            _verifier_loaders[scheme] = verifier
        if resolve is not None:
            _resolvers[scheme] = resolve


def parse_uri(uri: str) -> tuple[str, str, dict[str, str]]:
    """Split `scheme:location?k=v` into its parts; a bad URI raises a ValueError naming it."""
    scheme, sep, rest = uri.partition(":")
    if not sep or not scheme or not rest:
        raise ValueError(f"model URI {masked_uri(uri)!r} is not of the form scheme:location (e.g. hf:/path/to/model)")
    location, _, query = rest.partition("?")
    return scheme, location, dict(parse_qsl(query))


def _load(kind: str, loaders: dict[str, Loader], uri: str) -> Any:
    scheme, location, options = parse_uri(uri)
    with _lock:
        _ensure_builtin_schemes()
        if scheme not in loaders:
            _load_plugins()
        if scheme not in loaders:
            known = ", ".join(sorted(loaders)) or "none"
            broken = "".join(f"; plug-in {name!r} failed: {why}" for name, why in _plugin_failures.items())
            raise ValueError(f"unknown {kind} scheme {scheme!r} in {masked_uri(uri)!r}; known schemes: {known}{broken}")
        resolve = _resolvers.get(scheme)
        key = (kind, uri, resolve(location) if resolve else location)
        if key not in _cache:
            _cache[key] = loaders[scheme](location, options, uri)
        return _cache[key]


def _load_plugins() -> None:
    """Run each `ttc.engines` entry point once per process (under `_lock`). A scheme registered in
    code, or built in, stays as it was; a plug-in that fails is logged and named when its scheme is
    asked for."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    before = dict(_proposer_loaders), dict(_verifier_loaders)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            entry.load()()
        except Exception as error:  # a broken plug-in must not hide the schemes of the others
            _plugin_failures[entry.name] = " ".join(f"{type(error).__name__}: {error}".split())  # one line
            log.warning("engine plug-in %r (%s) failed to register: %s", entry.name, entry.value, error)
    _proposer_loaders.update(before[0])
    _verifier_loaders.update(before[1])


def load_proposer(uri: str) -> Proposer:
    """The proposer (or reviser) engine a URI names, loaded once per process."""
    engine: Proposer = _load("proposer", _proposer_loaders, uri)
    return engine


def load_verifier(uri: str) -> Verifier:
    """The verifier (PRM) engine a URI names, loaded once per process."""
    engine: Verifier = _load("verifier", _verifier_loaders, uri)
    return engine


def prompt_format_of(engine: object, default: PromptFormat = DEFAULT_FORMAT) -> PromptFormat:
    """The prompt layout an engine's URI asked for (`?chat=1`), else `default`."""
    prompt_format = getattr(engine, "prompt_format", None)
    return prompt_format if isinstance(prompt_format, PromptFormat) else default


_ENGINE_OPTIONS: dict[str, Callable[[str], Any]] = {"device": str, "dtype": str, "max_batch": int}


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a yes/no flag (1 or 0)")


def hf_proposer(location: str, options: dict[str, str], uri: str, gguf_file: str | None = None) -> Any:
    """The `hf:` loader: a transformers causal LM at `location` (for plug-ins whose models are local
    checkpoints: the engine's `.uri` is `uri`, masked)."""
    from ttc_nodes.engines.hf import causal_lm_proposer

    own = _typed_options(options, {**_ENGINE_OPTIONS, "chat": _flag, "sampler": str, "prefix_cache_mb": float})
    chat = own.pop("chat", False)
    prefix_cache_mb = own.pop("prefix_cache_mb", None)
    engine = causal_lm_proposer(location, gguf_file=gguf_file, uri=uri, **own)
    if prefix_cache_mb is not None:
        # Which sampler serves is decided with the model's config: the option is set once it is known.
        if not hasattr(engine, "keep_prefixes"):
            raise EngineError(f"{masked_uri(uri)}: prefix_cache_mb is an option of sampler=cached")
        engine.keep_prefixes(prefix_cache_mb)
    if chat:
        if not getattr(engine.tokenizer, "chat_template", None):
            raise EngineError(
                f"{masked_uri(uri)}: chat=1 asks for the model's chat template, but its tokenizer has none"
            )
        render = functools.partial(engine.tokenizer.apply_chat_template, tokenize=False, add_generation_prompt=True)
        engine.prompt_format = PromptFormat.for_chat(render)  # type: ignore[attr-defined]
    return engine


def _gguf_proposer(location: str, options: dict[str, str], uri: str) -> Any:
    file = Path(location).expanduser()
    if file.suffix != ".gguf":
        raise EngineError(f"gguf URI must name a .gguf file, got {masked_uri(location)!r}")
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise EngineError(
            f"{masked_uri(uri)}: reading GGUF files through transformers needs: pip install {' '.join(missing)}"
        )
    return hf_proposer(str(file.parent), options, uri, gguf_file=file.name)


def hf_verifier(location: str, options: dict[str, str], uri: str) -> Any:
    """The `hf:` verifier loader: the PRM at `location` in the layout `?format=` names."""
    from ttc_nodes.engines.hf import HFValueHeadPRM
    from ttc_nodes.engines.prm import PRM_FORMATS, StepTagPRM

    rest = dict(options)
    layout = rest.pop("format", "value_head")
    if layout == "value_head":
        return HFValueHeadPRM(location, uri=uri, **_typed_options(rest, _ENGINE_OPTIONS))
    if layout == "confidence":
        from ttc_nodes.engines.confidence import ConfidencePRM

        return ConfidencePRM(location, uri=uri, **_typed_options(rest, {**_ENGINE_OPTIONS, "max_length": int}))
    if layout not in PRM_FORMATS:
        known = ", ".join(["value_head", "confidence", *PRM_FORMATS])
        raise ValueError(f"unknown PRM format {layout!r} in {masked_uri(uri)!r}; known formats: {known}")
    known_options: dict[str, Callable[[str], Any]] = {**_ENGINE_OPTIONS, "good": str, "bad": str, "max_length": int}
    if PRM_FORMATS[layout] is StepTagPRM:
        known_options["tag"] = str
    return PRM_FORMATS[layout](location, uri=uri, **_typed_options(rest, known_options))


def _typed_options(options: dict[str, str], known: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    unknown = set(options) - set(known)
    if unknown:
        raise ValueError(f"unknown engine option(s) {sorted(unknown)}; known: {sorted(known)}")
    parsed: dict[str, Any] = {}
    for key, value in options.items():
        try:
            parsed[key] = known[key](value)
        except ValueError:
            kind = getattr(known[key], "__name__", "value").lstrip("_")
            raise ValueError(f"engine option {key}={value!r} is not a valid {kind}") from None
    return parsed


def _openai_proposer(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.openai import OpenAIProposer, parse_location

    if "#" in "".join(options.values()):
        raise ValueError(f"{masked_uri(uri)!r}: write the model before the options: openai:URL#MODEL?key=value")
    base_urls, model = parse_location(location)
    known: dict[str, Callable[[str], Any]] = {
        "concurrency": int,
        "timeout": float,
        "retries": int,
        "backoff": float,
        "batch": int,
        "params": float,
    }
    api_key = os.environ.get("OPENAI_API_KEY")
    return OpenAIProposer(base_urls, model, uri=uri, api_key=api_key, **_typed_options(options, known))


_VLLM_OPTIONS: dict[str, Callable[[str], Any]] = {
    "dtype": str,
    "gpu_memory_utilization": float,
    "max_model_len": int,
    "max_num_seqs": int,
    "block_size": int,
    "tensor_parallel_size": int,
    "enforce_eager": _flag,
}


def _vllm_proposer(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.vllm import VLLMProposer

    known: dict[str, Callable[[str], Any]] = {**_VLLM_OPTIONS, "prefix_caching": _flag, "seed": int}
    return VLLMProposer(location, uri=uri, **_typed_options(options, known))


def _vllm_verifier(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.vllm_prm import FORMATS, VLLMRewardPRM

    rest = dict(options)
    layout = rest.pop("format", None)
    if layout is not None and layout not in FORMATS:
        raise ValueError(f"unknown PRM format {layout!r} in {masked_uri(uri)!r}; known formats: {', '.join(FORMATS)}")
    own: dict[str, dict[str, Callable[[str], Any]]] = {
        "step_tag": {"tag": str, "good": str, "bad": str},
        "qwen_prm": {"system": str},
    }
    known = {**_VLLM_OPTIONS, **own.get(layout or "", {})}
    return VLLMRewardPRM(location, prm_format=layout, uri=uri, **_typed_options(rest, known))


def _judge_verifier(location: str, options: dict[str, str], uri: str) -> Any:
    from ttc_nodes.engines.judge import JudgePRM

    inner, _, query = uri.partition(":")[2].partition("?")
    pairs = [pair for pair in query.split("&") if pair]
    judge_options = {key: value for key, value in parse_qsl("&".join(p for p in pairs if p.startswith("judge_")))}
    rest = "&".join(p for p in pairs if not p.startswith("judge_"))
    proposer = load_proposer(f"{inner}?{rest}" if rest else inner)
    typed = _typed_options(judge_options, {"judge_max_tokens": int, "judge_max_chars": int})
    return JudgePRM(proposer, uri=uri, **{key.removeprefix("judge_"): value for key, value in typed.items()})


def _ensure_builtin_schemes() -> None:
    _proposer_loaders.setdefault("hf", hf_proposer)
    _proposer_loaders.setdefault("gguf", _gguf_proposer)
    _proposer_loaders.setdefault("openai", _openai_proposer)
    _proposer_loaders.setdefault("vllm", _vllm_proposer)
    _verifier_loaders.setdefault("hf", hf_verifier)
    _verifier_loaders.setdefault("judge", _judge_verifier)
    _verifier_loaders.setdefault("vllm", _vllm_verifier)
