"""Elementwise activations.

Owns: `silu_mul`. Imports: numpy. Used by: engine.model.

NumPy rather than numba here: NumPy's exp is SIMD-vectorised, numba's calls scalar libm
(measured 5.2 ms against a fraction of that for 512 x 1536, see bench/bench_kernels.py).
"""

import numpy as np


def silu_mul(gate: np.ndarray, up: np.ndarray, out: np.ndarray) -> None:
    """out = silu(gate) * up (SwiGLU); all (N, F) f32, out written (may alias gate)."""
    with np.errstate(over="ignore"):  # exp(-g) = inf for very negative g; g / inf = -0 is right
        denom = np.exp(-gate)
    denom += 1.0
    np.divide(gate, denom, out=out)
    out *= up
