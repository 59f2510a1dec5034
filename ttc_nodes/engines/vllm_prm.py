"""Process reward models on vLLM's pooling runner: one `LLM.encode` per `score` call, every solution of
the round in it, and one output row per prompt token read at each step's position.

URI: `vllm:PATH_OR_NAME?format=FORMAT[&dtype=float32&max_model_len=2048&...]` as a verifier. Formats:

- `value_head` (the default for a `*ForTokenClassification` checkpoint): the inputs and read positions
  of `HFValueHeadPRM` (`prm_inputs`: question, then each step followed by the step separator, read at
  the separator's last token); one logit → sigmoid, two → softmax, second class.
- `step_tag` (Math-Shepherd, a `*ForCausalLM`; `&tag=ки&good=%2B&bad=-`): the text and positions of
  `StepTagPRM`. vLLM converts the causal LM into a two-label token classifier whose weights are the
  LM head's rows for the good and bad tokens (`convert="classify"` with `classifier_from_token`,
  `method="no_post_processing"`), so the score is softmax over (good, bad) logits at each tag, as
  `StepTagPRM` computes it, without full-vocabulary logits at every position.
- `qwen_prm` (Qwen2.5-Math-PRM, `Qwen2ForProcessRewardModel`; `&system=...`): the model card's layout —
  a system turn, the question as the user turn, and the steps as the assistant turn, each followed by
  `<extra_0>`, rendered with the tokenizer's chat template — and softmax over the two labels at each
  `<extra_0>`, the score being class 1. Tested on a tiny random-weight checkpoint of that architecture
  against the model card's computation; NOT tested on the released weights (7B, not reachable here).

All formats pool with `tok_pooling_type="ALL"` and take raw logits (`use_activation=False`), then read
the positions this module computed from its own tokenization; vLLM's STEP pooling would find tags by
token id alone, which a tag inside a question or a step would shift. Inputs longer than the engine's
`max_model_len` keep a leading beginning-of-sequence token and the tail (the steps), come back with
`Scored.truncated=True`, and steps whose position was cut score 0.5 — as the transformers PRMs do; a
question whose tokens alone fill `max_model_len` is refused (`PromptTooLong`), as they refuse it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ttc_nodes.engines.base import EngineError, Scored, check_fits
from ttc_nodes.engines.prm import NEUTRAL, keep_tail, single_token, step_tag_text, tokens_at
from ttc_nodes.engines.transformers_io import prm_inputs
from ttc_nodes.engines.uris import masked_uri
from ttc_nodes.engines.vllm import counted_parameters, engine_options, load_llm, model_location
from ttc_nodes.prompts import DEFAULT_FORMAT, PromptFormat, check_question_size

log = logging.getLogger(__name__)

FORMATS = ("value_head", "step_tag", "qwen_prm")
QWEN_PRM_ARCHITECTURE = "Qwen2ForProcessRewardModel"
QWEN_PRM_SEPARATOR = "<extra_0>"
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Checkpoint:
    """What a model's config says about it: its architectures and its number of labels."""

    architectures: tuple[str, ...]
    num_labels: int

    def has(self, suffix: str) -> bool:
        return any(name.endswith(suffix) for name in self.architectures)


