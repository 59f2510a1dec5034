"""Transformers backends: a batched sampling proposer and a value-head process reward model.

Both load any local `save_pretrained` directory (or a GGUF file through `gguf_file=`), run on CPU or
GPU, and never touch the network (`local_files_only=True`). The context is the model config's
`max_position_embeddings` (a GGUF file's context length): a prompt that fills it is refused with
`PromptTooLong` before anything is generated, and a completion stops where the context ends
(finish_reason "length"), as vLLM stops it.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from ttc_nodes.engines.base import Completion, EngineError, Scored, check_fits
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling
from ttc_nodes.engines.batcher import Batcher, shared_batcher
from ttc_nodes.engines.transformers_io import prm_inputs, quiet_transformers, right_pad
from ttc_nodes.engines.uris import masked_uri
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat, check_question_size

log = logging.getLogger(__name__)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}; e.g. float32, bfloat16, float16")
    return dtype


def _check_max_batch(max_batch: int) -> int:
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return max_batch


def _check_path(path: str) -> Path:
    location = Path(path).expanduser()
    if not location.exists():
        raise EngineError(f"model path does not exist: {location}")
    return location


def _load_tokenizer(location: Path, gguf_file: str | None) -> Any:
    from transformers import AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True, gguf_file=gguf_file)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_class: Any, location: Path, what: str, *, dtype: str, device: torch.device, gguf_file: str | None = None
) -> tuple[Any, Any]:
    """A local checkpoint's tokenizer and model, in eval mode on `device`; any loading failure is an
    EngineError naming `what` was expected and where."""
    weights_dtype = _torch_dtype(dtype)
    try:
        tokenizer = _load_tokenizer(location, gguf_file)
        model = model_class.from_pretrained(location, local_files_only=True, gguf_file=gguf_file, dtype=weights_dtype)
    except (OSError, ValueError) as error:  # transformers raises either for a directory it cannot read
        raise EngineError(f"cannot load {what} from {location}: {error}") from error
    model.to(device).eval()
    return tokenizer, model


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def model_context(model: Any) -> int | None:
    """The positions a model reads (its config's `max_position_embeddings`), or None when its config
    does not say."""
    config = model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None and hasattr(config, "get_text_config"):
        positions = getattr(config.get_text_config(), "max_position_embeddings", None)
    return int(positions) if isinstance(positions, int) and positions > 0 else None


class HFProposer(BatchedProposer):
    """Samples with `model.generate`, every prompt × n sample of a call in as few batches as fit."""

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch: int = 64,
        gguf_file: str | None = None,
        uri: str | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM

        location = _check_path(path)
        self.uri = masked_uri(uri) if uri else f"hf:{location}"
        self.device = pick_device(device)
        self.max_batch = _check_max_batch(max_batch)
        self.tokenizer, self.model = load_model(
            AutoModelForCausalLM, location, "a causal LM", dtype=dtype, device=self.device, gguf_file=gguf_file
        )
        self._lock = threading.Lock()
        self.parameters = parameter_count(self.model)
        self.context = model_context(self.model)

    def _run(self, batches: list[list[Row]], sampling: Sampling) -> list[list[Completion]]:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        # One call at a time: concurrent solves share the model, and the seeded RNG must not interleave.
        with self._lock, torch.random.fork_rng(devices=cuda):
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            return super()._run(batches, sampling)

    def _check_prompts(self, prompts: Sequence[str]) -> None:
        """PromptTooLong, before any generation, for a call whose longest prompt fills the context."""
        if self.context is None or not prompts:
            return
        unique = list(dict.fromkeys(prompts))
        encoded = self.tokenizer(unique, add_special_tokens=False)["input_ids"]
        check_fits(self.uri, max(len(ids) for ids in encoded), self.context)

    @torch.inference_mode()
    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        self.tokenizer.padding_side = "left"
        prompts = [row.prompt for row in rows]
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.device)
        max_tokens, stop = sampling.max_tokens, sampling.stop
        if self.context is not None:  # generation stops where the context ends
            max_tokens = min(max_tokens, self.context - batch["input_ids"].shape[1])
        decoding: dict[str, Any] = (
            {"do_sample": True, "temperature": sampling.temperature, "top_k": 0, "top_p": 1.0}
            if sampling.temperature > 0
            else {"do_sample": False}
        )
        output = self.model.generate(
            **batch,
            max_new_tokens=max_tokens,
            stopping_criteria=_stop_criteria(self.tokenizer, stop, batch["input_ids"].shape[1]),
            pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True,
            output_scores=True,
            **decoding,
        )
        prompt_width = batch["input_ids"].shape[1]
        new_tokens = output.sequences[:, prompt_width:]
        token_logprobs = self.model.compute_transition_scores(  # type: ignore[misc]
            output.sequences, output.scores, normalize_logits=True
        )
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        return [
            [self._completion(new_tokens[row], token_logprobs[row], int(prompt_lengths[row]), max_tokens, stop)]
            for row in range(len(prompts))
        ]

    def _completion(
        self,
        tokens: torch.Tensor,
        logprobs: torch.Tensor,
        prompt_tokens: int,
        max_tokens: int,
        stop: Sequence[str],
    ) -> Completion:
        eos_ids = self.model.generation_config.eos_token_id
        eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        ids = tokens.tolist()
        length = len(ids)
        ended = False
        for index, token in enumerate(ids):
            if token in eos:
                length, ended = index + 1, True
                break
        # Rows that stopped early are padded; padding after a stop string is not generated text.
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        stop_reason, cut = _first_stop(text, stop)
        if stop_reason is not None:
            text = text[:cut]
            length = _tokens_until(self.tokenizer, ids[:length], text, stop_reason)
        finish: Literal["stop", "length"] = "stop" if ended or stop_reason is not None else "length"
        if stop_reason is None and not ended and length < max_tokens:
            finish = "stop"  # stopped by padding after EOS that decoded to nothing
        logprob = float(logprobs[:length].clamp(min=-1e9).sum()) if length else 0.0
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=length,
            logprob=logprob,
            finish_reason=finish,
            stop_reason=stop_reason,
        )


def _stop_criteria(tokenizer: Any, stop: Sequence[str], prompt_width: int) -> Any:
    """Stop each row once its generated tail contains a stop string.

    Decoding a short tail works with any tokenizer, unlike transformers' `stop_strings`, which
    needs a tokenizer whose vocabulary it can reverse-engineer.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    strings = [s for s in stop if s]
    if not strings:
        return None
    window = max(len(s) for s in strings) + 1

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            tail = input_ids[:, max(prompt_width, input_ids.shape[1] - window) :]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=True)
            hits = [any(s in text for s in strings) for text in texts]
            return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnStrings()])


