"""A fast batched sampler for the testbed's small Llama models, used while training.

`HFProposer` goes through `model.generate`, whose dynamic KV cache is re-concatenated at every
token: for a 0.4M-parameter model that copying, not the arithmetic, is most of the time, and it
grows with the batch. This sampler runs the same transformers modules (norms, projections, rotary
embedding, MLP) over a preallocated cache written in place, and drops finished rows from the
batch as it goes, so answers of very different lengths (a 1-step and a 12-step problem) cost what
they are. Its `generate` is the engines' (`BatchedProposer`), for the calls training makes (no stop
strings: answers end at end-of-sequence or `max_tokens`). `benchmarks/testbed_sampler.py`
measures it against `HFProposer`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ttc_nodes.engines.base import Completion
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling

PREFILL_SCORES = 16_000_000  # attention scores computed at once while reading prompts (64 MB in float32)


class CachedSampler(BatchedProposer):
    """Ancestral sampling (or greedy at temperature 0) from a `LlamaForCausalLM`."""

    max_batch: int

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 512) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.heads
        self.max_positions = config.max_position_embeddings
        self.eos = tokenizer.eos_token_id

    def _run(self, batches: list[list[Row]], sampling: Sampling) -> list[list[Completion]]:
        if sampling.stop:
            raise ValueError("CachedSampler does not cut answers at stop strings: they end at end-of-sequence")
        # A generator of the call's own leaves the global RNG alone; no seed samples as seed 0 does.
        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(0 if sampling.seed is None else sampling.seed)
        return [
            [completion]
            for batch in batches
            for completion in self._batch(
                [row.prompt for row in batch], sampling.max_tokens, sampling.temperature, generator
            )
        ]

    @torch.inference_mode()
    def _batch(
        self, prompts: list[str], max_tokens: int, temperature: float, generator: torch.Generator
    ) -> list[Completion]:
        device = self.model.device
        encoded = [self.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        lengths = torch.tensor([len(ids) for ids in encoded], device=device)
        width = int(lengths.max())
        if width >= self.max_positions:
            raise ValueError(f"a prompt of {width} tokens leaves no room in the model's {self.max_positions} positions")
        max_tokens = min(max_tokens, self.max_positions - width)  # as servers do: generation stops at the window
        batch = len(prompts)
        ids = torch.full((batch, width), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens) :] = torch.tensor(tokens, device=device)  # left padding
        layers = len(self.model.model.layers)
        shape = (layers, batch, self.kv_heads, width + max_tokens, self.head_dim)
        keys = torch.zeros(shape, dtype=self.model.dtype, device=device)
        values = torch.zeros(shape, dtype=self.model.dtype, device=device)
        key_valid = torch.zeros((batch, width + max_tokens), dtype=torch.bool, device=device)
        key_valid[:, :width] = torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]

        # Prefill: the whole prompt at once, causal within it and blind to left padding.
        positions = (torch.arange(width, device=device)[None, :] - (width - lengths)[:, None]).clamp(min=0)
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        diagonal = torch.eye(width, dtype=torch.bool, device=device)  # padding rows attend to themselves
        # A few rows at a time: the attention scores of a long prompt grow with its width squared.
        chunk = max(1, PREFILL_SCORES // (width * width * self.heads))
        last = []
        for first in range(0, batch, chunk):
            rows = slice(first, first + chunk)
            mask = (causal[None, None] & key_valid[rows, None, None, :width]) | diagonal[None, None]
            last.append(self._forward(ids[rows], positions[rows], keys[:, rows], values[:, rows], 0, mask)[:, -1])
        logits = torch.cat(last)

        alive = torch.arange(batch, device=device)  # original row of each row still in the batch
        finished = torch.zeros(batch, dtype=torch.bool, device=device)  # rows past their end-of-sequence
        generated = torch.full((batch, max_tokens), -1, dtype=torch.long, device=device)
        logprobs = torch.zeros(batch, device=device)
        next_positions = lengths.clone()
        for step in range(max_tokens):
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                chosen = logits.argmax(dim=-1)
            chosen_logprob = torch.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None])[:, 0]
            generated[alive, step] = torch.where(finished, -1, chosen)
            logprobs[alive] += torch.where(finished, 0.0, chosen_logprob)
            finished |= chosen == self.eos
            done = int(finished.sum())
            if done == len(alive) or step == max_tokens - 1:
                break
            # Dropping rows copies the cache, so wait until an eighth of the batch has finished.
            if done >= max(1, len(alive) // 8):
                keep = (~finished).nonzero()[:, 0]
                alive, chosen, finished = alive[keep], chosen[keep], finished[keep]
                next_positions, key_valid = next_positions[keep], key_valid[keep]
                keys, values = keys[:, keep], values[:, keep]
            slot = width + step
            key_valid[:, slot] = True
            mask = key_valid[:, None, None, : slot + 1]
            logits = self._forward(chosen[:, None], next_positions[:, None], keys, values, slot, mask)[:, -1]
            next_positions = next_positions + 1

        return [self._completion(generated[row], float(logprobs[row]), int(lengths[row])) for row in range(batch)]

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

    def _completion(self, generated: torch.Tensor, logprob: float, prompt_tokens: int) -> Completion:
        tokens = [token for token in generated.tolist() if token >= 0]
        ended = bool(tokens) and tokens[-1] == self.eos
        return Completion(
            text=self.tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
            logprob=logprob,
            finish_reason="stop" if ended else "length",
        )


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """Softmax attention written out: for one new token per row it is much faster on CPU than
    `scaled_dot_product_attention`, whose flash kernel is built for long query blocks."""
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v