def read_checkpoint(model: str) -> Checkpoint:
    """The architectures and label count of a local directory or hub name, from its config alone."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise EngineError(f"cannot read the model config of {model}: {error}") from error
    return Checkpoint(tuple(getattr(config, "architectures", None) or ()), int(getattr(config, "num_labels", 0)))


def pick_format(asked: str | None, checkpoint: Checkpoint, where: str) -> str:
    """The PRM format to run: the one asked for if the checkpoint is of that kind, else the one its
    architecture implies. A checkpoint that no format fits is an EngineError saying what it is."""
    kind = f"{where} is {'/'.join(checkpoint.architectures) or 'a checkpoint without architectures'}"
    value_head = checkpoint.has("ForTokenClassification")
    if asked is None:
        if value_head:
            asked = "value_head"
        elif QWEN_PRM_ARCHITECTURE in checkpoint.architectures:
            asked = "qwen_prm"
        else:
            raise EngineError(
                f"{kind}, not a pooling PRM (a *ForTokenClassification value head or {QWEN_PRM_ARCHITECTURE}); "
                "for a Math-Shepherd-style causal LM pass format=step_tag"
            )
    if asked == "value_head" and not (value_head and checkpoint.num_labels in (1, 2)):
        raise EngineError(
            f"format=value_head needs a *ForTokenClassification checkpoint with 1 or 2 labels; {kind}"
            + (f" with {checkpoint.num_labels} labels" if value_head else "")
        )
    if asked == "step_tag" and not checkpoint.has("ForCausalLM"):
        raise EngineError(f"format=step_tag needs a causal LM (*ForCausalLM) checkpoint; {kind}")
    if asked == "qwen_prm" and QWEN_PRM_ARCHITECTURE not in checkpoint.architectures:
        raise EngineError(f"format=qwen_prm needs a {QWEN_PRM_ARCHITECTURE} checkpoint; {kind}")
    return asked


def qwen_prm_inputs(
    tokenizer: Any, question: str, steps: Sequence[str], system: str = QWEN_PRM_SYSTEM
) -> tuple[list[int], list[int]]:
    """Qwen2.5-Math-PRM's input ids (the model card's chat layout) and the position of each step's
    `<extra_0>`; a step that itself contains the separator is an EngineError."""
    turns = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": "".join(f"{step}{QWEN_PRM_SEPARATOR}" for step in steps)},
    ]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=False)
    # The template writes its own special tokens.
    ids = list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
    separator = single_token(tokenizer, QWEN_PRM_SEPARATOR, "step separator")
    positions = [index for index, token in enumerate(ids) if token == separator]
    if len(positions) != len(steps):
        raise EngineError(
            f"format=qwen_prm found {len(positions)} {QWEN_PRM_SEPARATOR} tokens for {len(steps)} steps: "
            "a step or the question contains the separator"
        )
    return ids, positions


def step_probabilities(logits: Any, positive: int) -> Any:
    """Per token, the probability of a good step: sigmoid of a single logit, else softmax over the
    labels, class `positive`."""
    import torch

    logits = logits.float()
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=-1)[:, positive]


class VLLMRewardPRM:
    """A process reward model served by vLLM's offline engine in pooling mode (`runner="pooling"`)."""

    def __init__(
        self,
        path: str,
        *,
        prm_format: str | None = None,
        tag: str = "ки",
        good: str = "+",
        bad: str = "-",
        system: str = QWEN_PRM_SYSTEM,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        block_size: int | None = None,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        uri: str | None = None,
    ) -> None:
        if not tag:
            raise ValueError("the step tag must not be empty")
        if prm_format is not None and prm_format not in FORMATS:
            raise ValueError(f"unknown PRM format {prm_format!r} for vllm:; known formats: {', '.join(FORMATS)}")
        options = engine_options(
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            block_size=block_size,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
        )
        from vllm.config import PoolerConfig

        model = model_location(path)
        self.uri = masked_uri(uri) if uri else f"vllm:{model}"
        self.format = pick_format(prm_format, read_checkpoint(model), model)
        # Raw per-token outputs; the positions to read are chosen here, not by vLLM's STEP pooling.
        options.update(runner="pooling", pooler_config=PoolerConfig(task="token_classify", tok_pooling_type="ALL"))
        if self.format == "step_tag":
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
            good_id, bad_id = single_token(tokenizer, good, "good"), single_token(tokenizer, bad, "bad")
            options["convert"] = "classify"
            options["hf_overrides"] = {
                "classifier_from_token": tokenizer.convert_ids_to_tokens([good_id, bad_id]),
                "method": "no_post_processing",
            }
        self.llm = load_llm(model, options, " as a pooling PRM")
        if "token_classify" not in self.llm.supported_tasks:
            raise EngineError(
                f"vllm loaded {model} as a pooling model without per-token classification "
                f"(supported tasks: {', '.join(self.llm.supported_tasks)}); it is not a PRM of format={self.format}"
            )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.parameters = counted_parameters(model, self.uri)
        self.prompt_format = prompt_format
        self.encode = self._encoder(tag=tag, system=system)
        # value_head and qwen_prm score the second class; step_tag's labels are (good, bad).
        self.positive = 0 if self.format == "step_tag" else 1
        self._lock = threading.Lock()

    def _encoder(self, *, tag: str, system: str) -> Callable[[str, Sequence[str]], tuple[list[int], list[int]]]:
        """The format's (question, steps) → (token ids, position read for each step)."""
        if self.format == "step_tag":
            if not self.tokenizer.is_fast:
                raise EngineError(f"{self.uri}: format=step_tag needs a fast tokenizer (character offsets)")

            def step_tag(question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
                text, ends = step_tag_text(question, steps, tag)
                return tokens_at(self.tokenizer, text, ends, add_special_tokens=True, uri=self.uri)

            return step_tag
        if self.format == "qwen_prm":
            if not getattr(self.tokenizer, "chat_template", None):
                raise EngineError(f"{self.uri}: format=qwen_prm needs a tokenizer with a chat template")
            return lambda question, steps: qwen_prm_inputs(self.tokenizer, question, steps, system)
        return lambda question, steps: prm_inputs(self.tokenizer, question, steps, self.prompt_format)

    def score(self, question: str, solutions: Sequence[Sequence[str]]) -> list[Scored]:
        from vllm.pooling_params import PoolingParams

        check_question_size(question)
        if not solutions:
            return []
        check_fits(
            self.uri, len(self.tokenizer.encode(question, add_special_tokens=False)), self.max_length, "a question"
        )
        with self._lock:
            encoded = [self.encode(question, steps) for steps in solutions]
            fitted = [
                keep_tail(ids, positions, self.max_length, self.tokenizer.bos_token_id) for ids, positions in encoded
            ]
            try:
                outputs = self.llm.encode(
                    [{"prompt_token_ids": ids} for ids, _ in fitted],
                    PoolingParams(use_activation=False),
                    pooling_task="token_classify",
                    use_tqdm=False,
                )
            except Exception as error:  # a request vLLM refuses fails the whole call
                raise EngineError(f"{self.uri}: vllm failed the batch: {type(error).__name__}: {error}") from error
        return [
            self._scored(output.outputs.data, ids, positions, len(whole))
            for output, (ids, positions), (whole, _) in zip(outputs, fitted, encoded, strict=True)
        ]

    def _scored(self, logits: Any, ids: list[int], positions: list[int], full_length: int) -> Scored:
        if logits.ndim != 2 or logits.shape[0] != len(ids):
            raise EngineError(
                f"{self.uri}: vllm pooled an output of shape {tuple(logits.shape)} for {len(ids)} prompt tokens; "
                "expected one row per token"
            )
        probabilities = step_probabilities(logits, self.positive)
        scores = [float(probabilities[p]) if p >= 0 else NEUTRAL for p in positions]
        truncated = full_length > len(ids)
        if truncated:
            log.warning("%s: PRM input of %d tokens truncated to %d", self.uri, full_length, len(ids))
        return Scored(step_scores=scores, tokens=len(ids), truncated=truncated)
