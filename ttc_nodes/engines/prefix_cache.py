"""A prefix tree of key/value caches, kept across model calls, as vLLM's prefix caching keeps them.

Step-wise search (beam, lookahead, DVTS, particle filtering) resends the question and every earlier
step of each live prefix every round. `PrefixCache` keeps the keys and values that reading a prompt
produced, so that a later prompt extending it is read only from where the cached part ends.

Token sequences are cut into blocks of `block` tokens, and only whole blocks are kept. A node of the
tree is one block, the child of the block before it, matched on the token ids themselves (no hashes,
so no collisions): a node's keys and values are those of its block read after exactly the tokens on
its path. A lookup walks down the tree and returns the keys and values of the longest cached prefix.

Stored bytes are bounded by `budget_bytes`. Every lookup and insert marks its path used, children
before parents, so a parent is always more recently used than its children and the least recently
used block is a leaf: eviction drops that block, and again, until the bytes fit the budget. A budget
of 0 keeps nothing (lookups still count the prompt tokens they see).

Tensors hold the token axis at dim -2 (e.g. layers × heads × tokens × head_dim); what goes in is
copied, and what comes out is a new tensor, so no caller can change what another reads. Every method
holds one lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ttc_nodes.engines.vllm import PrefixCacheStats

BLOCK = 16  # tokens per cached block: vLLM's default block size
MEGABYTE = 2**20


@dataclass(frozen=True)
class CachedPrefix:
    """The longest cached prefix of a token sequence: its length (a whole number of blocks), and its
    keys and values (token axis at dim -2; None when nothing was cached)."""

    length: int
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None


@dataclass(eq=False)  # nodes are told apart by identity (the recency order holds them)
class _Block:
    tokens: tuple[int, ...]
    parent: _Block | None
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None
    children: dict[tuple[int, ...], _Block] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class PrefixCache:
    """Keys and values of token-sequence prefixes, block by block, least recently used evicted first."""

    def __init__(self, budget_bytes: int, *, block: int = BLOCK) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        self.budget_bytes = budget_bytes
        self.block = block
        self._root = _Block((), None)
        self._recency: OrderedDict[_Block, None] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._stats = PrefixCacheStats()
        self._lock = threading.Lock()

    @classmethod
    def of_megabytes(cls, megabytes: float, *, block: int = BLOCK) -> PrefixCache:
        """A cache of `megabytes` MiB (0: a disabled cache)."""
        if megabytes < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {megabytes}")
        return cls(int(megabytes * MEGABYTE), block=block)

    @property
    def nbytes(self) -> int:
        """Bytes of keys and values stored now (never more than `budget_bytes` between calls)."""
        with self._lock:
            return self._bytes

    @property
    def blocks(self) -> int:
        """Blocks stored now."""
        with self._lock:
            return len(self._recency)

    def stats(self) -> PrefixCacheStats:
        """Tokens looked up and tokens served from the cache since it was made; subtract two snapshots
        to measure a stretch of work."""
        with self._lock:
            return self._stats

    def lookup(self, tokens: Sequence[int], *, limit: int | None = None) -> CachedPrefix:
        """The longest cached prefix of `tokens` no longer than `limit` (default: all of them).
        Counts `len(tokens)` tokens seen and the prefix's length served."""
        usable = len(tokens) if limit is None else max(0, min(limit, len(tokens)))
        with self._lock:
            path = self._walk(tokens, usable // self.block)
            self._touch(path)
            length = len(path) * self.block
            self._stats = PrefixCacheStats(self._stats.prompt_tokens + len(tokens), self._stats.cached_tokens + length)
            if not path:
                return CachedPrefix(0)
            return CachedPrefix(
                length,
                torch.cat([node.keys for node in path if node.keys is not None], dim=-2),
                torch.cat([node.values for node in path if node.values is not None], dim=-2),
            )

    def insert(self, tokens: Sequence[int], keys: torch.Tensor, values: torch.Tensor, *, start: int = 0) -> int:
        """Keep the keys and values of `tokens[start:]` (token axis at dim -2), block by block, under
        the cached blocks of `tokens[:start]` (`start` a whole number of blocks). Blocks already cached
        stay as they are; nothing is kept where `tokens[:start]` is not (or no longer) cached, nor a
        trailing part block. Then least recently used blocks go until the bytes fit. Returns the
        blocks added."""
        if start % self.block:
            raise ValueError(f"start must be a multiple of the block size {self.block}, got {start}")
        if keys.shape[-2] != len(tokens) - start or values.shape[-2] != len(tokens) - start:
            raise ValueError(
                f"keys and values must hold the {len(tokens) - start} tokens after start={start}, "
                f"got {keys.shape[-2]} and {values.shape[-2]}"
            )
        if not self.budget_bytes:
            return 0
        with self._lock:
            path = self._walk(tokens, start // self.block)
            if len(path) * self.block < start:
                self._touch(path)
                return 0
            node = path[-1] if path else self._root
            added = 0
            for first in range(start, len(tokens) - self.block + 1, self.block):
                piece = tuple(tokens[first : first + self.block])
                child = node.children.get(piece)
                if child is None:
                    where = slice(first - start, first - start + self.block)
                    child = _Block(piece, node, keys[..., where, :].clone(), values[..., where, :].clone())
                    node.children[piece] = child
                    self._bytes += child.nbytes
                    added += 1
                path.append(child)
                node = child
            self._touch(path)
            self._evict()
            return added

    def _walk(self, tokens: Sequence[int], blocks: int) -> list[_Block]:
        """The cached blocks of the longest cached prefix of `tokens`, up to `blocks` blocks."""
        path, node = [], self._root
        for index in range(blocks):
            child = node.children.get(tuple(tokens[index * self.block : (index + 1) * self.block]))
            if child is None:
                break
            path.append(child)
            node = child
        return path

    def _touch(self, path: list[_Block]) -> None:
        """Mark `path` most recently used, its root end last: parents stay more recent than children."""
        for node in reversed(path):
            self._recency[node] = None
            self._recency.move_to_end(node)

    def _evict(self) -> None:
        while self._bytes > self.budget_bytes:
            node, _ = self._recency.popitem(last=False)
            assert not node.children, "a block's parent is always more recently used than it"
            if node.parent is not None:
                del node.parent.children[node.tokens]
            self._bytes -= node.nbytes
