"""Elementwise activations.

Owns: `silu`, `silu_mul`. Imports: numpy, numba, kernels._jit, kernels.expf. Used by: engine.model.

exp is kernels.expf's vectorized one (numba's np.exp is a scalar libm call per element, and
NumPy costs four passes and a temporary).
"""

import numpy as np
from numba import prange

from kernels._jit import jit
from kernels.expf import expf


@jit(parallel=True)
def silu_mul(gate, up, out):
    """out = silu(gate) * up = gate / (1 + exp(-gate)) * up (SwiGLU); all (N, F) f32 C-contiguous,
    out written (may alias gate). Very negative gate: exp saturates at 2^127, the result is ~0."""
    n, f = gate.shape
    for i in prange(n):
        for j in range(f):
            out[i, j] = silu(gate[i, j]) * up[i, j]


@jit()
def silu(g):
    """g * sigmoid(g) of an f32, as g / (1 + exp(-g))."""
    return g / (np.float32(1.0) + expf(-g))
