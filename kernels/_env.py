"""Process settings that must be in place before numba starts OpenMP and the engine allocates.

Owns: nothing but an environment default and glibc's malloc thresholds. Imports: os, ctypes,
platform only, so any entry point can import it first (engine, server, tests and bench do). A
user's own GOMP_SPINCOUNT wins.

Measured on the 2-core dev machine with SmolLM2-135M (bench/RESULTS.md):
- GOMP_SPINCOUNT: every kernel of the forward pass is numba, run by one OpenMP thread pool (the
  engine does not call BLAS: see engine/weights.py). After each parallel region libgomp's
  threads spin before sleeping, ~300k iterations by default; 10000 keeps numba's region launch
  fast for decode (29 tok/s against 18 with the "workqueue" layer) while idle workers give the
  cores back soon to the server's event loop and the tokenizer. The default spin measured no
  steadier decode.
- malloc: a prompt step allocates arrays of a few MB (activations, dequantized weight rows).
  glibc serves those with fresh mmaps and returns freed heap tops to the kernel, so every step
  paid page faults on memory it had just freed; keeping allocations up to 64 MB in the heap and
  trimming only above 256 MB free made a 512-token prefill 0.75-0.8x the time.
"""

import ctypes
import os
import platform

os.environ.setdefault("GOMP_SPINCOUNT", "10000")

if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
    _M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    _libc = ctypes.CDLL(None)
    _libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    _libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
