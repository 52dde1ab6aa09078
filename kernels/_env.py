"""Thread settings that must be in place before NumPy loads OpenBLAS and numba starts OpenMP.

Owns: nothing but two environment defaults. Imports: os only, so any entry point can import it
first (engine, server, tests and bench do). A user's own values win.

Measured on the 2-core dev machine with SmolLM2-135M (bench/RESULTS.md). Two thread pools share
the cores: OpenBLAS's (prompt matmuls) and numba's OpenMP (every other kernel). Each spin-waits
after its work, and a spinning pool takes a core from the other:
- GOMP_SPINCOUNT: libgomp threads spin ~300k iterations after each parallel region; 10000 keeps
  numba's fast region launch for decode (29 tok/s against 18 with "workqueue") without starving
  OpenBLAS during prefill.
- OPENBLAS_THREAD_TIMEOUT: OpenBLAS workers spin 2^28 cycles (~0.1 s) after a call, so prompt
  attention and norms ran on one core between matmuls; 2^4 cycles took prefill of 512 tokens
  from 260 to 339 tok/s. It is read once, when NumPy is first imported.
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
