"""Logit adjustments applied before sampling: logit bias, a grammar's token mask, and repetition /
presence / frequency penalties. All change `logits` in place.

Owns: `apply_logit_bias`, `apply_token_mask`, `apply_penalties`. Imports: numpy, kernels._jit.
Used by: engine.sampling.
"""

import numpy as np

from kernels._jit import jit


@jit()
def apply_logit_bias(logits, rows, token_ids, values):
    """logits[rows[j], token_ids[j]] += values[j] for every entry j; logits (B, V) f32 in place."""
    for j in range(rows.shape[0]):
        logits[rows[j], token_ids[j]] += values[j]


@jit()
def apply_token_mask(logits, rows, masks):
    """logits[rows[j], v] = -inf for every token v not allowed by masks[j]; logits (B, V) f32 in
    place, rows (J,) int64, masks (J, W) int32 bitmasks: bit v % 32 of word v // 32 set means
    allowed (llguidance's layout; W * 32 >= V)."""
    for j in range(rows.shape[0]):
        row = rows[j]
        for v in range(logits.shape[1]):
            if not (masks[j, v >> 5] >> (v & 31)) & 1:
                logits[row, v] = -np.inf


@jit()
def apply_penalties(logits, row_ptr, token_ids, counts, presence, frequency, repetition):
    """Penalise tokens a sequence has already seen; logits (B, V) f32 in place.

    The tokens of row b are token_ids[row_ptr[b]:row_ptr[b+1]], each with counts = how often it
    was generated so far (0 for a token seen only in the prompt). Per row (B,) f32 parameters:
      repetition (CTRL / Hugging Face): every seen token, logit / r if positive else logit * r;
      presence and frequency (OpenAI): generated tokens, logit -= presence + count * frequency.
    """
    for b in range(row_ptr.shape[0] - 1):
        rep = repetition[b]
        for j in range(row_ptr[b], row_ptr[b + 1]):
            t = token_ids[j]
            x = logits[b, t]
            if rep != 1.0:
                x = x / rep if x > 0 else x * rep
            c = counts[j]
            if c > 0:
                x -= presence[b] + c * frequency[b]
            logits[b, t] = x
