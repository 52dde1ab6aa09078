"""Token sampling: temperature softmax, top-k / top-p (nucleus) / min-p filtering, and the draw.

Owns: `softmax_temperature`, `filter_candidates`, `draw`, `sample_rows`, `argmax_rows`.
Imports: numpy, numba, kernels._jit, kernels.expf. Used by: engine.sampling.

The order is fixed (DESIGN.md): temperature -> top-k -> top-p -> min-p -> draw. Top-p is taken on
the distribution renormalised after top-k; min-p compares with the most likely token. The draw
gets its uniform number from the caller, so the same number gives the same token whatever else
is in the batch.
"""

import numpy as np
from numba import prange

from kernels._jit import jit
from kernels.expf import exp_inplace


@jit(fastmath=True)
def softmax_temperature(logits, temperature, probs):
    """probs = softmax(logits / temperature) for one row; logits (V,) f32, probs (V,) f32 written.
    exp is kernels.expf's vectorized one (np.exp here was a libm call per vocabulary entry)."""
    best = logits.max()
    inv_t = np.float32(1.0 / temperature)
    n = logits.shape[0]
    for v in range(n):
        probs[v] = (logits[v] - best) * inv_t
    exp_inplace(probs, n)
    total = 0.0
    for v in range(n):
        total += probs[v]
    scale = np.float32(1.0 / total)
    for v in range(probs.shape[0]):
        probs[v] *= scale


@jit()
def _floor(probs, need, by_mass):
    """The first threshold t = max(probs) / 16^i, i = 1, 2, ..., whose tokens at or above it
    number at least `need` (by_mass False) or hold at least `need` of the mass (by_mass True;
    with a 1e-6 relative margin for summation order); 0 if none down to 16^-12."""
    if by_mass:
        total = 0.0
        for v in range(probs.shape[0]):
            total += probs[v]
        need = need * total * (1.0 + 1e-6)
    t = probs.max()
    for _ in range(12):
        t /= 16.0
        have = 0.0
        for v in range(probs.shape[0]):
            if probs[v] >= t:
                have += probs[v] if by_mass else 1.0
        if have >= need:
            return t
    return 0.0


@jit()
def filter_candidates(probs, top_k, top_p, min_p):
    """The kept tokens of one row, most likely first: (ids int64, n_keep).

    ids[:n_keep] are the survivors of top-k (k <= 0: off), top-p (p >= 1: off; the smallest
    prefix whose mass, renormalised over the top-k set, reaches p) and min-p (0: off; prob >=
    min_p * max prob). With no filter at all the ids are every token in index order (no sort).
    """
    n_vocab = probs.shape[0]
    if top_k <= 0 and top_p >= 1.0 and min_p <= 0.0:
        return np.arange(n_vocab), n_vocab
    if top_k > 0 and top_k < n_vocab:
        # Only the top-k set can survive: find its smallest member with a partial sort, of the
        # tokens above a floor holding at least k of them (a few hundred, not 49k).
        pool = probs[probs >= _floor(probs, float(top_k), False)]
        floor = np.partition(pool, pool.shape[0] - top_k)[pool.shape[0] - top_k]
    else:
        # With top-p alone, only tokens at or above a floor holding mass >= p can be in the
        # nucleus (the sorted prefix reaches p before it goes below the floor), so only those
        # are sorted: a few dozen to a few hundred of the 49k, instead of every token above
        # (1 - p) / V as before (thousands on a flat distribution).
        floor = 0.0
        if top_p < 1.0:
            floor = _floor(probs, float(top_p), True)
        if min_p > 0.0:
            floor = max(floor, min_p * probs.max())
    cand = np.nonzero(probs >= floor)[0]
    order = np.argsort(-probs[cand], kind="mergesort")  # stable: ties keep index order
    ids = cand[order]
    n_keep = ids.shape[0]
    if top_k > 0 and top_k < n_keep:
        n_keep = top_k
    if top_p < 1.0:
        mass = 0.0  # of the top-k set, or of the whole distribution when top-k is off
        if top_k > 0:
            for j in range(n_keep):
                mass += probs[ids[j]]
        else:
            for v in range(n_vocab):
                mass += probs[v]
        cum = 0.0
        for j in range(n_keep):
            cum += probs[ids[j]]
            if cum >= top_p * mass:
                n_keep = j + 1
                break
    if min_p > 0.0:
        limit = min_p * probs[ids[0]]
        j = 1
        while j < n_keep and probs[ids[j]] >= limit:
            j += 1
        n_keep = j
    return ids, n_keep


@jit()
def draw(probs, ids, n_keep, u):
    """Inverse-CDF draw among ids[:n_keep] renormalised, with u uniform in [0, 1)."""
    mass = 0.0
    for j in range(n_keep):
        mass += probs[ids[j]]
    target = u * mass
    cum = 0.0
    for j in range(n_keep):
        cum += probs[ids[j]]
        if cum > target:
            return ids[j]
    return ids[n_keep - 1]


@jit()
def argmax_rows(logits, out):
    """out[b] = argmax(logits[b]) (first index on ties); logits (B, V) f32, out (B,) int64."""
    for b in range(logits.shape[0]):
        out[b] = np.argmax(logits[b])


@jit(parallel=True)
def sample_rows(logits, temperature, top_k, top_p, min_p, coins, out):
    """Sample one token per row of logits (B, V) f32 into out (B,) int64.

    Per-row (B,) parameters: temperature f32 (0 -> argmax), top_k int64, top_p f32, min_p f32,
    coins f64 uniform numbers in [0, 1). Rows are independent of each other (and run in
    parallel: a row's softmax over a 49k vocabulary is ~0.14 ms).
    """
    for b in prange(logits.shape[0]):
        probs = np.empty(logits.shape[1], np.float32)
        if temperature[b] <= 0.0:
            out[b] = np.argmax(logits[b])
            continue
        softmax_temperature(logits[b], temperature[b], probs)
        ids, n_keep = filter_candidates(probs, top_k[b], top_p[b], min_p[b])
        out[b] = draw(probs, ids, n_keep, coins[b])
