"""kernels.quant over every format of kernels.formats: the NumPy references against the `gguf`
package's dequantizer, the kernels against the references (dequantization exact, products
against dequantize-then-matmul, a row's bits the same whatever else is in the call and whichever
path `linear` takes). Blocks are random bytes with sane f16 scales, or `gguf`-quantized where the
package can write the format; tests/test_quant_golden.py checks blocks llama.cpp wrote."""

import gguf
import numpy as np
import pytest

from engine.weights import QuantMatrix, dequantize, embed, linear
from kernels import dequantize_rows, qmatmul_rows
from kernels.formats import FORMATS, QUANTIZED
from kernels.quant import dequantize_ref, quantize_q8_0

# byte offsets of the f16 scales in each format's block (random bytes there could be inf or nan)
HALVES = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "IQ4_NL": [0],
          "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
          "IQ4_XS": [0]}


def _quantized(fmt, shape, seed=0):
    """(rows, row bytes) blocks of fmt for a (rows, in_features) matrix."""
    rng = np.random.default_rng(seed)
    spec = FORMATS[fmt]
    blocks = rng.integers(0, 256, (shape[0] * shape[1] // spec.block_weights, spec.block_bytes),
                          dtype=np.uint8)
    for off in HALVES[fmt]:
        scale = rng.uniform(0.001, 0.05, (len(blocks), 1)) * rng.choice([-1, 1], (len(blocks), 1))
        blocks[:, off:off + 2] = scale.astype(np.float16).view(np.uint8)
    return blocks.reshape(shape[0], -1)


def test_every_quantized_format_has_its_scales_listed():
    assert sorted(HALVES) == sorted(QUANTIZED)


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_reference_dequantization_is_gguf_s(fmt):
    q = _quantized(fmt, (24, 512))
    ref = gguf.quants.dequantize(q, gguf.GGMLQuantizationType[fmt])
    assert np.array_equal(dequantize_ref(q, fmt), ref)
    if fmt in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):  # blocks the gguf package encodes
        w = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
        q = gguf.quants.quantize(w, gguf.GGMLQuantizationType[fmt])
        assert np.array_equal(dequantize_ref(q, fmt), gguf.quants.dequantize(q, gguf.GGMLQuantizationType[fmt]))


@pytest.mark.parametrize("fmt", ["F32", "F16", "BF16"])
def test_float_formats_widen_as_gguf_does(fmt):
    w = np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType[fmt]) if fmt == "BF16" else \
        w.astype(np.float16 if fmt == "F16" else np.float32)
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(4, -1)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[fmt]) if fmt == "BF16" else \
        raw.view(np.float16 if fmt == "F16" else np.float32).astype(np.float32)
    assert np.array_equal(FORMATS[fmt].dequantize(raw), ref)


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_dequantize_rows_is_exact(fmt):
    q = _quantized(fmt, (40, 512), seed=1)
    rows = np.array([3, 0, 39, 3, 17])
    out = np.empty((len(rows), 512), np.float32)
    dequantize_rows(q, fmt, rows, out)
    assert np.array_equal(out, dequantize_ref(q, fmt)[rows])


