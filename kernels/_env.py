"""Process settings that must be in place before numba starts OpenMP and the engine allocates.

Owns: nothing but an environment default and glibc's malloc thresholds. Imports: os, ctypes,
platform only, so any entry point can import it first (engine, server, tests and bench do). A
user's own GOMP_SPINCOUNT wins.

Measured on the 2-core dev machine with SmolLM2-135M (bench/RESULTS.md):
- GOMP_SPINCOUNT: every kernel of the forward pass is numba, run by one OpenMP thread pool (the
  engine does not call BLAS: see engine/weights.py). After each parallel region libgomp's
  threads spin before sleeping (~300k iterations by default), so that the next region starts
  without a wake-up; a decode step launches ~210 of them. 100000 against 10000, alternating
  runs: one-sequence decode steps 9.7-10.3 against 11.2-13.1 ms, and 8 streams over HTTP
  182-208 against 137-199 tok/s (the server's event loop shares the cores, so the pool should
  not spin for long after the engine goes idle). 10000 was chosen when OpenBLAS ran prompt
  matmuls and a spinning pool starved it; it no longer runs.
- malloc: a prompt step allocates arrays of a few MB (activations, dequantized weight rows).
  glibc serves those with fresh mmaps and returns freed heap tops to the kernel, so every step
  paid page faults on memory it had just freed; keeping allocations up to 64 MB in the heap and
  trimming only above 256 MB free made a 512-token prefill 0.75-0.8x the time.
"""

import ctypes
import os
import platform

os.environ.setdefault("GOMP_SPINCOUNT", "100000")

if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    _libc = ctypes.CDLL(None)
    _libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    _libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
