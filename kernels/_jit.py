"""The one jit decorator every kernel uses, so compilation flags live in one place.

Owns: `jit`. Imports: numba. Used by: every module in kernels/.

`cache=True` writes compiled machine code next to the module (numba's on-disk cache), so only the
first start compiles; `nogil=True` lets the engine thread run kernels while the event loop keeps
the GIL for I/O. `fastmath` is opt-in per kernel: it lets LLVM reorder float reductions (SIMD),
which keeps results deterministic for a given input but not bit-equal to a NumPy reference.
"""

import numba

# numba's default OpenMP layer spin-waits between parallel regions, and so does OpenBLAS: on a
# 2-core machine the two thread pools then steal each other's cores after every matmul (decode
# measured 3.8 tok/s with "omp" against 27 tok/s with "workqueue" on SmolLM2-135M). The
# workqueue layer sleeps when idle. It must not be called from two threads at once, which holds:
# only the engine thread runs kernels. Set before any parallel kernel runs.
numba.config.THREADING_LAYER = "workqueue"


def jit(*, parallel: bool = False, fastmath: bool = False):
    """`numba.njit` with the project's flags."""
    return numba.njit(cache=True, nogil=True, parallel=parallel, fastmath=fastmath)
