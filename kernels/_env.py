"""Thread settings that must be in place before numba starts OpenMP.

Owns: nothing but an environment default. Imports: os only, so any entry point can import it
first (engine, server, tests and bench do). A user's own value wins.

Every kernel of the forward pass is numba, run by one OpenMP thread pool (the engine no longer
calls BLAS: see engine/weights.py). After each parallel region libgomp's threads spin before
sleeping, ~300k iterations by default. GOMP_SPINCOUNT=10000 keeps numba's region launch fast
for decode (29 tok/s against 18 with the "workqueue" layer, bench/RESULTS.md) while idle
workers give the cores back soon to the server's event loop and the tokenizer; the default
spin measured no steadier decode on the 2-core dev machine.
"""

import os

os.environ.setdefault("GOMP_SPINCOUNT", "10000")
