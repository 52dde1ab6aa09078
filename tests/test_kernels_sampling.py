"""The sampling and penalty kernels, step by step, against NumPy references."""

import numpy as np
import pytest

from kernels import (apply_logit_bias, apply_penalties, draw, filter_candidates, sample_rows,
                     softmax_temperature)


def test_logit_bias_adds_per_entry():
    logits = np.zeros((2, 5), np.float32)
    apply_logit_bias(logits, np.array([0, 1, 1]), np.array([3, 0, 4]),
                     np.array([2.5, -100.0, 1.0], np.float32))
    ref = np.zeros((2, 5), np.float32)
    ref[0, 3], ref[1, 0], ref[1, 4] = 2.5, -100.0, 1.0
    assert np.array_equal(logits, ref)


def test_penalties_match_reference():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 10)).astype(np.float32)
    seen = [{1: 2, 4: 0, 7: 1}, {}, {0: 3, 9: 1}]  # token -> times generated (0: prompt only)
    presence = np.array([0.5, 1.0, -0.3], np.float32)
    frequency = np.array([0.25, 1.0, 0.7], np.float32)
    repetition = np.array([1.3, 1.0, 0.8], np.float32)
    ref = logits.copy()
    for b, tokens in enumerate(seen):
        for t, c in tokens.items():
            x = ref[b, t]
            x = x / repetition[b] if x > 0 else x * repetition[b]
            if c > 0:
                x -= presence[b] + c * frequency[b]
            ref[b, t] = x
    row_ptr = np.cumsum([0] + [len(s) for s in seen])
    ids = np.array([t for s in seen for t in s], np.int64)
    counts = np.array([c for s in seen for c in s.values()], np.int64)
    apply_penalties(logits, row_ptr, ids, counts, presence, frequency, repetition)
    np.testing.assert_allclose(logits, ref, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.7, 1.0, 2.0])
def test_softmax_temperature_matches_reference(temperature):
    logits = np.random.default_rng(1).standard_normal(1000).astype(np.float32) * 5
    probs = np.empty_like(logits)
    softmax_temperature(logits, np.float32(temperature), probs)
    z = logits.astype(np.float64) / temperature
    ref = np.exp(z - z.max())
    np.testing.assert_allclose(probs, ref / ref.sum(), rtol=1e-5, atol=1e-7)


def _probs(seed=2, n=500):
    p = np.random.default_rng(seed).gamma(0.3, size=n)
    return (p / p.sum()).astype(np.float32)


def test_top_p_keeps_exactly_the_smallest_set_reaching_p():
    probs = _probs()
    order = np.argsort(-probs, kind="stable")
    for p in [0.05, 0.3, 0.5, 0.9, 0.99, 0.999]:
        ids, n_keep = filter_candidates(probs, 0, np.float32(p), np.float32(0))
        cum = np.cumsum(probs[order].astype(np.float64))
        expected = int(np.searchsorted(cum, np.float32(p) * cum[-1]) + 1)  # first prefix with mass >= p
        assert n_keep == expected, p
        assert list(ids[:n_keep]) == list(order[:n_keep])
        assert probs[ids[: n_keep - 1]].sum() < np.float32(p) <= probs[ids[:n_keep]].sum() + 1e-6


def test_top_k_and_min_p():
    probs = _probs(3)
    order = np.argsort(-probs, kind="stable")
    ids, n_keep = filter_candidates(probs, 7, np.float32(1.0), np.float32(0.0))
    assert n_keep == 7 and list(ids[:7]) == list(order[:7])
    ids, n_keep = filter_candidates(probs, 0, np.float32(1.0), np.float32(0.2))
    assert set(ids[:n_keep]) == set(np.nonzero(probs >= 0.2 * probs.max())[0])
    # top-p is taken over the top-k set, renormalised
    ids, n_keep = filter_candidates(probs, 5, np.float32(0.5), np.float32(0.0))
    top5 = probs[order[:5]].astype(np.float64)
    assert n_keep == int(np.searchsorted(np.cumsum(top5), np.float32(0.5) * top5.sum()) + 1)


def test_no_filter_keeps_everything():
    probs = _probs(4)
    ids, n_keep = filter_candidates(probs, 0, np.float32(1.0), np.float32(0.0))
    assert n_keep == len(probs)


