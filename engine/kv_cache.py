"""The KV cache: preallocated key/value arrays, one slot per running sequence, and the slot pool.

Owns: `KVCache`. Imports: numpy, engine.config. Used by: engine.model (reads/writes a layer),
engine.runner and engine.engine (allocate and free slots).
"""

from __future__ import annotations

import numpy as np

from engine.config import ModelConfig


class KVCache:
    """k, v: (L, n_slots, S, Hkv, D) f32. A slot holds one sequence's keys and values by position."""

    def __init__(self, cfg: ModelConfig, n_slots: int, max_seq_len: int):
        shape = (cfg.n_layers, n_slots, max_seq_len, cfg.n_kv_heads, cfg.head_dim)
        self.k = np.zeros(shape, np.float32)
        self.v = np.zeros(shape, np.float32)
        self.max_seq_len = max_seq_len
        self._free = list(range(n_slots - 1, -1, -1))

    @property
    def n_free(self) -> int:
        return len(self._free)

    def alloc(self) -> int:
        """Take a free slot; the caller checks `n_free` first."""
        assert self._free, "no free KV-cache slot"
        return self._free.pop()

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Give slot dst the first n positions of slot src (a fork shares its parent's prompt)."""
        self.k[:, dst, :n] = self.k[:, src, :n]
        self.v[:, dst, :n] = self.v[:, src, :n]

    def free(self, slot: int) -> None:
        assert slot not in self._free, f"slot {slot} freed twice"
        self._free.append(slot)
