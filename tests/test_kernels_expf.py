"""kernels.expf (expf, exp_inplace) and kernels.silu_mul against NumPy."""

import numpy as np

from kernels import silu_mul
from kernels.expf import exp_inplace, expf


def test_exp_inplace_is_within_an_ulp_or_so_of_exp():
    x = np.linspace(-86, 88, 200_001).astype(np.float32)  # 2^-125 < e^-86
    y = x.copy()
    exp_inplace(y, len(y))
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(y - ref) / ref).max() < 3e-7
    ends = np.array([-100.0, -1e30, 1e30, 2000.0, 7.0], np.float32)
    exp_inplace(ends, 4)  # clamped to [-88, 88]: 0 below, exp(88) above; past n left alone
    assert ends.tolist() == [0.0, 0.0, y[-1], y[-1], 7.0]


def test_a_vectorized_lane_gives_the_scalar_bits():
    """exp_inplace runs expf 8 lanes at a time; every lane must round exactly as the scalar call,
    across the clamps, the flush to zero and specials."""
    x = np.concatenate([np.linspace(-95, 95, 4001), [-np.inf, np.inf, np.nan, 0.0, -0.0, -87.34, -86.99]])
    x = x.astype(np.float32)
    y = x.copy()
    exp_inplace(y, len(y))
    scalar = np.array([expf(v) for v in x], np.float32)
    assert np.array_equal(y.view(np.int32), scalar.view(np.int32))


def test_silu_mul_matches_numpy_and_saturates():
    rng = np.random.default_rng(0)
    gate = (rng.standard_normal((5, 1536)) * 4).astype(np.float32)
    gate[0, :3] = [-200.0, 200.0, 0.0]
    up = rng.standard_normal((5, 1536)).astype(np.float32)
    g64 = gate.astype(np.float64)
    ref = g64 / (1 + np.exp(-g64)) * up
    out = np.empty_like(gate)
    silu_mul(gate, up, out)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-6)
    silu_mul(gate, up, gate)  # in place
    assert np.array_equal(gate, out)
