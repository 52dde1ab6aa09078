"""`StepBatch`: the tokens of one engine step from several sequences, packed flat.

Owns: `StepBatch`. Imports: numpy. Used by: engine.runner (builds it),
engine.model (reads it).

A step may hold whole prompts, prompt chunks and single decode tokens side by side; the forward
pass treats them alike, since every token carries its position and its sequence's block table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepBatch:
    token_ids: np.ndarray  # (N,) int64
    positions: np.ndarray  # (N,) int64, position of each token in its sequence
    token_seq: np.ndarray  # (N,) int64, index of each token's sequence in block_tables
    block_tables: np.ndarray  # (B, max blocks) int64, KV-cache blocks of each sequence
    kv_index: np.ndarray  # (N,) int64, where each token's K/V go: block * BS + offset
    logit_rows: np.ndarray  # (R,) int64, tokens whose logits the caller wants (often one per sequence)

    @classmethod
    def pack(cls, seqs: list[tuple[list[int], int, list[int]]], block_size: int,
             n_logits: list[int] | None = None, all_logits: bool = False) -> StepBatch:
        """Pack (token_ids, start_position, blocks) per sequence. logit_rows: the last
        n_logits[i] tokens of each sequence i (default: its last token), or every token when
        all_logits."""
        ids = np.concatenate([np.asarray(t, np.int64) for t, _, _ in seqs])
        pos = np.concatenate([np.arange(p, p + len(t), dtype=np.int64) for t, p, _ in seqs])
        seq = np.concatenate([np.full(len(t), i, np.int64) for i, (t, _, _) in enumerate(seqs)])
        tables = np.zeros((len(seqs), max(len(b) for _, _, b in seqs)), np.int64)
        for i, (_, _, blocks) in enumerate(seqs):
            tables[i, :len(blocks)] = blocks
        kv_index = tables[seq, pos // block_size] * block_size + pos % block_size
        ends = np.cumsum([len(t) for t, _, _ in seqs])
        if all_logits:
            rows = np.arange(len(ids))
        elif n_logits is None:
            rows = ends - 1
        else:
            rows = np.concatenate([np.arange(e - k, e) for e, k in zip(ends, n_logits)] or [[]])
        return cls(ids, pos, seq, tables, kv_index, rows.astype(np.int64))

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)