def _first_stop(text: str, stop: Sequence[str]) -> tuple[str | None, int]:
    """The stop string that occurs first in `text` and where it starts."""
    found = [(text.find(s), s) for s in stop if s and text.find(s) >= 0]
    if not found:
        return None, len(text)
    cut, string = min(found)
    return string, cut


def _tokens_until(tokenizer: Any, ids: list[int], kept: str, stop_string: str) -> int:
    """How many generated tokens it took to produce `kept` followed by the stop string: the fewest
    whose decoded text is that long (a binary search; decoded length grows with the token count)."""
    target = len(kept) + len(stop_string)
    count = bisect.bisect_left(
        range(1, len(ids) + 1), target, key=lambda n: len(tokenizer.decode(ids[:n], skip_special_tokens=True))
    )
    return min(count + 1, len(ids))


SAMPLERS = ("generate", "cached")


def causal_lm_proposer(path: str, *, sampler: str | None = None, **options: Any) -> HFProposer:
    """The `hf:` proposer of the causal LM at `path` (options as `HFProposer`'s): sampling through
    `model.generate` with `sampler="generate"`, through `engines.cached_sampler.CachedSampler` with
    "cached"; by default the cached sampler where it serves (a Llama model in float32 on CPU)."""
    from ttc_nodes.engines.cached_sampler import CachedProposer, serves

    if sampler is None:
        config = _config_of(path, options.get("gguf_file"))
        default = serves(config, pick_device(options.get("device", "auto")), options.get("dtype", "float32"))
        sampler = "cached" if default else "generate"
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    engine = CachedProposer if sampler == "cached" else HFProposer
    return engine(path, **options)


