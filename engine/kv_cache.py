"""The KV cache: keys and values in fixed-size blocks, and the prefix cache over full blocks.

Owns: `KVCache`. Imports: numpy, engine.config. Used by: engine.model (reads/writes a layer),
engine.scheduler (allocates, shares and releases blocks), engine.runner (block tables).

Memory is one preallocated pool, k and v (L, n_blocks, BS, Hkv, D) in IEEE half precision
(stored as uint16 bit patterns; kernels.attention widens them), sized by
`EngineConfig.kv_cache_mb`; a sequence holds a list of blocks (its block table) and position p
lives in block p // BS at offset p % BS. A full block is registered under its tokens and the
identity of the block before it, so a later request whose prompt starts with the same tokens
(the previous turn of a chat, a shared system prompt) reuses the blocks instead of computing
them again. Blocks nobody holds stay cached until the pool needs them: least recently used first.
"""

from __future__ import annotations

import mmap
from collections import OrderedDict, deque

import numpy as np

from engine.config import ModelConfig, ModelError


def _lazy_zeros(shape: tuple[int, ...], dtype=np.uint16) -> np.ndarray:
    """Zeroed memory that the OS commits page by page as it is first written: an anonymous map
    with transparent huge pages off. With them (np.zeros, on Linux) a block written in each of
    the layers committed a 2 MB page per layer, so one short request made most of a pool
    resident."""
    buf = mmap.mmap(-1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # Linux
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)


class KVCache:
    def __init__(self, cfg: ModelConfig, n_blocks: int, block_size: int = 16):
        if cfg.head_dim % 8:
            raise ModelError(f"head_dim {cfg.head_dim} is not a multiple of 8 (the attention kernel's width)")
        shape = (cfg.n_layers, n_blocks, block_size, cfg.n_kv_heads, cfg.head_dim)
        self.k = _lazy_zeros(shape)
        self.v = _lazy_zeros(shape)
        self.block_size = block_size
        self.n_blocks = n_blocks
        self._free: deque[int] = deque(range(n_blocks))
        self._refs = np.zeros(n_blocks, np.int64)
        self._by_key: dict[tuple[int, tuple[int, ...]], int] = {}  # (parent id, tokens) -> block
        self._key: dict[int, tuple[int, tuple[int, ...]]] = {}  # block -> its key
        self._id: dict[int, int] = {}  # block -> content id (unique per registration)
        self._next_id = 1
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unreferenced; LRU first

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int = 16) -> int:
        return 2 * cfg.n_layers * block_size * cfg.n_kv_heads * cfg.head_dim * 2  # K and V, f16

    @property
    def n_available(self) -> int:
        """Blocks that can be handed out now (free, or cached and evictable)."""
        return len(self._free) + len(self._evictable)

    @property
    def n_referenced(self) -> int:
        """Blocks held by sequences."""
        return self.n_blocks - self.n_available

    @property
    def n_cached(self) -> int:
        """Blocks registered in the prefix cache (held or not)."""
        return len(self._key)

    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def allocate(self) -> int:
        """A block for new tokens: a free one, else the least recently used cached one."""
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._evictable.popitem(last=False)
            del self._by_key[self._key.pop(block)]
            del self._id[block]
        self._refs[block] = 1
        return block

    def retain(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._evictable[block]
        self._refs[block] += 1

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self._refs[block] -= 1
            assert self._refs[block] >= 0, f"block {block} released twice"
            if self._refs[block] == 0:
                if block in self._key:
                    self._evictable[block] = None  # most recently used end
                else:
                    self._free.append(block)

    def lookup(self, tokens: list[int]) -> tuple[list[int], int]:
        """The cached blocks holding the longest run of tokens' full blocks from the start, and
        the chain id of the last one (0 for none). The caller retains the blocks it uses."""
        blocks, chain, bs = [], 0, self.block_size
        for start in range(0, len(tokens) - bs + 1, bs):
            block = self._by_key.get((chain, tuple(tokens[start:start + bs])))
            if block is None:
                break
            blocks.append(block)
            chain = self._id[block]
            if block in self._evictable:  # touched: now the most recently used
                self._evictable.move_to_end(block)
        return blocks, chain

    def register(self, block: int, chain: int, tokens: list[int]) -> int:
        """Record that block holds tokens (one full block) after the prefix with chain id
        `chain` (0: the start); returns the chain id of the prefix now ending in this block."""
        key = (chain, tuple(tokens))
        known = self._by_key.get(key)
        if known is not None:  # the same content is cached already (maybe in this very block)
            return self._id[known]
        self._by_key[key] = block
        self._key[block] = key
        self._id[block] = self._next_id
        self._next_id += 1
        return self._id[block]

    def copy_block(self, src: int, dst: int) -> None:
        self.k[:, dst] = self.k[:, src]
        self.v[:, dst] = self.v[:, src]

    def clear_prefixes(self) -> None:
        """Forget every cached prefix (blocks held by sequences stay)."""
        for block in list(self._evictable):
            self._free.append(block)
        self._evictable.clear()
        for block in list(self._key):
            del self._by_key[self._key.pop(block)]
            del self._id[block]
