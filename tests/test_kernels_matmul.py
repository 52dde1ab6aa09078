"""kernels.matmul_rows and engine.weights.linear: correct, and a row's result is bit-identical
whatever else is in the batch (the basis of 'same seed, same tokens, under load')."""

import numpy as np
import pytest

from engine.weights import RowLayout, linear
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


def test_linear_prompt_rows_are_the_same_however_the_prompt_is_cut():
    """Prompt rows go through BLAS in fixed tiles, each row at the slot of its position: the
    same bits for one chunk, for several chunks, and next to other sequences' rows."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((576, 1536)).astype(np.float32)
    x = rng.standard_normal((150, 1536)).astype(np.float32)  # one prompt's rows, positions 0..149
    pos = np.arange(150)
    whole = linear(x, w, RowLayout.build(0, pos))
    np.testing.assert_allclose(whole, x @ w.T, rtol=1e-4, atol=1e-3)
    chunks = [linear(x[a:b], w, RowLayout.build(0, pos[a:b])) for a, b in [(0, 37), (37, 100), (100, 150)]]
    assert np.array_equal(np.concatenate(chunks), whole)
    other = rng.standard_normal((9, 1536)).astype(np.float32)  # decode rows and another prompt first
    mixed_x = np.concatenate([other[:3], other[3:], x[37:100]])
    mixed_pos = np.concatenate([[500, 7, 64], np.arange(20, 26), pos[37:100]])
    mixed = linear(mixed_x, w, RowLayout.build(3, mixed_pos))
    assert np.array_equal(mixed[9:], whole[37:100])
    assert np.array_equal(mixed[1:2], linear(other[1:2], w, RowLayout.decode_only(1)))


def test_row_layout_puts_each_prompt_row_at_its_position_slot():
    layout = RowLayout.build(2, np.array([9, 4, 62, 63, 64, 65, 3, 4]))
    assert layout.n_decode == 2
    assert layout.tiles == (((62, 2, 2),), ((0, 4, 2),), ((3, 6, 2),))
    whole = RowLayout.build(0, np.arange(10, 150))
    assert whole.tiles == (((10, 0, 54),), ((0, 54, 64),), ((0, 118, 22),))
