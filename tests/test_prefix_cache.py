"""The prefix cache returns only what was stored for the very prefix asked about, keeps within its
byte budget by dropping the least recently used blocks, and lets the cached sampler read a prompt
from where its cached prefix ends with the logits and samples of reading it whole."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest
import torch

from ttc_nodes.engines import cached_sampler
from ttc_nodes.engines.batched import Row, Sampling
from ttc_nodes.engines.cached_sampler import CachedSampler
from ttc_nodes.engines.prefix_cache import PrefixCache
from ttc_nodes.engines.vllm import PrefixCacheStats

SHAPE = (2, 3)  # layers × heads before the token axis; head_dim after it
HEAD_DIM = 4
BYTES_PER_TOKEN = 2 * SHAPE[0] * SHAPE[1] * HEAD_DIM * 4  # keys and values in float32


def kv(tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values as a model's would be: each token's depend on every token up to it, so the
    same token after two different prefixes has different ones."""

    def vector(prefix: tuple[int, ...], kind: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(repr((kind, prefix)).encode()).digest()[:4], "little")
        return torch.randn((*SHAPE, HEAD_DIM), generator=torch.Generator().manual_seed(seed))

    def stacked(kind: str) -> torch.Tensor:
        columns = [vector(tuple(tokens[: end + 1]), kind) for end in range(len(tokens))]
        return torch.stack(columns, dim=-2) if columns else torch.zeros((*SHAPE, 0, HEAD_DIM))

    return stacked("k"), stacked("v")


def random_tree(rng: random.Random, sequences: int) -> list[list[int]]:
    """Token sequences that share prefixes, as a search tree's prompts do: each extends a random cut
    of an earlier one by a few random tokens from a small alphabet."""
    tree: list[list[int]] = []
    for _ in range(sequences):
        base = rng.choice(tree) if tree and rng.random() < 0.8 else []
        cut = base[: rng.randint(0, len(base))]
        tree.append(cut + [rng.randrange(3) for _ in range(rng.randint(1, 12))])
    return tree


def check_lookup(cache: PrefixCache, query: list[int], inserted: set[tuple[int, ...]], limit: int | None) -> int:
    """Look `query` up and check the answer; returns its length."""
    found = cache.lookup(query, limit=limit)
    assert found.length % cache.block == 0 and found.length <= (len(query) if limit is None else max(limit, 0))
    if found.length == 0:
        assert found.keys is None and found.values is None
        return 0
    assert tuple(query[: found.length]) in inserted  # truly a prefix of the query that was stored
    keys, values = kv(query[: found.length])
    assert found.keys is not None and found.values is not None
    assert torch.equal(found.keys, keys) and torch.equal(found.values, values)
    return found.length


@pytest.mark.parametrize("seed", range(8))
def test_lookups_return_exactly_the_kv_stored_for_a_true_prefix_within_the_budget(seed):
    rng = random.Random(seed)
    block = rng.choice([1, 2, 4])
    cache = PrefixCache(rng.randint(0, 12) * block * BYTES_PER_TOKEN, block=block)  # a few blocks at most
    tree = random_tree(rng, 40)
    inserted: set[tuple[int, ...]] = set()  # every block-aligned prefix ever stored
    hits = 0
    for _ in range(300):
        sequence = rng.choice(tree)
        if rng.random() < 0.5:
            cut = rng.randint(0, len(sequence))
            hits += check_lookup(cache, [*sequence[:cut], rng.randrange(3)], inserted, rng.randint(0, 20)) > 0
        else:
            start = check_lookup(cache, sequence, inserted, None) if rng.random() < 0.5 else 0
            keys, values = kv(sequence)
            cache.insert(sequence, keys[..., start:, :], values[..., start:, :], start=start)
            inserted |= {tuple(sequence[:end]) for end in range(block, len(sequence) + 1, block)}
        assert cache.nbytes <= cache.budget_bytes
        assert cache.nbytes == cache.blocks * block * BYTES_PER_TOKEN
    assert hits or not cache.budget_bytes


@pytest.mark.parametrize("seed", range(4))
def test_without_eviction_a_lookup_finds_the_longest_stored_prefix(seed):
    rng = random.Random(100 + seed)
    cache = PrefixCache(2**30, block=2)
    stored: set[tuple[int, ...]] = set()
    for sequence in random_tree(rng, 60):
        query = sequence[: rng.randint(0, len(sequence))] + [rng.randrange(3) for _ in range(rng.randint(0, 4))]
        longest = max((end for end in range(0, len(query) + 1, 2) if tuple(query[:end]) in stored), default=0)
        assert check_lookup(cache, query, stored, None) == longest
        cache.insert(sequence, *kv(sequence))
        stored |= {tuple(sequence[:end]) for end in range(0, len(sequence) + 1, 2)}


def test_the_least_recently_used_block_is_evicted_first():
    cache = PrefixCache(3 * 2 * BYTES_PER_TOKEN, block=2)  # three blocks
    a, b, c, d = [0, 0], [1, 1], [2, 2], [0, 1]
    for tokens in (a, b, c):
        cache.insert(tokens, *kv(tokens))
    assert cache.lookup(a).length == 2  # a is now the most recently used
    cache.insert(d, *kv(d))
    assert [cache.lookup(t).length for t in (a, b, c, d)] == [2, 0, 2, 2]
    # Blocks go least recently used first, and a path's deepest first: a lookup touches its whole path.
    cache.insert([*c, 5, 5, 6, 6], *kv([*c, 5, 5, 6, 6]))
    assert cache.blocks == 3 and cache.lookup([*c, 5, 5, 6, 6]).length == 6
    assert cache.lookup(a).length == cache.lookup(d).length == 0
    cache.insert([3, 3], *kv([3, 3]))
    assert cache.lookup([*c, 5, 5, 6, 6]).length == 4 and cache.lookup([3, 3]).length == 2


