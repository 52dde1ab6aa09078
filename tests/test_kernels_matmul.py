"""kernels.matmul_rows and engine.weights.linear: correct, and a row's result is bit-identical
whatever else is in the batch (the basis of 'same seed, same tokens, under load')."""

import numpy as np
import pytest

from engine.weights import linear
from kernels import matmul_rows


@pytest.mark.parametrize("shape", [(64, 32), (1536, 576), (576, 1536), (3, 8), (37, 16)])
def test_matmul_rows_matches_reference(shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((5, shape[1])).astype(np.float32)
    out = np.empty((5, shape[0]), np.float32)
    matmul_rows(x, w, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-4,
                               atol=1e-4 * np.sqrt(shape[1]))


def _rows_alone_and_in_batches(fn, x):
    alone = np.concatenate([fn(x[i:i + 1]) for i in range(len(x))])
    return alone, [fn(x[:n])[:n] for n in (len(x), 3)], fn(x[::-1])[::-1]


def test_matmul_rows_is_batch_invariant():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1536, 576)).astype(np.float32)
    x = rng.standard_normal((9, 576)).astype(np.float32)

    def fn(rows):
        out = np.empty((len(rows), w.shape[0]), np.float32)
        matmul_rows(np.ascontiguousarray(rows), w, out)
        return out

    alone, batches, reversed_ = _rows_alone_and_in_batches(fn, x)
    for b in batches:
        assert np.array_equal(b, alone[:len(b)])
    assert np.array_equal(reversed_, alone)


def test_linear_rows_are_the_same_however_the_prompt_is_cut():
    """Prompt rows and decode rows go through the same kernel: the same bits for one chunk,
    for several chunks, one row at a time, and next to other sequences' rows."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((576, 1536)).astype(np.float32)
    x = rng.standard_normal((150, 1536)).astype(np.float32)
    whole = linear(x, w)
    np.testing.assert_allclose(whole, x @ w.T, rtol=1e-4, atol=1e-3)
    chunks = [linear(x[a:b], w) for a, b in [(0, 37), (37, 100), (100, 150)]]
    assert np.array_equal(np.concatenate(chunks), whole)
    other = rng.standard_normal((9, 1536)).astype(np.float32)
    mixed = linear(np.concatenate([other, x[37:100]]), w)
    assert np.array_equal(mixed[9:], whole[37:100])
    assert np.array_equal(np.concatenate([linear(x[i:i + 1], w) for i in (5, 80)]), whole[[5, 80]])


@pytest.mark.parametrize("shape", [(7, 40), (8, 24), (5, 8)])
def test_matmul_rows_handles_odd_features_and_a_last_group_of_eight(shape):
    """An odd number of output features (the last one alone) and in_features = 16 n + 8."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal((3, shape[1])).astype(np.float32)
    out = np.empty((3, shape[0]), np.float32)
    matmul_rows(x, w, out)
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5, atol=1e-5)


def test_matmul_rows_refuses_in_features_it_cannot_read():
    with pytest.raises(ValueError, match="multiple of 8"):
        matmul_rows(np.ones((2, 12), np.float32), np.ones((3, 12), np.float32), np.empty((2, 3), np.float32))
