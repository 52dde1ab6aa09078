"""Matrix products whose result for a row does not depend on the other rows.

Owns: `matmul_rows`. Imports: numpy, kernels._jit. Used by: engine.weights (`linear`).

BLAS picks different code paths (and so different float rounding) depending on how many rows a
call has, so the same token would get slightly different activations alone and in a batch.
Here every output element is one dot product computed by the same compiled loop, whatever the
number of rows: fastmath lets LLVM split the sum into SIMD lanes, but the split is fixed in the
machine code, so a row's result is bit-identical in any batch.
"""

import numpy as np
from numba import prange

from kernels._jit import jit


@jit(parallel=True, fastmath=True)
def matmul_rows(x, w, out):
    """out = x @ w.T for x (R, K) f32, w (O, K) f32; out (R, O) f32 is written.

    Parallel over blocks of four output features: each x value loaded feeds four dot products,
    and each weight row is read once and used for every x row while it is in cache, so a few
    decode rows cost about one pass over the weights. Which loop computes an element depends
    only on its output index, never on the number of rows.
    """
    n_rows, k_dim = x.shape
    n_out = w.shape[0]
    for block in prange(n_out // 4):
        o = 4 * block
        for r in range(n_rows):
            s0 = s1 = s2 = s3 = np.float32(0.0)
            for k in range(k_dim):
                xk = x[r, k]
                s0 += xk * w[o, k]
                s1 += xk * w[o + 1, k]
                s2 += xk * w[o + 2, k]
                s3 += xk * w[o + 3, k]
            out[r, o] = s0
            out[r, o + 1] = s1
            out[r, o + 2] = s2
            out[r, o + 3] = s3
    for o in range(n_out - n_out % 4, n_out):  # the last O % 4 features
        for r in range(n_rows):
            s = np.float32(0.0)
            for k in range(k_dim):
                s += x[r, k] * w[o, k]
            out[r, o] = s
