"""Elementwise activations.

Owns: `silu_mul`. Imports: numpy, kernels._jit. Used by: engine.model.
"""

import numpy as np

from kernels._jit import jit


@jit(fastmath=True)
def silu_mul(gate, up, out):
    """out = silu(gate) * up (SwiGLU); all (N, F) f32, out written (may alias gate)."""
    n, f = gate.shape
    for i in range(n):
        for j in range(f):
            g = gate[i, j]
            # exp(-g) overflows to inf for very negative g, and g / inf = -0: the right limit.
            out[i, j] = g / (np.float32(1.0) + np.exp(-g)) * up[i, j]
