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
    for runs in layout.tiles:
        (slot, row, n), = runs if len(runs) == 1 else [(-1, 0, 0)]
        if slot == 0 and n == PROMPT_TILE:  # a whole tile in place: no copies
            np.matmul(x[row:row + n], w.T, out=out[row:row + n])
            continue
        tile = np.zeros((PROMPT_TILE, x.shape[1]), np.float32)
        for slot, row, n in runs:
            tile[slot:slot + n] = x[row:row + n]
        result = tile @ w.T
        for slot, row, n in runs:
            out[row:row + n] = result[slot:slot + n]
    return out
