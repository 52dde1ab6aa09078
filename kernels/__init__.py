"""Pure numba / NumPy kernels on arrays. No engine concepts; nothing compiles at import time.

Imports nothing of ours outside kernels/. Used by: engine.
"""

import kernels._env  # noqa: F401  (first: thread settings before numba starts OpenMP)
from kernels.activations import gelu_tanh_mul, silu_mul, softcap_rows
from kernels.attention import attention, store_kv
from kernels.matmul import matmul_rows
from kernels.norm import rms_norm_rows
from kernels.penalties import apply_logit_bias, apply_penalties, apply_token_mask
from kernels.quant import dequantize_rows, qmatmul_rows
from kernels.rope import apply_rope
from kernels.sampling import argmax_rows, draw, filter_candidates, sample_rows, softmax_temperature

__all__ = [
    "apply_logit_bias",
    "apply_penalties",
    "apply_rope",
    "apply_token_mask",
    "argmax_rows",
    "attention",
    "dequantize_rows",
    "draw",
    "filter_candidates",
    "gelu_tanh_mul",
    "matmul_rows",
    "qmatmul_rows",
    "rms_norm_rows",
    "sample_rows",
    "silu_mul",
    "softcap_rows",
    "softmax_temperature",
    "store_kv",
]