def _config_of(path: str, gguf_file: str | None) -> Any:
    """The model config at `path`, or None where it cannot be read (loading the model then says why)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(Path(path).expanduser(), local_files_only=True, gguf_file=gguf_file)
    except (OSError, ValueError):
        return None


ScoreRow = tuple[str, Sequence[str]]  # a question and the steps of one solution to it


class LocalVerifier:
    """What the transformers verifiers share: a local checkpoint on a device, and `score` through a
    batcher that merges the solutions of concurrent calls into model calls of up to `max_batch`
    rows, one model call at a time. Subclasses call `_load` and write `_score_batch` (solutions to
    one question), or `_score_rows` (rows of any questions) and set `mixes_questions`."""

    uri: str
    max_batch: int
    # True: `_score_rows` reads rows of different questions in one model call, so calls about other
    # questions ride together. False: only calls about the same question do.
    mixes_questions: ClassVar[bool] = False

    def _load(
        self,
        model_class: Any,
        path: str,
        what: str,
        *,
        device: str,
        dtype: str,
        max_batch: int,
        max_length: int | None = None,
    ) -> Path:
        """Load the model and tokenizer at `path`; sets device, batch, lock, parameters and max_length."""
        location = _check_path(path)
        self.device = pick_device(device)
        self.max_batch = _check_max_batch(max_batch)
        self.tokenizer, self.model = load_model(model_class, location, what, dtype=dtype, device=self.device)
        self._lock = threading.Lock()
        self.parameters = parameter_count(self.model)
        self.max_length = max_length or model_context(self.model) or 4096
        return location

    def score(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        """Step scores of each solution. A question over MAX_QUESTION_CHARS (QuestionTooLong), or
        whose tokens alone fill the context (PromptTooLong), is refused before the model reads it;
        a question that fits with steps that do not is cut to its tail (`Scored.truncated`)."""
        check_question_size(question)
        if not solutions:
            return []
        question_tokens = len(self.tokenizer(question, add_special_tokens=False)["input_ids"])
        check_fits(self.uri, question_tokens, self.max_length, "a question")
        rows = [(question, steps) for steps in solutions]
        return self._batcher().submit(None if self.mixes_questions else question, rows)

    def _batcher(self) -> Batcher[str | None, ScoreRow, Scored]:
        return shared_batcher(self, lambda: Batcher(self._score_merged, max_rows=self.max_batch, name=self.uri))

    def _score_merged(self, question: str | None, batches: list[list[ScoreRow]]) -> list[Scored]:
        """Scores of merged rows, a model call per batch; each records the rows of its batch."""
        with self._lock:
            return [replace(scored, batch_rows=len(batch)) for batch in batches for scored in self._score_rows(batch)]

    def _score_rows(self, rows: Sequence[ScoreRow]) -> list[Scored]:
        """Scores of `rows` in one model call; by default rows of one question, read by `_score_batch`."""
        [question] = {question for question, _ in rows}
        return self._score_batch(question, [steps for _, steps in rows])

    def _score_batch(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        raise NotImplementedError


class HFValueHeadPRM(LocalVerifier):
    """A PRM read at step separators: a token-classification head with one logit (sigmoid) or two
    (softmax, the positive class second), as Qwen2.5-Math-PRM-style models use."""

    mixes_questions = True

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        dtype: str = "float32",
        max_batch: int = 32,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
        uri: str | None = None,
    ) -> None:
        from transformers import AutoModelForTokenClassification

        location = self._load(
            AutoModelForTokenClassification,
            path,
            "a token-classification PRM",
            device=device,
            dtype=dtype,
            max_batch=max_batch,
        )
        self.uri = masked_uri(uri) if uri else f"hf-prm:{location}"
        self.prompt_format = prompt_format
        if self.model.config.num_labels not in (1, 2):
            raise EngineError(f"PRM at {location} has num_labels={self.model.config.num_labels}; expected 1 or 2")

    @torch.inference_mode()
    def _score_rows(self, rows: Sequence[ScoreRow]) -> list[Scored]:
        encoded = [prm_inputs(self.tokenizer, question, steps, self.prompt_format) for question, steps in rows]
        full_lengths = [len(ids) for ids, _ in encoded]
        truncated = [length > self.max_length for length in full_lengths]
        # Keep the tail: the steps being scored matter more than the start of a long question.
        encoded = [
            (ids[-self.max_length :], [p - max(0, len(ids) - self.max_length) for p in positions])
            for ids, positions in encoded
        ]
        input_ids, mask = right_pad([ids for ids, _ in encoded], self.tokenizer.pad_token_id)
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
        if logits.shape[-1] == 1:
            probabilities = torch.sigmoid(logits[..., 0])
        else:
            probabilities = torch.softmax(logits.float(), dim=-1)[..., 1]
        results = []
        for row, (ids, positions) in enumerate(encoded):
            scores = [float(probabilities[row, p]) if p >= 0 else 0.5 for p in positions]
            if truncated[row]:
                log.warning("%s: PRM input of %d tokens truncated to %d", self.uri, full_lengths[row], self.max_length)
            results.append(Scored(step_scores=scores, tokens=len(ids), truncated=truncated[row]))
        return results
