"""Causal grouped-query attention of a packed batch of tokens over a paged KV cache.

Owns: `attention`. Imports: numpy, kernels._jit. Used by: engine.model.
"""

import numpy as np
from numba import prange

from kernels._jit import jit


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

    Each (token, head) is computed on its own with a fixed reduction order, so a token's result
    does not depend on what else is in the batch.
    """
    n_tokens, n_heads, head_dim = q.shape
    block_size = k_cache.shape[1]
    group = n_heads // k_cache.shape[2]
    for job in prange(n_tokens * n_heads):
        i = job // n_heads
        h = job % n_heads
        g = h // group
        table = block_tables[token_seq[i]]
        n_ctx = positions[i] + 1
        n_blocks = (n_ctx + block_size - 1) // block_size
        scores = np.empty(n_ctx, np.float32)
        best = np.float32(-np.inf)
        for j in range(n_blocks):  # block by block: no division per position
            b = table[j]
            for o in range(min(block_size, n_ctx - j * block_size)):
                s = np.float32(0.0)
                for d in range(head_dim):
                    s += q[i, h, d] * k_cache[b, o, g, d]
                s *= scale
                scores[j * block_size + o] = s
                best = max(best, s)
        total = np.float32(0.0)
        for t in range(n_ctx):
            e = np.exp(scores[t] - best)
            scores[t] = e
            total += e
        acc = np.zeros(head_dim, np.float32)
        for j in range(n_blocks):
            b = table[j]
            for o in range(min(block_size, n_ctx - j * block_size)):
                p = scores[j * block_size + o]
                for d in range(head_dim):
                    acc[d] += p * v_cache[b, o, g, d]
        inv = np.float32(1.0) / total
        for d in range(head_dim):
            out[i, h, d] = acc[d] * inv
