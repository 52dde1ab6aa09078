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

    Parallel over output features; each weight row is read once and used for every x row while
    it is in cache, so a few decode rows cost about one pass over the weights (memory-bound:
    ~23 GB/s for one row on the 2-core dev machine, faster than OpenBLAS's gemv there).
    """
    n_rows, k_dim = x.shape
    for o in prange(w.shape[0]):
        for r in range(n_rows):
            s = np.float32(0.0)
            for k in range(k_dim):
                s += x[r, k] * w[o, k]
            out[r, o] = s
