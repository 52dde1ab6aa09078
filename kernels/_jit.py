"""The one jit decorator every kernel uses, so compilation flags live in one place.

Owns: `jit`. Imports: numba. Used by: every module in kernels/.

`cache=True` writes compiled machine code next to the module (numba's on-disk cache), so only the
first start compiles; `nogil=True` lets the engine thread run kernels while the event loop keeps
the GIL for I/O. `fastmath` is opt-in per kernel: it lets LLVM reorder float reductions (SIMD),
which keeps results deterministic for a given input but not bit-equal to a NumPy reference.
`error_model="numpy"`: a float division by zero gives inf/nan as in NumPy instead of raising, so
a loop with a division has no per-element check and can run 8 lanes at a time (SwiGLU's does).
"""

import kernels._env  # noqa: F401, I001  (first: thread settings before NumPy and numba load)
import numba

# Where OpenMP is missing, numba falls back to tbb or workqueue (see kernels/_env.py for why OpenMP).
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def jit(*, parallel: bool = False, fastmath: bool = False):
    """`numba.njit` with the project's flags."""
    return numba.njit(cache=True, nogil=True, parallel=parallel, fastmath=fastmath, error_model="numpy")
