"""exp over float32 arrays in a form LLVM vectorizes.

Owns: `exp_inplace`. Imports: numpy, kernels._jit. Used by: kernels.attention, kernels.activations.

numba compiles `np.exp` inside a loop to one scalar libm call per element (no vector math
library is available to it), which made exp the largest cost of prompt attention. Here
exp(x) = 2^k * e^r with k = rint(x / ln 2) and r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in
two parts, Cody-Waite, so r is exact enough); e^r is a degree-7 Taylor polynomial (relative error
about 1e-7) and 2^k is added into the exponent bits. Every step is an elementwise loop, so the
loops run 8 lanes at a time. No fastmath: it would merge the two halves of ln 2.
"""

import math

import numpy as np

from kernels._jit import jit

LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693359375)  # few mantissa bits: k * LN2_HI is exact
LN2_LO = np.float32(-2.12194440e-4)
C2, C3, C4, C5, C6, C7 = (np.float32(1.0 / math.factorial(k)) for k in range(2, 8))
ONE = np.float32(1.0)


@jit()
def exp_inplace(x, n):
    """x[:n] = exp(x[:n]) for a 1-d f32 array. x is clamped to [-88, 88] (exp(88) ~ 1.65e38
    rather than inf), and results below 2^-125 flush to 0."""
    scale = np.empty(n, np.int32)
    for t in range(n):
        xt = min(max(x[t], np.float32(-88.0)), np.float32(88.0))
        k = np.rint(xt * LOG2E)
        r = (xt - k * LN2_HI) - k * LN2_LO
        x[t] = ONE + r * (ONE + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * (C6 + r * C7))))))
        scale[t] = np.int32(k)
    bits = x[:n].view(np.int32)
    for t in range(n):  # multiply by 2^k: add k to the exponent field (0 below the normal range)
        k = scale[t]
        bits[t] = bits[t] + (k << 23) if k > -126 else 0
