"""Decode and prefill speed of every weight format against llama.cpp on the same file, in the
same run; and, on a model of the size people run on CPUs (Llama 3.2 1B's shape), peak memory and
the fraction of the machine's memory bandwidth each side reaches.

    python bench/bench_formats.py DIR [--runs 5] [--only NAME ...]

DIR holds files made by tests/golden/make_quant_golden.py (`default` and `1b`). For each file,
as in bench_engine.py (PERFORMANCE.md): prefill = a 512-token prompt from an empty cache; decode
= 128 tokens after a 16-token prompt, greedy, timed from the first generated token; the two
sides alternate, medians of --runs with min-max. Bandwidth: the bytes of every matrix a decode
step reads (the whole model but the embedding) times tokens per second, against what a
parallel read of a 2 GB buffer reaches on this machine. Peak RSS: each side alone in a fresh
process that loads the file and runs one prefill and one decode (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from bench_engine import N_DECODE, N_PREFILL, N_PROMPT, ember_side, llama_cpp_side  # noqa: E402
from engine.gguf_file import GGUFFile  # noqa: E402


@njit(parallel=True, fastmath=True, cache=True)
def _read_all(values):
    """Sum of every float of values: a parallel, vectorized pure read of its memory."""
    total = np.float32(0.0)
    for i in prange(values.shape[0]):
        total += values[i]
    return total


def read_bandwidth(size: int = 2 << 30) -> float:
    """GB/s of a parallel read of a buffer bigger than every cache (median of 5)."""
    buf = np.ones(size // 4, np.float32)
    _read_all(buf)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        _read_all(buf)
        times.append(time.perf_counter() - start)
    return size / statistics.median(times) / 1e9


def matrix_bytes(path: Path) -> int:
    """Bytes a decode step reads: every matrix of the file except the embedding (one row)."""
    tensors = GGUFFile(path).tensors
    head = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    return sum(t.data.nbytes for name, t in tensors.items()
               if len(t.shape) == 2 and (name != "token_embd.weight" or head == name))


def peak_rss(side: str, path: Path) -> float:
    """MB: one side alone in a fresh process, after loading and one prefill and one decode."""
    out = subprocess.run([sys.executable, __file__, "--rss-of", side, str(path)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_mb"]


def _rss_child(side: str, path: Path) -> None:
    rng = np.random.default_rng(0)
    long_ids, short_ids = rng.integers(100, 40000, N_PREFILL).tolist(), rng.integers(100, 40000, N_PROMPT).tolist()
    prefill, decode = (ember_side(path)[:2] if side == "ember" else llama_cpp_side(path, os.cpu_count() or 1))
    prefill(long_ids)
    decode(short_ids)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    print(json.dumps({"rss_mb": int(hwm.split()[1]) / 1024}))


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f} ({min(xs):.1f}-{max(xs):.1f})"


def bench_file(path: Path, runs: int, bandwidth: float | None) -> None:
    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    long_ids, short_ids = rng.integers(100, 40000, N_PREFILL).tolist(), rng.integers(100, 40000, N_PROMPT).tolist()
    sides = {"ember": ember_side(path)[:2], "llama.cpp": llama_cpp_side(path, threads)}
    results = {name: {"prefill": [], "decode": []} for name in sides}
    for _ in range(runs):  # alternate the sides so drifts in machine load hit both
        for name, (prefill, decode) in sides.items():
            results[name]["prefill"].append(prefill(long_ids))
            results[name]["decode"].append(decode(short_ids))
    med = {n: {f: statistics.median(v) for f, v in r.items()} for n, r in results.items()}
    line = (f"{path.name}: prefill {N_PREFILL} ember {summary(results['ember']['prefill'])} / llama.cpp "
            f"{summary(results['llama.cpp']['prefill'])} tok/s = {med['ember']['prefill'] / med['llama.cpp']['prefill']:.2f}x; "
            f"decode {N_DECODE} ember {summary(results['ember']['decode'])} / llama.cpp "
            f"{summary(results['llama.cpp']['decode'])} tok/s = {med['ember']['decode'] / med['llama.cpp']['decode']:.2f}x")
    if bandwidth is not None:
        size = matrix_bytes(path)
        frac = {n: size * med[n]["decode"] / 1e9 / bandwidth for n in med}
        rss = {n: peak_rss(n, path) for n in sides}
        line += (f"; {size / 1e6:.0f} MB read per token: ember {100 * frac['ember']:.0f}%, llama.cpp "
                 f"{100 * frac['llama.cpp']:.0f}% of {bandwidth:.1f} GB/s; peak RSS ember "
                 f"{rss['ember']:.0f} MB, llama.cpp {rss['llama.cpp']:.0f} MB")
    print(line, flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-of":
        _rss_child(sys.argv[2], Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="file names (or parts of them) to run")
    args = ap.parse_args()
    files = [f for f in sorted(args.dir.glob("*.gguf")) if "F32" not in f.name
             and (not args.only or any(o in f.name for o in args.only))]
    bandwidth = read_bandwidth() if any("1b" in f.name for f in files) else None
    if bandwidth:
        print(f"machine read bandwidth (parallel, 2 GB buffer): {bandwidth:.1f} GB/s")
    for path in files:
        bench_file(path, args.runs, bandwidth if "1b" in path.name else None)


if __name__ == "__main__":
    main()
