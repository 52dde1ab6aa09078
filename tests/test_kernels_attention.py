"""kernels.attention (over an f16 cache) and kernels.rope against NumPy references."""

import numpy as np
import pytest

from kernels import apply_rope, attention, gelu_tanh_mul, silu_mul, softcap_rows, store_kv


def attention_reference(q, k_cache, v_cache, tables, token_seq, positions, scale, window=0,
                        softcap=0.0):
    """softmax(q k^T scale) v in float64, the cache given as f16 bit patterns; a token sees its
    last `window` positions (all when 0), scores capped at softcap * tanh(s / softcap)."""
    k_cache = k_cache.view(np.float16).astype(np.float64)
    v_cache = v_cache.view(np.float16).astype(np.float64)
    n, h, d = q.shape
    group = h // k_cache.shape[2]
    out = np.zeros_like(q)
    for i in range(n):
        table = tables[token_seq[i]]
        first = max(0, positions[i] + 1 - window) if window else 0
        k = k_cache[table].reshape(-1, *k_cache.shape[2:])[first: positions[i] + 1]  # (T, Hkv, D)
        v = v_cache[table].reshape(-1, *v_cache.shape[2:])[first: positions[i] + 1]
        for head in range(h):
            s = k[:, head // group] @ q[i, head] * scale  # (T,)
            if softcap:
                s = softcap * np.tanh(s / softcap)
            p = np.exp(s - s.max())
            out[i, head] = (p / p.sum()) @ v[:, head // group]
    return out


def _paged(rng, n_seqs, max_len, n_kv_heads, d, bs=8):
    """An f16 cache (uint16 bit patterns) whose sequences own shuffled, non-contiguous blocks."""
    per = -(-max_len // bs)
    k = rng.standard_normal((n_seqs * per + 3, bs, n_kv_heads, d)).astype(np.float16).view(np.uint16)
    v = rng.standard_normal(k.shape).astype(np.float16).view(np.uint16)
    tables = rng.permutation(len(k))[: n_seqs * per].reshape(n_seqs, per).astype(np.int64)
    return k, v, tables


@pytest.mark.parametrize("n_heads,n_kv_heads,d", [(4, 4, 16), (4, 2, 16), (9, 3, 16), (8, 1, 16), (9, 3, 64),
                                                  (4, 2, 128), (2, 1, 72), (4, 2, 256)])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (5, 0.0), (16, 0.0), (0, 3.0), (9, 2.0)])
def test_attention_matches_reference(n_heads, n_kv_heads, d, window, softcap):
    """Head dims that are multiples of 64 take the 64-wide P.V path, others the 8-wide one; a
    window starts inside a cache block (5, 9) or on a block boundary (16)."""
    rng = np.random.default_rng(0)
    k_cache, v_cache, tables = _paged(rng, 3, 40, n_kv_heads, d)
    # a packed step: a 5-token prompt chunk of sequence 2, a decode token of 0 and of 1
    token_seq = np.array([2, 2, 2, 2, 2, 0, 1], np.int64)
    positions = np.array([10, 11, 12, 13, 14, 0, 39], np.int64)
    q = rng.standard_normal((len(token_seq), n_heads, d)).astype(np.float32)
    out = np.empty_like(q)
    attention(q, k_cache, v_cache, tables, token_seq, positions, np.float32(d**-0.5), window,
              np.float32(softcap), out)
    ref = attention_reference(q.astype(np.float64), k_cache, v_cache, tables, token_seq, positions, d**-0.5,
                              window, softcap)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_of_a_token_does_not_depend_on_the_batch():
    rng = np.random.default_rng(1)
    k_cache, v_cache, tables = _paged(rng, 2, 30, 2, 8)
    q = rng.standard_normal((3, 4, 8)).astype(np.float32)
    token_seq, positions = np.array([0, 1, 1], np.int64), np.array([20, 3, 4], np.int64)
    together = np.empty_like(q)
    attention(q, k_cache, v_cache, tables, token_seq, positions, np.float32(0.3), 0, np.float32(0.0),
              together)
    alone = np.empty_like(q[:1])
    attention(q[:1].copy(), k_cache, v_cache, tables[:1], token_seq[:1], positions[:1],
              np.float32(0.3), 0, np.float32(0.0), alone)
    assert np.array_equal(alone[0], together[0])


def rope_reference(x, positions, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = positions[:, None] * inv[None, :]  # (N, D/2)
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def test_rope_matches_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 16)).astype(np.float32)
    positions = np.array([0, 1, 7, 100, 4095], np.int64)
    ang = np.outer(np.arange(4096), 1.0 / 10000.0 ** (np.arange(0, 16, 2) / 16))
    y = x.copy()
    apply_rope(y, positions, np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32))
    np.testing.assert_allclose(y, rope_reference(x.astype(np.float64), positions, 10000.0),
                               rtol=1e-5, atol=1e-5)


