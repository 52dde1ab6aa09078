"""Causal grouped-query attention of a packed batch of tokens over a paged KV cache.

Owns: `attention`. Imports: numpy, kernels._jit, kernels.expf. Used by: engine.model.
"""

import numpy as np
from numba import prange

from kernels._jit import jit
from kernels.expf import exp_inplace


@jit(parallel=True, fastmath=True)
def attention(q, k_cache, v_cache, block_tables, token_seq, positions, scale, out):
    """Write softmax(q k^T * scale) v for every (token, head) of the step into out.

    q (N, H, D) f32: queries of the step's tokens, RoPE already applied.
    k_cache, v_cache (n_blocks, BS, Hkv, D) f32: one layer of the cache. This step's keys and
        values must already be written, so token i sees positions 0..positions[i] of its
        sequence (causal masking is just this upper bound).
    block_tables (B, max_blocks) int64: position t of sequence s is at block
        block_tables[s, t // BS], offset t % BS.
    token_seq (N,), positions (N,) int64: each token's sequence and position.
    out (N, H, D) f32, written. Query head h reads kv head h // (H / Hkv) (GQA).

    A job is one (token, kv head): the query heads of its group read each K and V row once.
    Each (token, head) is computed on its own with a fixed reduction order, so a token's result
    does not depend on what else is in the batch. exp is kernels.expf (vectorized).
    """
    n_tokens, n_heads, head_dim = q.shape
    block_size = k_cache.shape[1]
    n_kv = k_cache.shape[2]
    group = n_heads // n_kv
    for job in prange(n_tokens * n_kv):
        i = job // n_kv
        g = job % n_kv
        table = block_tables[token_seq[i]]
        n_ctx = positions[i] + 1
        n_blocks = (n_ctx + block_size - 1) // block_size  # block by block: no division per position
        qg = q[i, g * group:(g + 1) * group]  # (group, D)
        scores = np.empty((group, n_ctx), np.float32)
        for j in range(n_blocks):
            b = table[j]
            for o in range(min(block_size, n_ctx - j * block_size)):
                k_row = k_cache[b, o, g]  # (D,)
                for hh in range(group):
                    s = np.float32(0.0)
                    for d in range(head_dim):
                        s += qg[hh, d] * k_row[d]
                    scores[hh, j * block_size + o] = s * scale
        for hh in range(group):  # softmax numerators, in place
            row = scores[hh]
            best = np.float32(-np.inf)
            for t in range(n_ctx):
                best = max(best, row[t])
            for t in range(n_ctx):
                row[t] -= best
            exp_inplace(row, n_ctx)
        acc = np.zeros((group, head_dim), np.float32)
        for j in range(n_blocks):
            b = table[j]
            for o in range(min(block_size, n_ctx - j * block_size)):
                v_row = v_cache[b, o, g]  # (D,)
                for hh in range(group):
                    p = scores[hh, j * block_size + o]
                    for d in range(head_dim):
                        acc[hh, d] += p * v_row[d]
        for hh in range(group):
            total = np.float32(0.0)
            for t in range(n_ctx):
                total += scores[hh, t]
            inv = np.float32(1.0) / total
            for d in range(head_dim):
                out[i, g * group + hh, d] = acc[hh, d] * inv
