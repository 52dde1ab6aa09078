"""kernels.rms_norm_rows against the NumPy definition, and row-independent."""

import numpy as np

from kernels import rms_norm_rows


def test_rms_norm_rows_matches_numpy_and_rows_are_independent():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 576)) * 3).astype(np.float32)
    w = rng.standard_normal(576).astype(np.float32)
    out = np.empty_like(x)
    rms_norm_rows(x, w, 1e-5, out)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    one = np.empty((1, 576), np.float32)
    rms_norm_rows(x[3:4], w, 1e-5, one)
    assert np.array_equal(one[0], out[3])