def test_partial_rope_rotates_the_first_dims_only():
    """A table for R < D dims rotates pairs (d, d + R/2) of the first R dims (Phi's partial
    rotary) and leaves the rest as they were."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 16)).astype(np.float32)
    positions = np.array([0, 3, 9, 30], np.int64)
    ang = np.outer(np.arange(32), 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8))
    y = x.copy()
    apply_rope(y, positions, np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32))
    ref = rope_reference(x[..., :8].astype(np.float64), positions, 10000.0)
    np.testing.assert_allclose(y[..., :8], ref, rtol=1e-5, atol=1e-5)
    assert np.array_equal(y[..., 8:], x[..., 8:])


def test_gelu_tanh_and_softcap_match_references():
    g = np.linspace(-12, 12, 97, dtype=np.float32).reshape(1, -1)
    up = np.full_like(g, 1.5)
    out = np.empty_like(g)
    gelu_tanh_mul(g, up, out)
    x = g.astype(np.float64)
    ref = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))) * 1.5
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    logits = np.array([[-1e6, -40.0, -1.0, 0.0, 0.5, 29.0, 1e6]], np.float32)
    capped = logits.copy()
    softcap_rows(capped, np.float32(30.0))
    np.testing.assert_allclose(capped, 30 * np.tanh(logits.astype(np.float64) / 30), rtol=1e-6, atol=1e-5)


def test_silu_mul_matches_reference_and_survives_extremes():
    gate = np.array([[-1000.0, -20.0, -1.0, 0.0, 1.0, 20.0, 1000.0]], np.float32)
    up = np.full_like(gate, 2.0)
    out = np.empty_like(gate)
    silu_mul(gate, up, out)
    g = gate.astype(np.float64)
    with np.errstate(over="ignore"):
        ref = g / (1 + np.exp(-g)) * 2.0
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert np.isfinite(out).all()


def test_half_widening_without_f16c_is_exact():
    """The integer fallback of kernels._ir.half_to_float (CPUs without F16C) against NumPy,
    for every finite half: normal, subnormal, zero, negative."""
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    from kernels._ir import F32, I64, array_data, half_to_float

    @intrinsic
    def widen8(typingctx, src, dst, i):
        def codegen(context, builder, sig, args):
            sp, _ = array_data(context, builder, sig.args[0], args[0])
            dp, _ = array_data(context, builder, sig.args[1], args[1])
            v = half_to_float(builder, builder.gep(sp, [builder.mul(args[2], ir.Constant(I64, 16))]), 8,
                              native=False)
            ptr = builder.gep(dp, [builder.mul(args[2], ir.Constant(I64, 32))])
            builder.store(v, builder.bitcast(ptr, ir.VectorType(F32, 8).as_pointer()), align=4)
            return context.get_dummy_value()
        return types.void(src, dst, i), codegen

    @njit
    def widen(src, dst):
        for i in range(src.shape[0] // 8):
            widen8(src, dst, i)

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(bits.view(np.float16))
    out = np.empty(65536, np.float32)
    widen(bits, out)
    assert np.array_equal(out[finite], bits.view(np.float16)[finite].astype(np.float32))


def test_store_kv_rounds_to_half_like_numpy():
    """The cache holds f16 bit patterns: store_kv rounds as astype(np.float16) does, for ties,
    subnormals, overflow, inf and NaN too, and writes each token at its slot."""
    rng = np.random.default_rng(7)
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    halves = halves[np.isfinite(halves)]
    edge = np.concatenate([halves, np.nextafter(halves, np.float32(np.inf)), np.nextafter(halves, -np.float32(np.inf)),
                           (halves.astype(np.float64) * (1 + 2.0**-11)).astype(np.float32),  # exact ties
                           np.array([65519.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, np.nan, 1e-8, -3e-8], np.float32),
                           rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 20000)])
    edge = np.concatenate([edge, np.zeros(-len(edge) % 8, np.float32)])
    k = edge.reshape(-1, 2, 4).astype(np.float32)
    v = -k
    index = rng.permutation(len(k) + 5)[:len(k)].astype(np.int64)
    k_cache = np.zeros((len(k) + 5, 2, 4), np.uint16)
    v_cache = np.zeros_like(k_cache)
    store_kv(k, v, index, k_cache, v_cache)
    with np.errstate(all="ignore"):
        assert np.array_equal(k_cache[index], k.astype(np.float16).view(np.uint16))
        assert np.array_equal(v_cache[index], v.astype(np.float16).view(np.uint16))
