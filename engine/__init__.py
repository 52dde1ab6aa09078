"""The inference engine: token ids in, token ids out. Config, weights, KV cache, forward pass,
sampler and scheduler. Never imports tokenizer/ or server/.
"""

import kernels._env  # noqa: F401, I001  (first: thread settings before numba starts OpenMP)
from engine.config import EngineConfig, ModelConfig, ModelError
from engine.engine import Engine, EngineStats
from engine.grammar import Grammar
from engine.loader import load_model
from engine.request import RequestOutput
from engine.sampling import SamplingParams

__all__ = ["Engine", "EngineConfig", "EngineStats", "Grammar", "ModelConfig", "ModelError", "RequestOutput",
           "SamplingParams", "load_model"]
