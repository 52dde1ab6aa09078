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
from kernels import (
    apply_rope,
    attention,
    gelu_tanh_mul,
    rms_norm_rows,
    silu_mul,
    softcap_rows,
    store_kv,
)


class Transformer:
    """The weights of one model plus what the forward pass precomputes from its config: each
    layer's RoPE tables (None for a layer without RoPE), shared between layers that rotate alike."""

    def __init__(self, cfg: ModelConfig, weights: Weights, max_seq_len: int):
        self.cfg = cfg
        self.weights = weights
        tables = {rope: rope.tables(cfg.head_dim, max_seq_len)
                  for rope in {cfg.layer_rope(i) for i in range(cfg.n_layers)} - {None}}
        self.rope = [tables.get(cfg.layer_rope(i)) for i in range(cfg.n_layers)]  # (cos, sin) (S, R/2)
        self.scale = np.float32(cfg.scale)


def forward(m: Transformer, cache: KVCache, batch: StepBatch) -> np.ndarray:
    """Run the step's tokens through the model, writing their K/V into the cache; (R, V) f32 logits."""
    cfg = m.cfg
    x = embed(m.weights.tok_embeddings, batch.token_ids)  # (N, C)
    if cfg.embed_scale != 1.0:
        x *= np.float32(cfg.embed_scale)
    for layer, lw in enumerate(m.weights.layers):
        x = x + _post_norm(cfg, lw.post_attn_norm, attention_block(m, lw, cache, layer, batch, x))
        x = x + _post_norm(cfg, lw.post_ffn_norm, ffn_block(cfg, lw, x))  # (N, C)
    x = rms_norm(x[batch.logit_rows], m.weights.norm, cfg.norm_eps)  # (R, C)
    logits = linear(x, m.weights.output)  # (R, V)
    if cfg.final_softcap:
        softcap_rows(logits, np.float32(cfg.final_softcap))
    return logits


def attention_block(m: Transformer, lw: LayerWeights, cache: KVCache, layer: int,
                    batch: StepBatch, x: np.ndarray) -> np.ndarray:
    """Causal GQA self-attention of the step's tokens over their sequences' caches (over the
    last cfg.window(layer) positions on sliding-window layers); (N, C)."""
    cfg, n = m.cfg, batch.n_tokens
    h = rms_norm(x, lw.attn_norm, cfg.norm_eps)  # (N, C)
    q = _project(h, lw.wq, lw.bq).reshape(n, cfg.n_heads, cfg.head_dim)  # (N, H, D)
    k = _project(h, lw.wk, lw.bk).reshape(n, cfg.n_kv_heads, cfg.head_dim)  # (N, Hkv, D)
    v = _project(h, lw.wv, lw.bv).reshape(n, cfg.n_kv_heads, cfg.head_dim)  # (N, Hkv, D)
    if cfg.qk_norm:  # each head's q and k normalised on their own
        q = rms_norm(q.reshape(-1, cfg.head_dim), lw.q_norm, cfg.norm_eps).reshape(q.shape)
        k = rms_norm(k.reshape(-1, cfg.head_dim), lw.k_norm, cfg.norm_eps).reshape(k.shape)
    if m.rope[layer] is not None:
        cos, sin = m.rope[layer]
        apply_rope(q, batch.positions, cos, sin)  # (N, H, D) in place
        apply_rope(k, batch.positions, cos, sin)  # (N, Hkv, D) in place
    k_layer, v_layer = cache.k[layer], cache.v[layer]  # (n_blocks, BS, Hkv, D) views
    slots = (-1, cfg.n_kv_heads, cfg.head_dim)  # scatter by position, rounded to f16 (the cache's format)
    store_kv(k, v, batch.kv_index, k_layer.reshape(slots), v_layer.reshape(slots))
    out = np.empty_like(q)  # (N, H, D)
    attention(q, k_layer, v_layer, batch.block_tables, batch.token_seq, batch.positions, m.scale,
              cfg.window(layer), np.float32(cfg.attn_softcap), out)
    return linear(out.reshape(n, cfg.n_heads * cfg.head_dim), lw.wo)  # (N, C)


def ffn_block(cfg: ModelConfig, lw: LayerWeights, x: np.ndarray) -> np.ndarray:
    """Gated feed-forward: w2(act(w1 h) * w3 h), act SiLU (SwiGLU) or tanh-GELU (GeGLU); (N, C)."""
    h = rms_norm(x, lw.ffn_norm, cfg.norm_eps)  # (N, C)
    gate = linear(h, lw.w1)  # (N, F)
    gated = silu_mul if cfg.activation == "silu" else gelu_tanh_mul
    gated(gate, linear(h, lw.w3), gate)  # (N, F) in place
    return linear(gate, lw.w2)  # (N, C)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; (N, C) f32."""
    out = np.empty_like(x)
    rms_norm_rows(np.ascontiguousarray(x), w, eps, out)
    return out


def _post_norm(cfg: ModelConfig, w: np.ndarray | None, y: np.ndarray) -> np.ndarray:
    """Gemma's norm of a block's output before it joins the residual stream (others: y itself)."""
    return y if w is None else rms_norm(y, w, cfg.norm_eps)


def _project(h: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = linear(h, w)
    return y if b is None else y + b
