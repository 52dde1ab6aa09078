"""Model weights in our names and compute layout, and the one matrix product that reads them.

Owns: `LayerWeights`, `Weights`, `linear`. Imports: numpy, kernels. Used by: engine.loader (builds them),
engine.model (reads them).

Every matrix is stored (out_features, in_features), the layout of both Hugging Face and GGUF
files, so `linear(x, w)` is `x @ w.T`. Query and key rows are in Hugging Face order (the
rotate-half RoPE layout); the GGUF loader undoes llama.cpp's interleaving permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels import matmul_rows


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


PROMPT_TILE = 64


@dataclass(frozen=True)
class RowLayout:
    """Which path each row of a step's activations takes through `linear`.

    The first n_decode rows are decode rows (one generated token per sequence). The others are
    prompt rows, laid out in BLAS tiles of exactly PROMPT_TILE rows: `tiles[j]` is the row at
    tile slot j (-1: a zero row). A prompt row at position p always sits in slot p % PROMPT_TILE
    of its tile, however its prompt was cut into chunks.
    """

    n_decode: int
    tiles: np.ndarray  # (M,) int64, M a multiple of PROMPT_TILE

    @classmethod
    def decode_only(cls, n_rows: int) -> RowLayout:
        return cls(n_rows, np.empty(0, np.int64))

    @classmethod
    def build(cls, n_decode: int, positions: np.ndarray) -> RowLayout:
        """From the positions (N,) of a step's rows; prompt rows of one sequence are consecutive."""
        slots: list[int] = []
        for row in range(n_decode, len(positions)):
            p = int(positions[row])
            new_run = row == n_decode or p != positions[row - 1] + 1
            if new_run or p % PROMPT_TILE == 0:  # this row opens a tile: pad to its slot
                slots.extend([-1] * ((-len(slots)) % PROMPT_TILE + p % PROMPT_TILE))
            slots.append(row)
        slots.extend([-1] * ((-len(slots)) % PROMPT_TILE))
        return cls(n_decode, np.asarray(slots, np.int64))


def linear(x: np.ndarray, w: np.ndarray, layout: RowLayout) -> np.ndarray:
    """x (N, in) f32 @ w (out, in) -> (N, out) f32, each row on the path `layout` gives it.

    The one seam every weight format goes through. A row's result must not depend on what else
    is in the step (a seeded request gives the same tokens alone or under load), and BLAS rounds
    a row differently with the number of rows in the call and the row's place in it. So decode
    rows take a numba kernel with a fixed reduction per element, and prompt rows take BLAS in
    calls of exactly PROMPT_TILE rows, each row at a slot fixed by its position.
    """
    out = np.empty((x.shape[0], w.shape[0]), np.float32)
    if layout.n_decode:
        matmul_rows(x[:layout.n_decode], w, out[:layout.n_decode])
    if len(layout.tiles):
        real = layout.tiles >= 0
        padded = np.zeros((len(layout.tiles), x.shape[1]), np.float32)
        padded[real] = x[layout.tiles[real]]
        result = np.empty((len(layout.tiles), w.shape[0]), np.float32)
        for start in range(0, len(layout.tiles), PROMPT_TILE):
            np.matmul(padded[start:start + PROMPT_TILE], w.T, out=result[start:start + PROMPT_TILE])
        out[layout.tiles[real]] = result[real]
    return out
