"""The one jit decorator every kernel uses, so compilation flags live in one place.

Owns: `jit`. Imports: numba. Used by: every module in kernels/.

`cache=True` writes compiled machine code next to the module (numba's on-disk cache), so only the
first start compiles; `nogil=True` lets the engine thread run kernels while the event loop keeps
the GIL for I/O. `fastmath` is opt-in per kernel: it lets LLVM reorder float reductions (SIMD),
which keeps results deterministic for a given input but not bit-equal to a NumPy reference.
"""

import os

import numba

# Threads, measured on the 2-core dev machine with SmolLM2-135M (bench/RESULTS.md): numba's
# OpenMP layer launches a parallel region fastest (decode 29 tok/s against 18 with "workqueue"),
# but libgomp threads spin-wait ~300k iterations after each region and take the cores from
# OpenBLAS's threads during prefill (215 tok/s). A short spin keeps both: decode 32, prefill 295.
# Both settings must be in place before the first parallel kernel runs; a user's own
# GOMP_SPINCOUNT wins. Where OpenMP is missing, numba falls back to tbb or workqueue.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def jit(*, parallel: bool = False, fastmath: bool = False):
    """`numba.njit` with the project's flags."""
    return numba.njit(cache=True, nogil=True, parallel=parallel, fastmath=fastmath)
