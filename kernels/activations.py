"""Elementwise activations.

Owns: `silu`, `silu_mul`, `gelu_tanh_mul`, `softcap_rows`. Imports: numpy, numba, kernels._jit,
kernels.expf. Used by: engine.model.

exp is kernels.expf's vectorized one (numba's np.exp is a scalar libm call per element, and
NumPy costs four passes and a temporary).
"""

import numpy as np
from numba import prange

from kernels._jit import jit
from kernels.expf import expf, tanhf


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


GELU_C = np.float32(0.7978845608028654)  # sqrt(2 / pi)
GELU_A = np.float32(0.044715)


@jit(parallel=True)
def gelu_tanh_mul(gate, up, out):
    """out = gelu(gate) * up with GELU's tanh form, 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
    (GeGLU, PyTorch's gelu(approximate="tanh")); all (N, F) f32 C-contiguous, out may alias gate."""
    n, f = gate.shape
    for i in prange(n):
        for j in range(f):
            g = gate[i, j]
            t = tanhf(GELU_C * (g + GELU_A * g * g * g))
            out[i, j] = np.float32(0.5) * g * (np.float32(1.0) + t) * up[i, j]


@jit(parallel=True)
def softcap_rows(x, cap):
    """x = cap * tanh(x / cap) in place, x (N, V) f32 C-contiguous (Gemma 2's logit soft-capping)."""
    n, v = x.shape
    for i in prange(n):
        for j in range(v):
            x[i, j] = cap * tanhf(x[i, j] / cap)
