"""RMSNorm.

Owns: `rms_norm_rows`. Imports: numpy, kernels._jit. Used by: engine.model.

One numba call instead of the five NumPy operations (and temporaries) it replaces: a decode step
normalises 2 * layers + 1 rows of a few hundred floats, where NumPy's per-call overhead was
about 10% of the step (bench/profile_decode.py). Rows are independent; each row's sum of
squares has a fixed order (fastmath splits it into SIMD lanes the same way for every row).
"""

import numpy as np
from numba import prange

from kernels._jit import jit


@jit(parallel=True, fastmath=True)
def rms_norm_rows(x, w, eps, out):
    """out = x / sqrt(mean(x^2) + eps) * w per row; x, out (N, C) f32, w (C,) f32."""
    n, c = x.shape
    for i in prange(n):
        ss = np.float32(0.0)
        for j in range(c):
            ss += x[i, j] * x[i, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(c) + np.float32(eps))
        for j in range(c):
            out[i, j] = x[i, j] * inv * w[j]
