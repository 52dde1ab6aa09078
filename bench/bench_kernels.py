"""Time of each kernel at the default model's shapes, with achieved GB/s or GFLOP/s.

    python bench/bench_kernels.py

Byte and FLOP counts are stated next to each figure; medians of repeated calls.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402


from kernels import (apply_penalties, apply_rope, attention, matmul_rows, qmatmul_rows,  # noqa: E402
                     rms_norm_rows, sample_rows, silu_mul)
from kernels.formats import FORMATS  # noqa: E402
from kernels.quant import quantize_q8_0  # noqa: E402

H, HKV, D, V, F = 9, 3, 64, 49152, 1536  # SmolLM2-135M


def timed(fn, repeat=50) -> float:
    fn()  # compile / warm
    xs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - start)
    return statistics.median(xs)


def bench_attention(n_tokens: int, n_ctx: int, block_size: int = 16) -> None:
    rng = np.random.default_rng(0)
    k = rng.standard_normal((1024 // block_size, block_size, HKV, D)).astype(np.float16).view(np.uint16)
    v = k.copy()  # the cache keeps f16 bit patterns
    tables = np.arange(1024 // block_size, dtype=np.int64)[None]  # one sequence, blocks in order
    q = rng.standard_normal((n_tokens, H, D)).astype(np.float32)
    out = np.empty_like(q)
    pos = np.arange(n_ctx - n_tokens, n_ctx, dtype=np.int64)
    seq = np.zeros(n_tokens, np.int64)
    t = timed(lambda: attention(q, k, v, tables, seq, pos, np.float32(0.125), 0, np.float32(0.0), out), 20)
    ctx = (pos + 1).sum()
    flops = 4 * H * D * ctx  # q.k and p.v, multiply-add = 2 flops each
    print(f"attention N={n_tokens:4d} ctx={n_ctx:4d}: {t * 1e3:8.3f} ms  {flops / t / 1e9:6.1f} GFLOP/s")


def bench_matmul(n_rows: int) -> None:
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal(s).astype(np.float32) for s in [(1536, D * H), (D * H, 1536)] * 15]
    xs = {w.shape[1]: rng.standard_normal((n_rows, w.shape[1])).astype(np.float32) for w in ws}
    outs = [np.empty((n_rows, w.shape[0]), np.float32) for w in ws]
    t = timed(lambda: [matmul_rows(xs[w.shape[1]], w, o) for w, o in zip(ws, outs)], 10)
    size = sum(w.nbytes for w in ws)
    print(f"matmul_rows R={n_rows} over {size / 1e6:.0f} MB of f32 weights: {t * 1e3:7.2f} ms  "
          f"{size / t / 1e9:5.1f} GB/s  {2 * n_rows * size / 4 / t / 1e9:5.1f} GFLOP/s")


def bench_qmatmul(n_rows: int, fmt: str) -> None:
    """The body's matrices (30 layers of SmolLM2) in a block format; Q4 blocks are random bytes
    with sane scales (timing does not depend on the values)."""
    rng = np.random.default_rng(5)
    shapes = [(F, D * H), (F, D * H), (D * H, F), (D * H, D * H), (D * H, D * H), (D * HKV, D * H),
              (D * HKV, D * H)] * 30
    ws = []
    for o, k in shapes:
        if fmt == "Q8_0":
            ws.append(quantize_q8_0(rng.standard_normal((o, k)).astype(np.float32)))
            continue
        blocks = rng.integers(0, 256, (o, k // 32, FORMATS[fmt].block_bytes), dtype=np.uint8)
        blocks[..., 0:2] = np.array([0.01], np.float16).view(np.uint8)
        if fmt == "Q4_1":
            blocks[..., 2:4] = np.array([-0.05], np.float16).view(np.uint8)
        ws.append(blocks.reshape(o, -1))
    xs = {k: rng.standard_normal((n_rows, k)).astype(np.float32) for k in (D * H, F)}
    outs = [np.empty((n_rows, o), np.float32) for o, _ in shapes]
    t = timed(lambda: [qmatmul_rows(xs[k], w, fmt, out) for w, (_, k), out in zip(ws, shapes, outs)], 10)
    size = sum(w.nbytes for w in ws)
    macs = n_rows * sum(o * k for o, k in shapes)
    print(f"qmatmul_rows {fmt} R={n_rows} over {size / 1e6:.0f} MB of blocks: {t * 1e3:7.2f} ms  "
          f"{size / t / 1e9:5.1f} GB/s  {2 * macs / t / 1e9:5.1f} GFLOP/s")


def bench_prompt_linear(n_rows: int) -> None:
    """engine.weights.linear on many rows of a Q4_1 FFN matrix (dequantized rows, f32 tiles),
    against NumPy's BLAS on the same dequantized weights (one call, all rows: what a prompt
    would cost if batch invariance did not matter)."""
    from engine.weights import QuantMatrix, dequantize, linear

    rng = np.random.default_rng(6)
    for o, k in ((F, D * H), (D * H, F)):
        blocks = rng.integers(0, 256, (o, k // 32, FORMATS["Q4_1"].block_bytes), dtype=np.uint8)
        blocks[..., 0:2] = np.array([0.01], np.float16).view(np.uint8)
        blocks[..., 2:4] = np.array([-0.05], np.float16).view(np.uint8)
        m = QuantMatrix(blocks.reshape(o, -1), "Q4_1")
        x = rng.standard_normal((n_rows, k)).astype(np.float32)
        wt = dequantize(m).T
        t_ours = timed(lambda x=x, m=m: linear(x, m), 10)
        t_blas = timed(lambda x=x, wt=wt: x @ wt, 10)
        time.sleep(0.3)  # OpenBLAS's threads spin ~0.1 s after a call, taking the cores from numba's
        flops = 2 * n_rows * o * k
        print(f"linear Q4_1 ({o}x{k}) N={n_rows}: {t_ours * 1e3:7.2f} ms {flops / t_ours / 1e9:6.1f} GFLOP/s;"
              f" BLAS on dequantized weights {t_blas * 1e3:7.2f} ms {flops / t_blas / 1e9:6.1f} GFLOP/s;"
              f" ratio {t_blas / t_ours:.2f}")


def main() -> None:
    for fmt in ("Q4_1", "Q8_0"):
        bench_qmatmul(1, fmt)
        bench_qmatmul(8, fmt)
    bench_matmul(1)
    bench_matmul(8)
    bench_prompt_linear(512)
    bench_prompt_linear(20)
    bench_prompt_linear(1)
    bench_attention(1, 128)
    bench_attention(1, 1024)
    bench_attention(512, 512)

    x = np.random.default_rng(1).standard_normal((512, H, D)).astype(np.float32)
    cos = np.ones((1024, D // 2), np.float32)
    sin = np.zeros((1024, D // 2), np.float32)
    pos = np.arange(512, dtype=np.int64)
    t = timed(lambda: apply_rope(x, pos, cos, sin))
    print(f"rope N=512 H={H}: {t * 1e3:8.3f} ms  {2 * x.nbytes / t / 1e9:6.1f} GB/s (read+write)")

    g = np.random.default_rng(2).standard_normal((512, F)).astype(np.float32)
    u = g.copy()
    out = np.empty_like(g)
    t = timed(lambda: silu_mul(g, u, out))
    print(f"silu_mul N=512 F={F}: {t * 1e3:8.3f} ms  {3 * g.nbytes / t / 1e9:6.1f} GB/s")
    t = timed(lambda: silu_mul(g[:1], u[:1], out[:1]), 200)
    print(f"silu_mul N=1 F={F}: {t * 1e6:8.1f} us")
    h = g[:, :D * H].copy()
    hn = np.empty_like(h)
    t = timed(lambda: rms_norm_rows(h[:1], h[0], 1e-5, hn[:1]), 200)
    print(f"rms_norm_rows N=1 C={D * H}: {t * 1e6:8.1f} us")

    logits = np.random.default_rng(3).standard_normal((8, V)).astype(np.float32) * 3
    ids = np.empty(8, np.int64)
    for top_p, top_k in [(1.0, 0), (0.9, 0), (1.0, 40)]:
        t = timed(lambda: sample_rows(logits, np.full(8, 0.7, np.float32), np.full(8, top_k),
                                      np.full(8, top_p, np.float32), np.zeros(8, np.float32),
                                      np.full(8, 0.5), ids), 20)
        print(f"sample_rows B=8 V={V} top_p={top_p} top_k={top_k}: {t * 1e3:8.3f} ms "
              f"({t / 8 * 1e3:.3f} ms/row)  {logits.nbytes / t / 1e9:6.2f} GB/s")

    row_ptr = np.array([0, 500], np.int64)
    tok = np.arange(500, dtype=np.int64) * 7
    cnt = np.ones(500, np.int64)
    one = np.ones(1, np.float32)
    t = timed(lambda: apply_penalties(logits[:1], row_ptr, tok, cnt, one * 0.1, one * 0.1, one * 1.1))
    print(f"apply_penalties 500 seen tokens: {t * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
