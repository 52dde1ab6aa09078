"""Matrix products of f32 weights whose result for a row does not depend on the other rows.

Owns: `matmul_rows`. Imports: numba, kernels.{_ir,_jit,quant}. Used by: engine.weights (`linear`).

BLAS picks different code paths (and so different float rounding) depending on how many rows a
call has and where a row sits in it, so the same token would get slightly different activations
alone and in a batch. Here every output element is one dot product with a fixed reduction order
(kernels.quant.block_dots: two 16-lane accumulators, a fixed halving sum), whatever the number of
rows and whichever tile computes it. It is also the order of the quantized kernel, so a
quantized matrix gives the same bits through `qmatmul_rows` (its blocks) as through this kernel
on its dequantized rows: `linear` picks between them by speed alone.
"""

from numba import prange

from kernels._ir import HAS_AVX512
from kernels._jit import jit
from kernels.quant import block_dots

# Tiles (outputs x rows): three weight rows and ROWS x rows feed 3 ROWS dot products, two
# 16-lane accumulators each (12 of the 32 AVX-512 registers for two rows; without AVX-512 a
# tile of one row already takes 12 of the 16 8-lane registers); the last row and the last O % 3
# outputs in smaller tiles, which round an element identically.
ROWS = 2 if HAS_AVX512 else 1
ROW_BLOCK = 64  # x rows per pass over the weights: 64 rows of a few thousand floats stay in L2


@jit(parallel=True)
def matmul_rows(x, w, out):
    """out = x @ w.T for x (R, K) f32, w (O, K) f32, K % 8 == 0; out (R, O) f32 is written; all
    C-contiguous.

    Parallel over groups of three output features, in blocks of ROW_BLOCK rows, so that a long
    prompt's rows come from L2 rather than memory for every group. A 512-row prompt runs about
    as fast as BLAS in 64-row tiles; a few rows run 2-3 times faster (no tile to fill)."""
    n_rows, n_out = x.shape[0], w.shape[0]
    if x.shape[1] % 8 or w.shape[1] != x.shape[1]:
        raise ValueError("matmul_rows: in_features must match and be a multiple of 8")
    for r0 in range(0, n_rows, ROW_BLOCK):
        r1 = min(r0 + ROW_BLOCK, n_rows)
        for g in prange((n_out + 2) // 3):
            o = 3 * g
            if o + 3 <= n_out:
                r = r0
                while r + ROWS <= r1:
                    block_dots("F32", ROWS, 3, w, o, x, r, out)
                    r += ROWS
                if r < r1:
                    block_dots("F32", 1, 3, w, o, x, r, out)
            else:
                for oo in range(o, n_out):
                    r = r0
                    while r + ROWS <= r1:
                        block_dots("F32", ROWS, 1, w, oo, x, r, out)
                        r += ROWS
                    if r < r1:
                        block_dots("F32", 1, 1, w, oo, x, r, out)
