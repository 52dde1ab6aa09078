"""Model weights in our names and compute layout, and the one matrix product that reads them.

Owns: `LayerWeights`, `Weights`, `linear`. Imports: numpy. Used by: engine.loader (builds them),
engine.model (reads them).

Every matrix is stored (out_features, in_features), the layout of both Hugging Face and GGUF
files, so `linear(x, w)` is `x @ w.T`. Query and key rows are in Hugging Face order (the
rotate-half RoPE layout); the GGUF loader undoes llama.cpp's interleaving permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # (C,)
    wq: np.ndarray  # (H*D, C)
    wk: np.ndarray  # (Hkv*D, C)
    wv: np.ndarray  # (Hkv*D, C)
    wo: np.ndarray  # (C, H*D)
    ffn_norm: np.ndarray  # (C,)
    w1: np.ndarray  # (F, C) gate
    w2: np.ndarray  # (C, F) down
    w3: np.ndarray  # (F, C) up
    bq: np.ndarray | None = None  # (H*D,)
    bk: np.ndarray | None = None  # (Hkv*D,)
    bv: np.ndarray | None = None  # (Hkv*D,)


@dataclass
class Weights:
    tok_embeddings: np.ndarray  # (V, C)
    layers: list[LayerWeights]
    norm: np.ndarray  # (C,)
    output: np.ndarray  # (V, C); the same array as tok_embeddings when tied


def linear(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x (N, in) f32 @ w (out, in) -> (N, out) f32.

    The seam every weight format goes through: today f32 BLAS; quantized formats add their own
    branch here (fused dequantize-dot for few rows, tile dequantize + BLAS for many).
    """
    return x @ w.T