def test_scales_widen_exactly_from_half():
    """Negative, subnormal and large f16 scales: the kernels' widening is exact."""
    halves = np.array([1.0, -0.5, 6.1e-5, 3.0e-7, -2.0e-6, 60000.0, 0.0, -0.0], np.float16)
    q = np.zeros((len(halves), 34), np.uint8)  # Q8_0: d, then 32 int8 quants
    q[:, 0:2] = halves.view(np.uint8).reshape(-1, 2)
    q[:, 2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    out = np.empty((len(halves), 32), np.float32)
    dequantize_rows(q, "Q8_0", np.arange(len(halves)), out)
    expect = halves.astype(np.float32)[:, None] * np.arange(-16, 16, dtype=np.float32)
    assert np.array_equal(out, expect)


@pytest.mark.parametrize("fmt", QUANTIZED)
@pytest.mark.parametrize("shape", [(13, 256), (576, 1536), (1536, 768), (49, 512)])
def test_qmatmul_rows_matches_dequantize_then_matmul(fmt, shape):
    q = _quantized(fmt, shape, seed=2)
    w = dequantize_ref(q, fmt).astype(np.float64)
    x = np.random.default_rng(3).standard_normal((6, shape[1])).astype(np.float32)
    out = np.empty((6, shape[0]), np.float32)
    qmatmul_rows(x, q, fmt, out)
    ref = x.astype(np.float64) @ w.T
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_qmatmul_rows_is_batch_invariant(fmt):
    """Rows go through in fours and then one by one; a row's bits must not depend on which."""
    q = _quantized(fmt, (200, 768), seed=4)
    x = np.random.default_rng(5).standard_normal((9, 768)).astype(np.float32)

    def fn(rows):
        out = np.empty((len(rows), q.shape[0]), np.float32)
        qmatmul_rows(np.ascontiguousarray(rows), q, fmt, out)
        return out

    alone = np.concatenate([fn(x[i:i + 1]) for i in range(len(x))])
    for n in (9, 8, 5, 4, 3):
        assert np.array_equal(fn(x[:n]), alone[:n]), n
    assert np.array_equal(fn(x[::-1])[::-1], alone)


def test_quantize_q8_0_round_trips_like_llama_cpp():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((7, 64)).astype(np.float32)
    w[2, :32] = 0.0  # an all-zero block: scale 0, quants 0
    q = quantize_q8_0(w)
    assert q.tobytes() == gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0).tobytes()
    np.testing.assert_allclose(dequantize_ref(q, "Q8_0"), w, atol=np.abs(w).max() / 127)
    with pytest.raises(ValueError):
        quantize_q8_0(w[:, :40])


@pytest.mark.parametrize("fmt", QUANTIZED)
def test_linear_on_quantized_weights_gives_the_same_bits_on_both_paths(fmt):
    """A few rows read the blocks in place (qmatmul_rows); many rows multiply dequantized f32
    rows (matmul_rows). Both sum in the same order, so a row's bits do not depend on which path
    its batch took, nor on how its prompt was cut."""
    m = QuantMatrix(_quantized(fmt, (96, 256), seed=7), fmt)
    assert m.shape == (96, 256)
    w = dequantize(m)
    x = np.random.default_rng(8).standard_normal((70, 256)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    many = linear(x, m)  # 70 rows: the dequantized path
    np.testing.assert_allclose(many, ref, rtol=1e-4, atol=1e-4)
    few = np.concatenate([linear(x[a:a + 5], m) for a in range(0, 70, 5)])  # the in-place path
    assert np.array_equal(few, many)
    direct = np.empty_like(many)
    qmatmul_rows(x, m.data, m.fmt, direct)
    assert np.array_equal(direct, many)
    assert np.array_equal(embed(m, np.array([5, 0, 5])), w[[5, 0, 5]])


def test_quant_matrix_rejects_what_is_not_blocks():
    with pytest.raises(ValueError):
        QuantMatrix(np.zeros((4, 30), np.uint8), "Q4_1")  # 30 is not a whole number of blocks
    with pytest.raises(ValueError):
        QuantMatrix(np.zeros((4, 20), np.float32), "Q4_1")


def test_kernels_refuse_arrays_that_are_not_c_contiguous_f32():
    """The IR reads rows as flat f32 memory, so a strided or f64 x is a compile-time error, not garbage."""
    from numba.core.errors import TypingError

    q = _quantized("Q4_1", (8, 64))
    x = np.ones((64, 2), np.float32).T  # (2, 64), Fortran order
    with pytest.raises(TypingError):
        qmatmul_rows(x, q, "Q4_1", np.empty((2, 8), np.float32))
    with pytest.raises(TypingError):  # and f64 would be read as f32
        qmatmul_rows(np.ones((2, 64)), q, "Q4_1", np.empty((2, 8), np.float32))


def test_many_rows_dequantize_a_bounded_slice_at_a_time(monkeypatch):
    """A matrix bigger than the scratch budget is dequantized a slice of output rows at a time
    (a big model must not expand a whole FFN matrix to f32 per call): the same bits."""
    from engine import weights

    m = QuantMatrix(_quantized("Q4_1", (300, 256), seed=9), "Q4_1")
    x = np.random.default_rng(10).standard_normal((100, 256)).astype(np.float32)
    whole = linear(x, m)
    monkeypatch.setattr(weights, "SCRATCH_BYTES", 64 * 256 * 4)  # 64 output rows at a time
    sliced = linear(x, m)
    assert np.array_equal(sliced, whole)
    np.testing.assert_allclose(sliced, x.astype(np.float64) @ dequantize(m).T.astype(np.float64),
                               rtol=1e-4, atol=1e-4)
