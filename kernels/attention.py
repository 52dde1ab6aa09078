"""Causal grouped-query attention of a packed batch of tokens over a paged f16 KV cache.

Owns: `attention`, `store_kv`, `half_bits`. Imports: numpy, numba, llvmlite, kernels._ir,
kernels._jit, kernels.expf. Used by: engine.model.

The cache holds keys and values as IEEE half bit patterns (uint16: numba has no float16), half
the memory of f32, as llama.cpp keeps them; `store_kv` rounds a step's keys and values into it.
The two inner loops, q . k and acc += p * v, run a cache block at a time in LLVM-IR intrinsics
that widen 8 halves per instruction (F16C / ARM) and accumulate in f32 with a fixed order.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels._ir import F32, I64, array_data, check_arrays, fmuladd, half_to_float, hsum, splat
from kernels._jit import jit
from kernels.expf import exp_inplace, tanhf

_V8F = ir.VectorType(F32, 8)


@intrinsic
def _dot_half(typingctx, q, q_off, k, k_off, n):
    """sum(q[q_off : q_off+n] * k[k_off : k_off+n]) for f32 q, f16-bit-pattern k; n % 8 == 0."""
    check_arrays((q, types.float32), (k, types.uint16))

    def codegen(context, builder, sig, args):
        qp, _ = array_data(context, builder, sig.args[0], args[0])
        kp, _ = array_data(context, builder, sig.args[2], args[2])
        q0 = builder.gep(qp, [builder.mul(args[1], ir.Constant(I64, 4))])
        k0 = builder.gep(kp, [builder.mul(args[3], ir.Constant(I64, 2))])
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V8F, [0.0] * 8))
        with cgutils.for_range(builder, builder.sdiv(args[4], ir.Constant(I64, 8))) as loop:
            i = loop.index
            qv = builder.load(builder.bitcast(builder.gep(q0, [builder.mul(i, ir.Constant(I64, 32))]),
                                              _V8F.as_pointer()), align=4)
            kv = half_to_float(builder, builder.gep(k0, [builder.mul(i, ir.Constant(I64, 16))]), 8)
            builder.store(fmuladd(builder, qv, kv, builder.load(acc)), acc)
        return hsum(builder, builder.load(acc))

    return types.float32(q, types.intp, k, types.intp, types.intp), codegen


def _make_qk(head_dim: int):
    """An intrinsic qk(q, q_off, group, k, k_off, k_stride, n, scores, s_off, s_row, scale): for
    t < n and each head hh < group of a GQA group, scores[s_off + hh * s_row + t] =
    (q[q_off + hh * head_dim : ...] . k[k_off + t * k_stride : ...]) * scale, k f16 bit patterns.
    Each cache row is widened to f32 once for the whole group (it stays in registers); each
    score is the same sequence of fmuladds and the same halving sum as `_dot_half`."""
    n_vec = head_dim // 8

    def codegen(context, builder, sig, args):
        qp, _ = array_data(context, builder, sig.args[0], args[0])
        kp, _ = array_data(context, builder, sig.args[3], args[3])
        sp, _ = array_data(context, builder, sig.args[7], args[7])
        q_off, group, k_off, k_stride, n, s_off, s_row, scale = (args[i] for i in (1, 2, 4, 5, 6, 8, 9, 10))
        q0 = builder.bitcast(builder.gep(qp, [builder.mul(q_off, ir.Constant(I64, 4))]), F32.as_pointer())
        s0 = builder.bitcast(builder.gep(sp, [builder.mul(s_off, ir.Constant(I64, 4))]), F32.as_pointer())
        with cgutils.for_range(builder, n) as pos:
            t = pos.index
            row = builder.gep(kp, [builder.mul(builder.add(k_off, builder.mul(t, k_stride)), ir.Constant(I64, 2))])
            kv = [half_to_float(builder, builder.gep(row, [ir.Constant(I64, 16 * c)]), 8) for c in range(n_vec)]
            with cgutils.for_range(builder, group) as head:
                hh = head.index
                qh = builder.gep(q0, [builder.mul(hh, ir.Constant(I64, head_dim))])
                acc = ir.Constant(_V8F, [0.0] * 8)
                for c in range(n_vec):
                    qv = builder.load(builder.bitcast(builder.gep(qh, [ir.Constant(I64, 8 * c)]), _V8F.as_pointer()),
                                      align=4)
                    acc = fmuladd(builder, qv, kv[c], acc)
                dst = builder.gep(s0, [builder.add(builder.mul(hh, s_row), t)])
                builder.store(builder.fmul(hsum(builder, acc), scale), dst)
        return context.get_dummy_value()

    @intrinsic
    def qk(typingctx, q, q_off, group, k, k_off, k_stride, n, scores, s_off, s_row, scale):
        check_arrays((q, types.float32), (k, types.uint16), (scores, types.float32))
        return types.void(q, types.intp, types.intp, k, types.intp, types.intp, types.intp, scores, types.intp,
                          types.intp, types.float32), codegen

    return qk


_qk64, _qk128, _qk256 = _make_qk(64), _make_qk(128), _make_qk(256)


def _make_pv(width: int):
    """An intrinsic pv(p, p_off, n, v, v_off, v_stride, acc, acc_off): for t < n in order,
    acc[acc_off : acc_off+width] += p[p_off + t] * v[v_off + t * v_stride : ... + width], with v
    f16 bit patterns. The width/8 accumulators stay in registers for the n positions (one
    load and one store of acc per call, not per position); each element's sum is the same
    sequence of fmuladds as one position at a time."""
    n_vec = width // 8

    def codegen(context, builder, sig, args):
        pp, _ = array_data(context, builder, sig.args[0], args[0])
        vp, _ = array_data(context, builder, sig.args[3], args[3])
        ap, _ = array_data(context, builder, sig.args[6], args[6])
        p0 = builder.bitcast(builder.gep(pp, [builder.mul(args[1], ir.Constant(I64, 4))]), F32.as_pointer())
        a0 = builder.gep(ap, [builder.mul(args[7], ir.Constant(I64, 4))])
        a_ptrs = [builder.bitcast(builder.gep(a0, [ir.Constant(I64, 32 * c)]), _V8F.as_pointer()) for c in range(n_vec)]
        accs = [cgutils.alloca_once_value(builder, builder.load(ptr, align=4)) for ptr in a_ptrs]
        with cgutils.for_range(builder, args[2]) as loop:
            t = loop.index
            pv = splat(builder, builder.load(builder.gep(p0, [t])), _V8F)
            row = builder.gep(vp, [builder.mul(builder.add(args[4], builder.mul(t, args[5])), ir.Constant(I64, 2))])
            for c in range(n_vec):
                vv = half_to_float(builder, builder.gep(row, [ir.Constant(I64, 16 * c)]), 8)
                builder.store(fmuladd(builder, pv, vv, builder.load(accs[c])), accs[c])
        for acc, ptr in zip(accs, a_ptrs):
            builder.store(builder.load(acc), ptr, align=4)
        return context.get_dummy_value()

    @intrinsic
    def pv(typingctx, p, p_off, n, v, v_off, v_stride, acc, acc_off):
        check_arrays((p, types.float32), (v, types.uint16), (acc, types.float32))
        return types.void(p, types.intp, types.intp, v, types.intp, types.intp, acc, types.intp), codegen

    return pv


_pv64, _pv8 = _make_pv(64), _make_pv(8)


@jit()
def half_bits(f):
    """IEEE half bit pattern (uint16) of the f32 whose bits are the uint32 f, rounded to nearest
    even as NumPy's astype(np.float16) does it (overflow to inf, NaN kept a NaN, subnormals
    rounded)."""
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    exp = f & np.uint32(0x7F800000)
    if exp >= np.uint32(0x47800000):  # |x| >= 65536, inf or NaN
        mant = f & np.uint32(0x007FFFFF)
        if exp == np.uint32(0x7F800000) and mant != 0:
            h = np.uint32(0x7C00) + (mant >> np.uint32(13))
            return np.uint16(sign + (h if h != np.uint32(0x7C00) else np.uint32(0x7C01)))
        return np.uint16(sign + np.uint32(0x7C00))
    if exp <= np.uint32(0x38000000):  # a half subnormal, or zero
        if exp < np.uint32(0x33000000):
            return np.uint16(sign)
        mant = (np.uint32(0x00800000) + (f & np.uint32(0x007FFFFF))) >> (np.uint32(113) - (exp >> np.uint32(23)))
        if (mant & np.uint32(0x3FFF)) != np.uint32(0x1000) or (f & np.uint32(0x7FF)) != 0:
            mant += np.uint32(0x1000)
        return np.uint16(sign + (mant >> np.uint32(13)))
    mant = f & np.uint32(0x007FFFFF)
    if (mant & np.uint32(0x3FFF)) != np.uint32(0x1000):
        mant += np.uint32(0x1000)
    return np.uint16(sign + ((exp - np.uint32(0x38000000)) >> np.uint32(13)) + (mant >> np.uint32(13)))


@jit()
def store_kv(k, v, kv_index, k_cache, v_cache):
    """k_cache[kv_index[i]] = half(k[i]) and the same for v, for k, v (N, Hkv, D) f32 and the
    caches (n_blocks * BS, Hkv, D) uint16 (one layer, as f16 bit patterns)."""
    k_bits, v_bits = k.view(np.uint32), v.view(np.uint32)
    for i in range(k.shape[0]):
        slot = kv_index[i]
        for h in range(k.shape[1]):
            for d in range(k.shape[2]):
                k_cache[slot, h, d] = half_bits(k_bits[i, h, d])
                v_cache[slot, h, d] = half_bits(v_bits[i, h, d])


@jit(parallel=True, fastmath=True)
def attention(q, k_cache, v_cache, block_tables, token_seq, positions, scale, window, softcap, out):
    """Write softmax(q k^T * scale) v for every (token, head) of the step into out.

    q (N, H, D) f32: queries of the step's tokens, RoPE already applied.
    k_cache, v_cache (n_blocks, BS, Hkv, D) uint16 (f16 bits), C order: one layer of the cache. This step's keys and
        values must already be written, so token i sees positions 0..positions[i] of its
        sequence (causal masking is just this upper bound).
    block_tables (B, max_blocks) int64: position t of sequence s is at block
        block_tables[s, t // BS], offset t % BS.
    token_seq (N,), positions (N,) int64: each token's sequence and position.
    window: when > 0, a token sees only the last `window` positions (itself included): sliding-
        window attention. softcap: when > 0, each score s becomes softcap * tanh(s / softcap).
    out (N, H, D) f32, written. Query head h reads kv head h // (H / Hkv) (GQA). D % 8 == 0.

    A job is one (token, kv head): the query heads of its group read each K and V row once.
    Each (token, head) is computed on its own with a fixed reduction order, so a token's result
    does not depend on what else is in the batch. exp is kernels.expf (vectorized).
    """
    n_tokens, n_heads, head_dim = q.shape
    block_size = k_cache.shape[1]
    n_kv = k_cache.shape[2]
    group = n_heads // n_kv
    for job in prange(n_tokens * n_kv):
        # Jobs are split between threads in contiguous ranges, and a prompt's later tokens see
        # more context: fold the order (tokens 0, N-1, 1, N-2, ...) so each range gets its share
        # of long and short ones.
        t = job // n_kv
        i = t // 2 if t % 2 == 0 else n_tokens - 1 - t // 2
        g = job % n_kv
        table = block_tables[token_seq[i]]
        end = positions[i] + 1  # the token sees positions [start, end)
        start = max(0, end - window) if window > 0 else 0
        n_ctx = end - start
        scores = np.empty((group, n_ctx), np.float32)
        q_off = (i * n_heads + g * group) * head_dim
        for j in range(start // block_size, (end + block_size - 1) // block_size):
            # a cache block at a time (no division per position), each K row widened once per group
            lo = max(start, j * block_size)
            n = min(end, (j + 1) * block_size) - lo
            k_off = ((table[j] * block_size + lo - j * block_size) * n_kv + g) * head_dim
            if head_dim == 64:
                _qk64(q, q_off, group, k_cache, k_off, n_kv * head_dim, n, scores, lo - start, n_ctx, scale)
            elif head_dim == 128:
                _qk128(q, q_off, group, k_cache, k_off, n_kv * head_dim, n, scores, lo - start, n_ctx, scale)
            elif head_dim == 256:
                _qk256(q, q_off, group, k_cache, k_off, n_kv * head_dim, n, scores, lo - start, n_ctx, scale)
            else:
                for o in range(n):
                    for hh in range(group):
                        s = _dot_half(q, q_off + hh * head_dim, k_cache, k_off + o * n_kv * head_dim, head_dim)
                        scores[hh, lo - start + o] = s * scale
        for hh in range(group):  # softmax numerators, in place
            row = scores[hh]
            if softcap > 0:
                for t in range(n_ctx):
                    row[t] = softcap * tanhf(row[t] / softcap)
            best = np.float32(-np.inf)
            for t in range(n_ctx):
                best = max(best, row[t])
            for t in range(n_ctx):
                row[t] -= best
            exp_inplace(row, n_ctx)
        acc = np.zeros((group, head_dim), np.float32)
        for j in range(start // block_size, (end + block_size - 1) // block_size):
            # a cache block's positions at a time, the accumulators in registers
            lo = max(start, j * block_size)
            n = min(end, (j + 1) * block_size) - lo
            v_off = ((table[j] * block_size + lo - j * block_size) * n_kv + g) * head_dim
            for hh in range(group):
                if head_dim % 64 == 0:
                    for d0 in range(0, head_dim, 64):
                        _pv64(scores, hh * n_ctx + lo - start, n, v_cache, v_off + d0, n_kv * head_dim,
                              acc, hh * head_dim + d0)
                else:
                    for d0 in range(0, head_dim, 8):
                        _pv8(scores, hh * n_ctx + lo - start, n, v_cache, v_off + d0, n_kv * head_dim,
                             acc, hh * head_dim + d0)
        for hh in range(group):
            total = np.float32(0.0)
            for t in range(n_ctx):
                total += scores[hh, t]
            inv = np.float32(1.0) / total
            for d in range(head_dim):
                out[i, g * group + hh, d] = acc[hh, d] * inv
