"""The transformer forward pass over a packed `StepBatch`, in NumPy with numba kernels.

Owns: `Transformer` (config, weights, RoPE tables), `forward`, `attention_block`, `ffn_block`,
`rms_norm`. Imports: numpy, kernels, engine.{config,weights,kv_cache,batch}.
Used by: engine.runner, tests, bench.

Shape letters, used in the comment on every line below:
  N tokens in the step    B sequences    R rows whose logits are wanted
  C model dim             F FFN hidden   V vocabulary
  H query heads           Hkv kv heads   D head dim
  L layers                S max sequence length  BS tokens per KV-cache block
"""

from __future__ import annotations

import numpy as np

from engine.batch import StepBatch
from engine.config import ModelConfig
from engine.kv_cache import KVCache
from engine.weights import LayerWeights, Weights, embed, linear
from kernels import apply_rope, attention, rms_norm_rows, silu_mul, store_kv


class Transformer:
    """The weights of one model plus what the forward pass precomputes from its config."""

    def __init__(self, cfg: ModelConfig, weights: Weights, max_seq_len: int):
        self.cfg = cfg
        self.weights = weights
        angles = np.outer(np.arange(max_seq_len), cfg.inv_freq())  # (S, D/2) f64
        self.cos = np.cos(angles).astype(np.float32)  # (S, D/2)
        self.sin = np.sin(angles).astype(np.float32)  # (S, D/2)
        self.scale = np.float32(1.0 / np.sqrt(cfg.head_dim))


def forward(m: Transformer, cache: KVCache, batch: StepBatch) -> np.ndarray:
    """Run the step's tokens through the model, writing their K/V into the cache; (R, V) f32 logits."""
    x = embed(m.weights.tok_embeddings, batch.token_ids)  # (N, C)
    for layer, lw in enumerate(m.weights.layers):
        x = x + attention_block(m, lw, cache, layer, batch, x)  # (N, C)
        x = x + ffn_block(m.cfg, lw, x)  # (N, C)
    x = rms_norm(x[batch.logit_rows], m.weights.norm, m.cfg.norm_eps)  # (R, C)
    return linear(x, m.weights.output)  # (R, V)


def attention_block(m: Transformer, lw: LayerWeights, cache: KVCache, layer: int,
                    batch: StepBatch, x: np.ndarray) -> np.ndarray:
    """Causal GQA self-attention of the step's tokens over their sequences' caches; (N, C)."""
    cfg, n = m.cfg, batch.n_tokens
    h = rms_norm(x, lw.attn_norm, cfg.norm_eps)  # (N, C)
    q = _project(h, lw.wq, lw.bq).reshape(n, cfg.n_heads, cfg.head_dim)  # (N, H, D)
    k = _project(h, lw.wk, lw.bk).reshape(n, cfg.n_kv_heads, cfg.head_dim)  # (N, Hkv, D)
    v = _project(h, lw.wv, lw.bv).reshape(n, cfg.n_kv_heads, cfg.head_dim)  # (N, Hkv, D)
    apply_rope(q, batch.positions, m.cos, m.sin)  # (N, H, D) in place
    apply_rope(k, batch.positions, m.cos, m.sin)  # (N, Hkv, D) in place
    k_layer, v_layer = cache.k[layer], cache.v[layer]  # (n_blocks, BS, Hkv, D) views
    slots = (-1, cfg.n_kv_heads, cfg.head_dim)  # scatter by position, rounded to f16 (the cache's format)
    store_kv(k, v, batch.kv_index, k_layer.reshape(slots), v_layer.reshape(slots))
    out = np.empty_like(q)  # (N, H, D)
    attention(q, k_layer, v_layer, batch.block_tables, batch.token_seq, batch.positions, m.scale,
              out)
    return linear(out.reshape(n, cfg.n_heads * cfg.head_dim), lw.wo)  # (N, C)


def ffn_block(cfg: ModelConfig, lw: LayerWeights, x: np.ndarray) -> np.ndarray:
    """SwiGLU feed-forward: w2(silu(w1 h) * w3 h); (N, C)."""
    h = rms_norm(x, lw.ffn_norm, cfg.norm_eps)  # (N, C)
    gate = linear(h, lw.w1)  # (N, F)
    silu_mul(gate, linear(h, lw.w3), gate)  # (N, F) in place
    return linear(gate, lw.w2)  # (N, C)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; (N, C) f32."""
    out = np.empty_like(x)
    rms_norm_rows(np.ascontiguousarray(x), w, eps, out)
    return out


def _project(h: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = linear(h, w)
    return y if b is None else y + b