def test_draw_is_inverse_cdf():
    probs = np.array([0.1, 0.6, 0.3], np.float32)
    ids = np.array([1, 2, 0], np.int64)
    assert draw(probs, ids, 3, 0.0) == 1
    assert draw(probs, ids, 3, 0.59) == 1
    assert draw(probs, ids, 3, 0.61) == 2
    assert draw(probs, ids, 3, 0.95) == 0
    assert draw(probs, ids, 2, 0.95) == 2  # renormalised over the kept two


def test_temperature_zero_is_argmax_and_rows_are_independent():
    logits = np.random.default_rng(5).standard_normal((4, 50)).astype(np.float32)
    out = np.empty(4, np.int64)
    args = (np.array([0, 0.8, 0, 1.2], np.float32), np.array([0, 0, 3, 0], np.int64),
            np.array([1, 0.9, 1, 1], np.float32), np.zeros(4, np.float32),
            np.array([0.1, 0.5, 0.9, 0.3]))
    sample_rows(logits.copy(), *args, out)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()
    for b in range(4):
        one = np.empty(1, np.int64)
        sample_rows(logits[b:b + 1].copy(), *(a[b:b + 1] for a in args), one)
        assert one[0] == out[b]


def test_empirical_frequencies_match_the_filtered_distribution():
    """Chi-square goodness of fit of 20000 seeded draws with temperature, top-k and top-p."""
    rng = np.random.default_rng(6)
    logits = rng.standard_normal(40).astype(np.float32) * 2
    t, k, p = np.float32(0.8), 10, np.float32(0.8)
    z = logits.astype(np.float64) / t
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[:k]
    top = probs[order] / probs[order].sum()
    n_keep = int(np.searchsorted(np.cumsum(top), p) + 1)
    expected = np.zeros(40)
    expected[order[:n_keep]] = top[:n_keep] / top[:n_keep].sum()

    n = 20000
    rows = np.repeat(logits[None], n, axis=0)
    out = np.empty(n, np.int64)
    sample_rows(rows, np.full(n, t, np.float32), np.full(n, k, np.int64), np.full(n, p, np.float32),
                np.zeros(n, np.float32), rng.random(n), out)
    counts = np.bincount(out, minlength=40)
    assert counts[expected == 0].sum() == 0, "a filtered-out token was drawn"
    kept = expected > 0
    chi2 = (((counts[kept] - n * expected[kept]) ** 2) / (n * expected[kept])).sum()
    # 99.9th percentile of chi-square with n_keep - 1 degrees of freedom is below 30 for <= 9 dof
    assert n_keep - 1 <= 9 and chi2 < 30, (chi2, n_keep)


@pytest.mark.parametrize("p", [0.5, 0.9, 0.95, 0.999])
@pytest.mark.parametrize("shape", ["peaked", "flat"])
def test_top_p_on_a_full_vocabulary_matches_the_definition(p, shape):
    """The nucleus search sorts only the tokens above a floor; on 49152 tokens (a peaked and an
    almost flat distribution) it must keep exactly the smallest sorted prefix reaching p."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal(49152) * (4.0 if shape == "peaked" else 0.3)
    probs = np.exp(logits - logits.max())
    probs = (probs / probs.sum()).astype(np.float32)
    ids, n_keep = filter_candidates(probs, 0, np.float32(p), np.float32(0))
    order = np.argsort(-probs, kind="stable")
    cum = np.cumsum(probs[order].astype(np.float64))
    expected = int(np.searchsorted(cum, np.float32(p) * cum[-1]) + 1)
    assert n_keep == expected
    assert list(ids[:n_keep]) == list(order[:n_keep])


@pytest.mark.parametrize("k", [1, 40, 1000])
@pytest.mark.parametrize("shape", ["peaked", "flat", "ties"])
def test_top_k_on_a_full_vocabulary_matches_the_definition(k, shape):
    rng = np.random.default_rng(8)
    if shape == "ties":
        probs = np.full(49152, 1.0 / 49152, np.float32)  # every token tied: lowest ids win
    else:
        logits = rng.standard_normal(49152) * (4.0 if shape == "peaked" else 0.3)
        probs = np.exp(logits - logits.max())
        probs = (probs / probs.sum()).astype(np.float32)
    ids, n_keep = filter_candidates(probs, k, np.float32(1.0), np.float32(0))
    order = np.argsort(-probs, kind="stable")
    assert n_keep == k and list(ids[:k]) == list(order[:k])
