"""exp over float32 arrays in a form LLVM vectorizes.

Owns: `expf`, `exp_inplace`, `tanhf`. Imports: numpy, kernels._ir, kernels._jit. Used by: kernels.attention, kernels.activations.

numba compiles `np.exp` inside a loop to one scalar libm call per element (no vector math
library is available to it), which made exp the largest cost of prompt attention. Here
exp(x) = 2^k * e^r with k = rint(x / ln 2) and r = x - k ln 2 in [-ln2/2, ln2/2] (ln 2 split in
two parts, Cody-Waite, so r is exact enough); e^r is a degree-7 Taylor polynomial (relative error
about 1e-7) and 2^k is added into the exponent bits. It is a scalar function with no branch
LLVM cannot turn into a select, so a loop of it runs 8 lanes at a time, and a lane gives the
same bits as the scalar call. No fastmath: it would merge the two halves of ln 2.
"""

import math

import numpy as np

from kernels._ir import bits_float, float_bits
from kernels._jit import jit

LOG2E = np.float32(1.4426950408889634)
LN2_HI = np.float32(0.693359375)  # few mantissa bits: k * LN2_HI is exact
LN2_LO = np.float32(-2.12194440e-4)
C2, C3, C4, C5, C6, C7 = (np.float32(1.0 / math.factorial(k)) for k in range(2, 8))
ONE = np.float32(1.0)


@jit()
def expf(x):
    """exp(x) of an f32. x is clamped to [-88, 88] (exp(88) ~ 1.65e38 rather than inf), and
    results below 2^-125 flush to 0."""
    xt = min(max(x, np.float32(-88.0)), np.float32(88.0))
    k = np.rint(xt * LOG2E)
    r = (xt - k * LN2_HI) - k * LN2_LO
    p = ONE + r * (ONE + r * (C2 + r * (C3 + r * (C4 + r * (C5 + r * (C6 + r * C7))))))
    e = np.int32(k)
    # times 2^k: add k to the exponent field (0 below the normal range)
    return bits_float(float_bits(p) + (e << 23)) if e > -126 else np.float32(0.0)


@jit()
def exp_inplace(x, n):
    """x[:n] = expf(x[:n]) for a 1-d f32 array (a loop LLVM runs 8 lanes at a time)."""
    for t in range(n):
        x[t] = expf(x[t])


@jit()
def tanhf(x):
    """tanh(x) of an f32, as 1 - 2 / (exp(2x) + 1) with `expf` (saturates to +-1; absolute error
    ~1e-7, which is what the callers need: GELU's gate and soft-capping add it to 1 or scale it)."""
    return ONE - np.float32(2.0) / (expf(np.float32(2.0) * x) + ONE)
