"""A fast batched sampler for Llama causal LMs: the testbed's models, and `hf:` Llama checkpoints.

`HFProposer` goes through `model.generate`, whose dynamic KV cache is re-concatenated at every
token: for a small model that copying, not the arithmetic, is most of the time, and it grows with
the batch. `CachedSampler` runs the same transformers modules (norms, projections, rotary
embedding, MLP) over a preallocated cache written in place, reads each distinct prompt of a batch
once (its cache copied to every sample of it), and drops finished rows from the batch as it goes,
so answers of very different lengths (a 1-step and a 12-step problem) cost what they are.
`CachedProposer` is the engine: `HFProposer`'s loading, prompt checks and accounting, sampling
through `CachedSampler`. `benchmarks/testbed_sampler.py` measures the two against each other.

Given a `PrefixCache` (the engine keeps one of `prefix_cache_mb`, 256 MiB by default), the sampler
keeps the keys and values of the prompts it read across calls: a prompt's longest cached prefix is
copied into its cache and only the rest is read, at the positions after the prefix, as step-wise
search needs (each round resends the question and the steps so far). Completions are not kept.

A completion means what `HFProposer`'s means: it ends at end-of-sequence (kept in the token count,
not in the text), at a stop string (cut before it, `stop_reason` naming it, the tokens counted up
to the one that completed it), or at `max_tokens` or the end of the model's positions ("length":
the row's own, where `HFProposer` stops every row of a batch at the longest prompt's); its
`logprob` is under the distribution it was drawn from (after temperature).

Rows are seeded one by one (`row_seeded`): the k-th token of a row is drawn by inverse CDF from a
uniform that splitmix64 hashes from (the row's seed, k), for all rows at once in torch, so a row's
completion depends on its prompt, the sampling parameters and its seed, never on its batch-mates,
the batch size or `max_batch`. A row without a seed draws one at random, so that the samples of an
unseeded call still differ from each other.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ttc_nodes.engines.base import Completion, EngineError
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling
from ttc_nodes.engines.hf import HFProposer, _first_stop, _tokens_until
from ttc_nodes.engines.prefix_cache import CachedPrefix, PrefixCache
from ttc_nodes.engines.vllm import PrefixCacheStats

PREFIX_CACHE_MB = 256.0  # an engine's default budget for prompts' keys and values kept across calls
PREFILL_SCORES = 16_000_000  # attention scores computed at once while reading prompts (64 MB in float32)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment and multipliers
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


class CachedSampler(BatchedProposer):
    """Ancestral sampling (or greedy at temperature 0) from a `LlamaForCausalLM`, row by row seeded.
    With `prefix_cache`, prompts' keys and values are kept across calls (the model must not change
    while they are: without one, nothing is kept)."""

    max_batch: int
    row_seeded: ClassVar[bool] = True

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch: int = 512, prefix_cache: PrefixCache | None = None
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefix_cache = prefix_cache
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.max_positions = config.max_position_embeddings
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos = torch.tensor([token for token in eos if token is not None] or [tokenizer.eos_token_id])

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        prompts = [row.prompt for row in rows]
        if sampling.temperature == 0 and len(set(prompts)) < len(prompts):
            # Greedy rows of one prompt are one sequence whatever their seeds: decode it once.
            unique = list(dict.fromkeys(prompts))
            answers = dict(zip(unique, self._sample(unique, [None] * len(unique), sampling), strict=True))
            return [[answers[prompt]] for prompt in prompts]
        return [[completion] for completion in self._sample(prompts, [row.seed for row in rows], sampling)]

    @torch.inference_mode()
    def _sample(self, prompts: list[str], seeds: list[int | None], sampling: Sampling) -> list[Completion]:
        """One completion of each prompt, each drawn with its seed."""
        device = self.model.device
        # Each distinct prompt is read once, and its cache copied to the rows that continue it.
        unique = {prompt: index for index, prompt in enumerate(dict.fromkeys(prompts))}
        source = torch.tensor([unique[prompt] for prompt in prompts], device=device)
        encoded = self.tokenizer(list(unique), add_special_tokens=False)["input_ids"]
        lengths = torch.tensor([len(ids) for ids in encoded], device=device)
        width = int(lengths.max())
        if width >= self.max_positions:
            raise ValueError(f"a prompt of {width} tokens leaves no room in the model's {self.max_positions} positions")
        # As servers do, a row stops where the model's positions end: its own, whatever its batch-mates.
        limits = (self.max_positions - lengths).clamp(max=sampling.max_tokens)[source]
        steps = int(limits.max())
        keys, values, key_valid, logits = self._prefill(encoded, steps)
        width = key_valid.shape[1] - steps  # the prompts' slots, generated tokens after them
        keys, values, key_valid, logits, lengths = (
            keys[:, source],
            values[:, source],
            key_valid[source],
            logits[source],
            lengths[source],
        )

        batch = len(prompts)
        streams = torch.tensor([_stream_key(seed) for seed in seeds], dtype=torch.long, device=device)
        eos = self.eos.to(device)
        stops = [s for s in sampling.stop if s]
        alive = torch.arange(batch, device=device)  # original row of each row still in the batch
        finished = torch.zeros(batch, dtype=torch.bool, device=device)  # rows past their last token
        generated = torch.full((batch, steps), -1, dtype=torch.long, device=device)
        token_logprobs = torch.zeros((batch, steps), device=device)
        next_positions = lengths.clone()
        for step in range(steps):
            chosen, chosen_logprob = _choose(logits, sampling.temperature, streams, step)
            generated[alive, step] = torch.where(finished, -1, chosen)
            token_logprobs[alive, step] = torch.where(finished, 0.0, chosen_logprob)
            finished = finished | torch.isin(chosen, eos) | (limits <= step + 1)
            if stops:
                finished |= self._stopped(generated, alive, finished, step, stops)
            done = int(finished.sum())
            if done == len(alive):
                break
            # Dropping rows copies the cache, so wait until an eighth of the batch has finished.
            if done >= max(1, len(alive) // 8):
                keep = (~finished).nonzero()[:, 0]
                alive, chosen, finished, streams, limits = (
                    alive[keep],
                    chosen[keep],
                    finished[keep],
                    streams[keep],
                    limits[keep],
                )
                next_positions, key_valid = next_positions[keep], key_valid[keep]
                keys, values = keys[:, keep], values[:, keep]
            slot = width + step
            key_valid[:, slot] = True
            mask = key_valid[:, None, None, : slot + 1]
            logits = self._forward(chosen[:, None], next_positions[:, None], keys, values, slot, mask)[:, -1]
            next_positions = next_positions + 1

        eos_ids = set(self.eos.tolist())
        prompt_tokens = lengths.tolist()
        return [
            self._completion(generated[row], token_logprobs[row], prompt_tokens[row], sampling.stop, eos_ids)
            for row in range(batch)
        ]

    def _prefill(
        self, encoded: list[list[int]], steps: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Read the prompts into a new cache with `steps` free slots after them: its keys, values and
        valid slots, and the logits after each prompt.

        A prompt's longest cached prefix (all but its last token at most, whose logits are needed) is
        copied in, not read. The cache holds the cached prefixes right-aligned in slots [0, C) and the
        rest of each prompt right-aligned in [C, C + R), C and R the longest of each: a row may have
        a gap of invalid slots between the two, which no query sees, and its positions run on
        unbroken. Without a prefix cache C is 0 and the prompts are simply left-padded."""
        device = self.model.device
        batch = len(encoded)
        found = [self._cached_prefix(ids) for ids in encoded]
        done = torch.tensor([prefix.length for prefix in found], device=device)
        rest = torch.tensor(
            [len(ids) - prefix.length for ids, prefix in zip(encoded, found, strict=True)], device=device
        )
        cached, width = int(done.max()), int(rest.max())
        slots = cached + width
        layers = len(self.model.model.layers)
        shape = (layers, batch, self.kv_heads, slots + steps, self.head_dim)
        keys = torch.zeros(shape, dtype=self.model.dtype, device=device)
        values = torch.zeros(shape, dtype=self.model.dtype, device=device)
        key_valid = torch.zeros((batch, slots + steps), dtype=torch.bool, device=device)
        for row, prefix in enumerate(found):
            if prefix.keys is not None and prefix.values is not None:
                keys[:, row, :, cached - prefix.length : cached] = prefix.keys
                values[:, row, :, cached - prefix.length : cached] = prefix.values
                key_valid[row, cached - prefix.length : cached] = True
        ids = torch.full((batch, width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        for row, (tokens, prefix) in enumerate(zip(encoded, found, strict=True)):
            ids[row, width - len(tokens) + prefix.length :] = torch.tensor(tokens[prefix.length :], device=device)
        padding = width - rest
        key_valid[:, cached:slots] = torch.arange(width, device=device)[None, :] >= padding[:, None]
        # Every unread token at once, causal within it and blind to left padding and gaps.
        positions = done[:, None] + (torch.arange(width, device=device)[None, :] - padding[:, None]).clamp(min=0)
        causal = torch.ones((width, slots), dtype=torch.bool, device=device).tril(diagonal=cached)
        diagonal = torch.zeros((width, slots), dtype=torch.bool, device=device)  # padding rows attend to themselves
        diagonal[:, cached:] = torch.eye(width, dtype=torch.bool, device=device)
        # A few rows at a time: the attention scores of a long prompt grow with its width squared.
        chunk = max(1, PREFILL_SCORES // (width * slots * self.heads))
        last = []
        for first in range(0, batch, chunk):
            part = slice(first, first + chunk)
            mask = (causal[None, None] & key_valid[part, None, None, :slots]) | diagonal[None, None]
            last.append(self._forward(ids[part], positions[part], keys[:, part], values[:, part], cached, mask)[:, -1])
        if self.prefix_cache is not None and self.prefix_cache.budget_bytes:
            for row, (tokens, prefix) in enumerate(zip(encoded, found, strict=True)):
                unread = slice(slots - len(tokens) + prefix.length, slots)  # the prompt part, not completions
                self.prefix_cache.insert(
                    tokens, keys[:, row, :, unread], values[:, row, :, unread], start=prefix.length
                )
        return keys, values, key_valid, torch.cat(last)

    def _cached_prefix(self, ids: list[int]) -> CachedPrefix:
        """The longest prefix of a prompt whose keys and values are cached, leaving its last token to read."""
        if self.prefix_cache is None:
            return CachedPrefix(0)
        return self.prefix_cache.lookup(ids, limit=len(ids) - 1)

    def _stopped(
        self, generated: torch.Tensor, alive: torch.Tensor, finished: torch.Tensor, step: int, stops: list[str]
    ) -> torch.Tensor:
        """Which rows of `alive` now hold a stop string in their text. Only the tail that could hold
        one is decoded (as `HFProposer`'s stopping criterion does), and a hit there is confirmed on
        the whole text, so a row stops exactly when its completion would be cut."""
        hits = torch.zeros_like(finished)
        live = (~finished).nonzero()[:, 0]
        if not len(live):
            return hits
        window = max(len(s) for s in stops) + 1  # tokens: each decodes to a character or more
        rows = alive[live].tolist()
        tails = self.tokenizer.batch_decode(
            generated[alive[live], max(0, step + 1 - window) : step + 1].tolist(), skip_special_tokens=True
        )
        for index, (row, tail) in enumerate(zip(rows, tails, strict=True)):
            if any(s in tail for s in stops):
                text = self.tokenizer.decode(generated[row, : step + 1].tolist(), skip_special_tokens=True)
                hits[live[index]] = _first_stop(text, stops)[0] is not None
        return hits

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        slot: int,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits for `ids` (batch × new) written at cache slots `slot..`, attending to cache up to them."""
        body = self.model.model
        hidden = body.embed_tokens(ids)
        cos, sin = body.rotary_emb(hidden, positions)
        batch, new = ids.shape
        end = slot + new
        for index, layer in enumerate(body.layers):
            attention = layer.self_attn
            normed = layer.input_layernorm(hidden)
            q = attention.q_proj(normed).view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            k = attention.k_proj(normed).view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attention.v_proj(normed).view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            keys[index, :, :, slot:end] = k
            values[index, :, :, slot:end] = v
            attended = _attend(q, keys[index, :, :, :end], values[index, :, :, :end], mask, self.heads // self.kv_heads)
            hidden = hidden + attention.o_proj(attended.transpose(1, 2).reshape(batch, new, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(body.norm(hidden))

    def _completion(
        self, generated: torch.Tensor, logprobs: torch.Tensor, prompt_tokens: int, stop: Sequence[str], eos: set[int]
    ) -> Completion:
        """A row's tokens as the Completion `HFProposer` makes of the same tokens."""
        ids = [token for token in generated.tolist() if token >= 0]
        ended = bool(ids) and ids[-1] in eos
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        length = len(ids)
        stop_reason, cut = _first_stop(text, stop)
        if stop_reason is not None:
            text = text[:cut]
            length = _tokens_until(self.tokenizer, ids, text, stop_reason)
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=length,
            logprob=float(logprobs[:length].clamp(min=-1e9).sum()) if length else 0.0,
            finish_reason="stop" if ended or stop_reason is not None else "length",
            stop_reason=stop_reason,
        )


class CachedProposer(HFProposer):
    """`HFProposer` (loading, `uri`, `parameters`, `context`, PromptTooLong, accounting) sampling
    through `CachedSampler` instead of `model.generate`: a `LlamaForCausalLM` on any device."""

    row_seeded: ClassVar[bool] = True

    def __init__(self, path: str, *, prefix_cache_mb: float = PREFIX_CACHE_MB, **options: Any) -> None:
        from transformers import LlamaForCausalLM

        super().__init__(path, **options)
        if not isinstance(self.model, LlamaForCausalLM):
            raise EngineError(
                f"{self.uri}: sampler=cached samples from a LlamaForCausalLM, and this model is a "
                f"{type(self.model).__name__} (sampler=generate samples from any causal LM)"
            )
        self.sampler = CachedSampler(self.model, self.tokenizer)  # given batches of this engine's max_batch
        self.keep_prefixes(prefix_cache_mb)

    def keep_prefixes(self, megabytes: float) -> None:
        """Keep up to `megabytes` MiB of prompts' keys and values across calls (0: none), from now on
        (an empty cache, its counts at 0)."""
        self.sampler.prefix_cache = PrefixCache.of_megabytes(megabytes)

    def prefix_cache(self) -> PrefixCacheStats:
        """Prompt tokens read (each distinct prompt of a model call once) and of them, how many came
        from the prefix cache, since it was made: subtract two snapshots to measure a stretch of work."""
        cache = self.sampler.prefix_cache
        return cache.stats() if cache is not None else PrefixCacheStats()

    def _run(self, batches: list[list[Row]], sampling: Sampling) -> list[list[Completion]]:
        # No RNG to guard (rows carry their seeds), and the batcher runs one model call at a time.
        return [completions for batch in batches for completions in self._generate_batch(batch, sampling)]

    def _generate_batch(self, rows: Sequence[Row], sampling: Sampling) -> list[list[Completion]]:
        return self.sampler._generate_batch(rows, sampling)


def serves(config: Any, device: torch.device, dtype: str) -> bool:
    """Whether `hf:` samples through `CachedProposer` by default: a Llama causal LM in float32 on CPU,
    where `model.generate`'s cache copying costs most."""
    return getattr(config, "model_type", None) == "llama" and device.type == "cpu" and dtype == "float32"


def _choose(
    logits: torch.Tensor, temperature: float, streams: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's token at `step` and its log-probability: the argmax at temperature 0, else drawn
    from softmax(logits / temperature) by inverse CDF with the row's own uniform."""
    if temperature == 0:
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        chosen = logits.argmax(dim=-1)
    else:
        log_probs = torch.log_softmax(logits.double() / temperature, dim=-1)
        cdf = log_probs.exp().cumsum(dim=-1)
        # Scaled by the row's total, so that rounding never sends a draw past the last token.
        drawn = (uniforms(streams, step) * cdf[:, -1])[:, None]
        chosen = torch.searchsorted(cdf, drawn)[:, 0].clamp(max=cdf.shape[-1] - 1)
    return chosen, log_probs.gather(1, chosen[:, None])[:, 0].float()


def uniforms(streams: torch.Tensor, step: int) -> torch.Tensor:
    """The `step`-th number in (0, 1) of each row's stream (int64 keys): splitmix64 on torch's
    wrapping int64 arithmetic, 53 bits of each output as a float64."""
    mixed = _mix(streams + _signed((step + 1) * _GOLDEN))
    return (_shift(mixed, 11).double() + 0.5) * 2.0**-53


def _stream_key(seed: int | None) -> int:
    """The int64 key of a row's stream: its seed mixed, or a random one for a row without a seed."""
    return _signed(_mix_int(secrets.randbits(64) if seed is None else seed))


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors (equal to `_mix_int` bit for bit)."""
    x = (x ^ _shift(x, 30)) * _signed(_MIX1)
    x = (x ^ _shift(x, 27)) * _signed(_MIX2)
    return x ^ _shift(x, 31)


def _mix_int(x: int) -> int:
    x &= _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def _shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """A logical right shift of int64 (torch's `>>` is arithmetic: it copies the sign bit)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _signed(x: int) -> int:
    """A 64-bit pattern as the int64 that holds it."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """Softmax attention written out: for one new token per row it is much faster on CPU than
    `scaled_dot_product_attention`, whose flash kernel is built for long query blocks."""
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v
