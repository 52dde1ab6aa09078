"""Model weights in our names and compute layout, and the one matrix product that reads them.

Owns: `QuantMatrix`, `Matrix`, `LayerWeights`, `Weights`, `RowLayout`, `linear`, `embed`,
`dequantize`. Imports: numpy, kernels. Used by: engine.loader (builds them), engine.model (reads them).

Every matrix is (out_features, in_features), the layout of both Hugging Face and GGUF files, so
`linear(x, w)` is `x @ w.T`. A matrix is either an f32 ndarray or a `QuantMatrix`: GGUF blocks
(Q8_0, Q4_0, Q4_1) kept as they are in the file, usually a view of its memory map. Query and
key rows are in Hugging Face order (the rotate-half RoPE layout); the GGUF loader undoes
llama.cpp's interleaving permutation (for quantized rows too: a row's blocks move together).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels import dequantize_rows, matmul_rows, qmatmul_rows
from kernels.quant import BLOCK_BYTES, QK, format_code


@dataclass(frozen=True)
class QuantMatrix:
    """A block-quantized (out, in) matrix: `data` (out, in / 32 * block bytes) uint8 in GGUF
    layout, `fmt` one of kernels.quant.FORMATS (`code` is its number for the kernels)."""

    data: np.ndarray
    fmt: str
    code: int = field(init=False)
    shape: tuple[int, int] = field(init=False)  # (out, in), like an ndarray's

    def __post_init__(self):
        if self.data.dtype != np.uint8 or self.data.ndim != 2 or not self.data.flags.c_contiguous \
                or self.data.shape[1] % BLOCK_BYTES[self.fmt]:
            raise ValueError(f"not a {self.fmt} matrix: {self.data.dtype} {self.data.shape}")
        object.__setattr__(self, "code", format_code(self.fmt))
        object.__setattr__(self, "shape", (self.data.shape[0], self.data.shape[1] // BLOCK_BYTES[self.fmt] * QK))


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


@dataclass
class Weights:
    tok_embeddings: Matrix  # (V, C)
    layers: list[LayerWeights]
    norm: np.ndarray  # (C,)
    output: Matrix  # (V, C); the same object as tok_embeddings when tied


PROMPT_TILE = 64


@dataclass(frozen=True)
class RowLayout:
    """Which path each row of a step's activations takes through `linear`.

    The first n_decode rows are decode rows (one generated token per sequence). The others are
    prompt rows, laid out in BLAS tiles of exactly PROMPT_TILE rows; a prompt row at position p
    always sits in slot p % PROMPT_TILE of its tile, however its prompt was cut into chunks.
    `tiles` lists each tile's runs (slot, first row, n rows); unused slots are zero rows.
    """

    n_decode: int
    tiles: tuple[tuple[tuple[int, int, int], ...], ...] = ()

    @classmethod
    def decode_only(cls, n_rows: int) -> RowLayout:
        return cls(n_rows)

    @classmethod
    def build(cls, n_decode: int, positions: np.ndarray) -> RowLayout:
        """From the positions (N,) of a step's rows; prompt rows of one sequence are consecutive."""
        tiles: list[list[tuple[int, int, int]]] = []
        row, n = n_decode, len(positions)
        while row < n:
            start = row  # a run of consecutive positions, cut where a tile ends
            slot = int(positions[row]) % PROMPT_TILE
            row += 1
            while row < n and positions[row] == positions[row - 1] + 1 and positions[row] % PROMPT_TILE:
                row += 1
            if not tiles or start == n_decode or positions[start] != positions[start - 1] + 1 \
                    or slot == 0 or tiles[-1][-1][0] + tiles[-1][-1][2] > slot:
                tiles.append([])  # a new sequence (or a filled tile) opens a tile
            tiles[-1].append((slot, start, row - start))
        return cls(n_decode, tuple(tuple(t) for t in tiles))


def linear(x: np.ndarray, w: Matrix, layout: RowLayout) -> np.ndarray:
    """x (N, in) f32 @ w (out, in) -> (N, out) f32, each row on the path `layout` gives it.

    The one seam every weight format goes through. A row's result must not depend on what else
    is in the step (a seeded request gives the same tokens alone or under load), and BLAS rounds
    a row differently with the number of rows in the call and the row's place in it. So decode
    rows take a numba kernel with a fixed reduction per element (f32: `matmul_rows`; quantized:
    `qmatmul_rows`, which reads the blocks in place), and prompt rows take BLAS in calls of
    exactly PROMPT_TILE rows, each row at a slot fixed by its position, against f32 weights: a
    quantized matrix is dequantized SCRATCH_BYTES at a time (a slice of output rows whose size
    depends only on the matrix's shape, so the BLAS calls do too).
    """
    x = np.ascontiguousarray(x, np.float32)  # the kernels read rows as flat f32 (no copy if so)
    out = np.empty((len(x), w.shape[0]), np.float32)
    nd = layout.n_decode
    if nd:
        xd, od = (x, out) if nd == len(x) else (x[:nd], out[:nd])
        if type(w) is QuantMatrix:
            qmatmul_rows(xd, w.data, w.code, od)
        else:
            matmul_rows(xd, w, od)
        if not layout.tiles:
            return out
    if not isinstance(w, QuantMatrix):
        _prompt_rows(x, w.T, layout, out)
        return out
    n_out, k = w.shape
    step = max(PROMPT_TILE, SCRATCH_BYTES // (4 * k))
    for o in range(0, n_out, step):
        rows = np.arange(o, min(o + step, n_out))
        _prompt_rows(x, dequantize(w, rows).T, layout, out[:, o:o + len(rows)])
    return out


SCRATCH_BYTES = 4 << 20  # f32 weights dequantized at a time for prompt rows


def _prompt_rows(x: np.ndarray, wt: np.ndarray, layout: RowLayout, out: np.ndarray) -> None:
    """out[r] = x[r] @ wt for the prompt rows of `layout`, in its fixed BLAS tiles."""
    for runs in layout.tiles:
        (slot, row, n), = runs if len(runs) == 1 else [(-1, 0, 0)]
        if slot == 0 and n == PROMPT_TILE:  # a whole tile in place: no copies
            np.matmul(x[row:row + n], wt, out=out[row:row + n])
            continue
        tile = np.zeros((PROMPT_TILE, x.shape[1]), np.float32)
        for slot, row, n in runs:
            tile[slot:slot + n] = x[row:row + n]
        result = tile @ wt
        for slot, row, n in runs:
            out[row:row + n] = result[slot:slot + n]


def dequantize(w: Matrix, rows: np.ndarray | None = None) -> np.ndarray:
    """The f32 values of w, or of its rows `rows`; (len(rows) or out, in)."""
    if rows is None:
        rows = np.arange(w.shape[0])
    if not isinstance(w, QuantMatrix):
        return w[rows]
    out = np.empty((len(rows), w.shape[1]), np.float32)
    dequantize_rows(w.data, w.code, np.asarray(rows, np.int64), out)
    return out


def embed(w: Matrix, token_ids: np.ndarray) -> np.ndarray:
    """The embedding rows of token_ids; (N, C) f32."""
    return dequantize(w, token_ids)
