"""Rotary position embedding, applied in place (rotate-half convention, as in Hugging Face Llama).

Owns: `apply_rope`. Imports: numpy, kernels._jit. Used by: engine.model.
"""

from kernels._jit import jit


@jit()
def apply_rope(x, positions, cos, sin):
    """Rotate x (N, H, D) f32 in place by the angle of each token's position.

    positions (N,) int64; cos, sin (S, R/2) f32 tables indexed by position, for the first R
    dims of each head (R = D unless the model rotates only a part). Pairs are (x[d], x[d + R/2])
    — the "rotate half" layout of Hugging Face checkpoints.
    """
    n_tokens, n_heads = x.shape[0], x.shape[1]
    half = cos.shape[1]
    for i in range(n_tokens):
        p = positions[i]
        for h in range(n_heads):
            for d in range(half):
                x1 = x[i, h, d]
                x2 = x[i, h, d + half]
                c = cos[p, d]
                s = sin[p, d]
                x[i, h, d] = x1 * c - x2 * s
                x[i, h, d + half] = x2 * c + x1 * s
