"""The one jit decorator every kernel uses, so compilation flags live in one place.

Owns: `jit`, the kernels' cache locator. Imports: numba. Used by: every module in kernels/.

`cache=True` writes compiled machine code next to the module (numba's on-disk cache), so only the
first start compiles; `nogil=True` lets the engine thread run kernels while the event loop keeps
the GIL for I/O. `fastmath` is opt-in per kernel: it lets LLVM reorder float reductions (SIMD),
which keeps results deterministic for a given input but not bit-equal to a NumPy reference.
`error_model="numpy"`: a float division by zero gives inf/nan as in NumPy instead of raising, so
a loop with a division has no per-element check and can run 8 lanes at a time (SwiGLU's does).
"""

import kernels._env  # noqa: F401, I001  (first: thread settings before NumPy and numba load)
from pathlib import Path

import numba
from numba.core import caching

# Where OpenMP is missing, numba falls back to tbb or workqueue (see kernels/_env.py for why OpenMP).
numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_KERNELS = Path(__file__).resolve().parent


class _KernelsStamp:
    """For numba's disk cache: a kernel counts as changed when any file of kernels/ does. Its
    machine code also holds the IR that helpers in other files emit (the block readers, `_ir`),
    which numba's stamp of the kernel's own file would not notice."""

    @classmethod
    def from_function(cls, py_func, py_file):
        if Path(py_file).resolve().parent != _KERNELS:
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(_KERNELS.glob("*.py")))


class _KernelsInNumbaCacheDir(_KernelsStamp, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR, when set"""


class _KernelsInTree(_KernelsStamp, caching.InTreeCacheLocator):
    """kernels/__pycache__ otherwise"""


caching.CacheImpl._locator_classes[:0] = [_KernelsInNumbaCacheDir, _KernelsInTree]


def jit(*, parallel: bool = False, fastmath: bool = False):
    """`numba.njit` with the project's flags."""
    return numba.njit(cache=True, nogil=True, parallel=parallel, fastmath=fastmath, error_model="numpy")
