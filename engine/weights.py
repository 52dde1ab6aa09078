"""Model weights in our names and compute layout, and the one matrix product that reads them.

Owns: `QuantMatrix`, `Matrix`, `LayerWeights`, `Weights`, `linear`, `embed`,
`dequantize`. Imports: numpy, kernels. Used by: engine.loader (builds them), engine.model (reads them).

Every matrix is (out_features, in_features), the layout of both Hugging Face and GGUF files, so
`linear(x, w)` is `x @ w.T`. A matrix is either an f32 ndarray or a `QuantMatrix`: GGUF blocks
of any format of kernels.formats, kept as they are in the file, usually a view of its memory
map. Query and
key rows are in Hugging Face order (the rotate-half RoPE layout); the GGUF loader undoes
llama.cpp's interleaving permutation (for quantized rows too: a row's blocks move together).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels import dequantize_rows, matmul_rows, qmatmul_rows
from kernels.formats import FORMATS


@dataclass(frozen=True)
class QuantMatrix:
    """A block-quantized (out, in) matrix: `data` (out, in / block weights * block bytes) uint8
    in GGUF layout, `fmt` one of kernels.formats.QUANTIZED."""

    data: np.ndarray
    fmt: str
    shape: tuple[int, int] = field(init=False)  # (out, in), like an ndarray's

    def __post_init__(self):
        spec = FORMATS[self.fmt]
        if self.data.dtype != np.uint8 or self.data.ndim != 2 or not self.data.flags.c_contiguous \
                or self.data.shape[1] % spec.block_bytes or spec.unpack is None:
            raise ValueError(f"not a {self.fmt} matrix: {self.data.dtype} {self.data.shape}")
        in_features = self.data.shape[1] // spec.block_bytes * spec.block_weights
        object.__setattr__(self, "shape", (self.data.shape[0], in_features))


Matrix = np.ndarray | QuantMatrix


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # (C,)
    wq: Matrix  # (H*D, C)
    wk: Matrix  # (Hkv*D, C)
    wv: Matrix  # (Hkv*D, C)
    wo: Matrix  # (C, H*D)
    ffn_norm: np.ndarray  # (C,)
    w1: Matrix  # (F, C) gate
    w2: Matrix  # (C, F) down
    w3: Matrix  # (F, C) up
    bq: np.ndarray | None = None  # (H*D,)
    bk: np.ndarray | None = None  # (Hkv*D,)
    bv: np.ndarray | None = None  # (Hkv*D,)
    q_norm: np.ndarray | None = None  # (D,) per-head RMSNorm of q (cfg.qk_norm)
    k_norm: np.ndarray | None = None  # (D,)
    post_attn_norm: np.ndarray | None = None  # (C,) RMSNorm of the attention output (cfg.post_norms)
    post_ffn_norm: np.ndarray | None = None  # (C,)


@dataclass
class Weights:
    tok_embeddings: Matrix  # (V, C)
    layers: list[LayerWeights]
    norm: np.ndarray  # (C,)
    output: Matrix  # (V, C); the same object as tok_embeddings when tied


DEQUANTIZE_ROWS = 16  # from this many rows, a quantized product goes through dequantized f32 rows
SCRATCH_BYTES = 4 << 20  # f32 weights dequantized at a time


def linear(x: np.ndarray, w: Matrix) -> np.ndarray:
    """x (N, in) f32 @ w (out, in) -> (N, out) f32.

    The one seam every weight format goes through. A row's result must not depend on what else
    is in the step (a seeded request gives the same tokens alone or under load): BLAS rounds a
    row differently with the number of rows in the call and the row's place in it, so it is not
    used. Every element is one dot product in one fixed order (kernels.quant.block_dots), for
    prompt rows and decode rows alike. A quantized matrix is read in place for a few rows
    (`qmatmul_rows`: each unpacked block feeds up to four rows); from DEQUANTIZE_ROWS rows on,
    its rows are dequantized to f32 SCRATCH_BYTES at a time and multiplied by `matmul_rows`,
    which gives the same bits faster when the unpacking is shared by many rows.
    """
    x = np.ascontiguousarray(x, np.float32)  # the kernels read rows as flat f32 (no copy if so)
    out = np.empty((len(x), w.shape[0]), np.float32)
    if type(w) is not QuantMatrix:
        matmul_rows(x, w, out)
    elif len(x) < DEQUANTIZE_ROWS:
        qmatmul_rows(x, w.data, w.fmt, out)
    else:
        n_out, k = w.shape
        step = max(1, SCRATCH_BYTES // (4 * k))
        for o in range(0, n_out, step):
            rows = np.arange(o, min(o + step, n_out))
            if len(rows) == n_out:
                matmul_rows(x, dequantize(w, rows), out)
            else:
                part = np.empty((len(x), len(rows)), np.float32)
                matmul_rows(x, dequantize(w, rows), part)
                out[:, o:o + len(rows)] = part
    return out


def dequantize(w: Matrix, rows: np.ndarray | None = None) -> np.ndarray:
    """The f32 values of w, or of its rows `rows`; (len(rows) or out, in)."""
    if rows is None:
        rows = np.arange(w.shape[0])
    if not isinstance(w, QuantMatrix):
        return w[rows]
    out = np.empty((len(rows), w.shape[1]), np.float32)
    dequantize_rows(w.data, w.fmt, np.asarray(rows, np.int64), out)
    return out


def embed(w: Matrix, token_ids: np.ndarray) -> np.ndarray:
    """The embedding rows of token_ids; (N, C) f32."""
    return dequantize(w, token_ids)