def test_a_disabled_cache_never_hits_but_counts_what_it_sees():
    cache = PrefixCache.of_megabytes(0)
    tokens = list(range(40))
    assert cache.insert(tokens, *kv(tokens)) == 0
    assert cache.lookup(tokens).length == 0 and cache.blocks == 0 and cache.nbytes == 0
    assert cache.stats() == PrefixCacheStats(prompt_tokens=40, cached_tokens=0)


def test_hits_are_counted_in_tokens_and_only_whole_blocks_are_kept():
    cache = PrefixCache(2**20, block=4)
    tokens = list(range(10))
    assert cache.insert(tokens, *kv(tokens)) == 2  # the last two tokens are no whole block
    assert cache.lookup(tokens).length == 8
    assert cache.lookup(tokens, limit=7).length == 4
    assert cache.lookup([*tokens[:5], 99]).length == 4
    stats = cache.stats()
    assert (stats.prompt_tokens, stats.cached_tokens, stats.hit_rate) == (26, 16, 16 / 26)


def test_an_insert_under_a_prefix_that_is_not_cached_keeps_nothing():
    cache = PrefixCache(2**20, block=2)
    tokens = [1, 2, 3, 4, 5, 6]
    keys, values = kv(tokens)
    assert cache.insert(tokens, keys[..., 2:, :], values[..., 2:, :], start=2) == 0
    assert cache.blocks == 0
    with pytest.raises(ValueError, match="multiple of the block size"):
        cache.insert(tokens, keys[..., 1:, :], values[..., 1:, :], start=1)
    with pytest.raises(ValueError, match="must hold the 6 tokens"):
        cache.insert(tokens, keys[..., 1:, :], values, start=0)
    with pytest.raises(ValueError, match="prefix_cache_mb must be >= 0"):
        PrefixCache.of_megabytes(-1)


def test_what_goes_in_and_what_comes_out_are_copies():
    cache = PrefixCache(2**20, block=2)
    tokens = [1, 2, 3, 4]
    keys, values = kv(tokens)
    cache.insert(tokens, keys, values)
    keys.zero_()
    found = cache.lookup(tokens)
    assert found.keys is not None and torch.equal(found.keys, kv(tokens)[0])
    found.keys.zero_()
    again = cache.lookup(tokens).keys
    assert again is not None and torch.equal(again, kv(tokens)[0])


def test_concurrent_inserts_and_lookups_stay_exact_and_within_budget():
    cache = PrefixCache(10 * 2 * BYTES_PER_TOKEN, block=2)
    tree = random_tree(random.Random(7), 30)
    prepared = {tuple(sequence): kv(sequence) for sequence in tree}
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(200):
                sequence = rng.choice(tree)
                found = cache.lookup(sequence)
                if found.length:
                    assert found.keys is not None
                    assert torch.equal(found.keys, prepared[tuple(sequence)][0][..., : found.length, :])
                cache.insert(sequence, *prepared[tuple(sequence)])
                assert cache.nbytes <= cache.budget_bytes
        except BaseException as error:  # reported by the main thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert cache.stats().cached_tokens > 0


# --- the cached sampler reading from cached prefixes --------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_lm: Path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_lm, local_files_only=True, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_lm, local_files_only=True)


@torch.inference_mode()
def test_prompts_read_from_cached_prefixes_give_the_logits_and_samples_of_a_whole_read(tiny, monkeypatch):
    model, tokenizer = tiny
    plain = CachedSampler(model, tokenizer)
    cached = CachedSampler(model, tokenizer, prefix_cache=PrefixCache(2**24, block=4))
    rng = random.Random(3)
    question = "".join(rng.choice("0123+") for _ in range(37))
    earlier = [question, question + "12+3\n\n", "3" * 70]
    cached._prefill(tokenizer(earlier, add_special_tokens=False)["input_ids"], 1)
    # Prefixes cached to different lengths in one batch (a long one beside short prompts, so rows
    # have gaps), a prompt cached whole but its last token, one extending it by a token, a new one.
    prompts = [question + "12+3\n\n1+2", question, question + "1", "3" * 70 + "+1", "2+2", "0"]
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    assert cached.prefix_cache is not None
    before = cached.prefix_cache.stats()
    *_, expected = plain._prefill(encoded, 1)
    *_, got = cached._prefill(encoded, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    served = cached.prefix_cache.stats() - before
    assert served.cached_tokens >= 36 + 36 + 36 + 68  # every long prompt from its cached blocks
    monkeypatch.setattr(cached_sampler, "PREFILL_SCORES", 1)  # one row per prefill pass
    *_, chunked = cached._prefill(encoded, 1)
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=0)

    rows = [Row(position, prompt, seed=50 + position) for position, prompt in enumerate(prompts * 2)]
    for temperature in (0.0, 1.0):
        sampling = Sampling(samples=1, max_tokens=24, temperature=temperature, stop=("\n\n",), seed=None)
        alone = plain._generate_batch(rows, sampling)
        for completions, reference in zip(cached._generate_batch(rows, sampling), alone, strict=True):
            assert completions[0].text == reference[0].text
            assert completions[0].completion_tokens == reference[0].completion_tokens
            assert completions[0].logprob == pytest.approx(reference[0].logprob, abs=1e-4)
