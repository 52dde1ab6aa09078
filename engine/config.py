"""Frozen configuration of the model architecture and of the engine.

Owns: `ModelConfig` (with `from_hf` and `from_gguf`), `EngineConfig`, `ModelError`.
Imports: stdlib, numpy. Used by: everything in engine/, and server/ to build an `EngineConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class ModelError(ValueError):
    """A model file or directory that is missing, malformed or not supported; the message says
    which file and what is wrong."""


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder: RMSNorm, RoPE, GQA, SwiGLU, optional q/k/v biases."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    rope_theta: float
    max_seq_len: int
    tie_embeddings: bool
    qkv_bias: bool = False
    # One divisor per rotary frequency (D/2 of them), from Llama-3 "rope_scaling" or a GGUF's
    # rope_freqs tensor; None means plain RoPE.
    rope_freq_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ModelError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.rope_freq_factors is not None and len(self.rope_freq_factors) != self.head_dim // 2:
            raise ModelError("rope frequency factors must have head_dim / 2 entries")

    def inv_freq(self) -> np.ndarray:
        """(D/2,) f64 rotary frequencies theta^(-2i/D), divided by the scaling factors if any."""
        exponents = np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim
        freq = 1.0 / self.rope_theta**exponents
        if self.rope_freq_factors is not None:
            freq = freq / np.asarray(self.rope_freq_factors, dtype=np.float64)
        return freq

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a Hugging Face `config.json` (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)."""
        archs = cfg.get("architectures") or ["LlamaForCausalLM"]
        if archs[0] not in _HF_ARCHS:
            raise ModelError(f"config.json: architecture {archs[0]!r} is not supported "
                             f"(supported: {', '.join(sorted(_HF_ARCHS))})")
        try:
            n_heads = int(cfg["num_attention_heads"])
            dim = int(cfg["hidden_size"])
            head_dim = int(cfg.get("head_dim") or dim // n_heads)
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                dim=dim,
                n_layers=int(cfg["num_hidden_layers"]),
                n_heads=n_heads,
                n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
                head_dim=head_dim,
                hidden_dim=int(cfg["intermediate_size"]),
                norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=float(cfg.get("rope_theta", 10000.0)),
                max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=bool(cfg.get("attention_bias", archs[0] == "Qwen2ForCausalLM")),
                rope_freq_factors=_hf_rope_factors(cfg.get("rope_scaling"), head_dim,
                                                   float(cfg.get("rope_theta", 10000.0))),
            )
        except KeyError as e:
            raise ModelError(f"config.json: missing field {e.args[0]!r}") from None

    @classmethod
    def from_gguf(cls, meta: dict[str, Any], tensor_names: set[str],
                  rope_freqs: np.ndarray | None = None) -> ModelConfig:
        """From GGUF metadata (`general.architecture` = llama or qwen2) and its tensor names."""
        arch = meta.get("general.architecture")
        if arch not in _GGUF_ARCHS:
            raise ModelError(f"GGUF architecture {arch!r} is not supported "
                             f"(supported: {', '.join(sorted(_GGUF_ARCHS))})")

        def get(key: str, default: Any = None) -> Any:
            value = meta.get(f"{arch}.{key}", default)
            if value is None:
                raise ModelError(f"GGUF metadata: missing {arch}.{key}")
            return value

        n_heads = int(get("attention.head_count"))
        dim = int(get("embedding_length"))
        head_dim = int(meta.get(f"{arch}.attention.key_length") or dim // n_heads)
        vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
        factors = None
        if rope_freqs is not None:
            factors = tuple(float(x) for x in rope_freqs)
        elif meta.get(f"{arch}.rope.scaling.type") == "linear":
            factors = (float(get("rope.scaling.factor")),) * (head_dim // 2)
        return cls(
            vocab_size=int(vocab),
            dim=dim,
            n_layers=int(get("block_count")),
            n_heads=n_heads,
            n_kv_heads=int(get("attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            hidden_dim=int(get("feed_forward_length")),
            norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
            rope_theta=_f32(get("rope.freq_base", 10000.0)),
            max_seq_len=int(get("context_length")),
            tie_embeddings="output.weight" not in tensor_names,
            qkv_bias="blk.0.attn_q.bias" in tensor_names,
            rope_freq_factors=factors,
        )


def _f32(x: float) -> float:
    """A GGUF float32 as the decimal it was written from (1e-5, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


_HF_ARCHS = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
_GGUF_ARCHS = {"llama", "qwen2"}


def _hf_rope_factors(scaling: dict[str, Any] | None, head_dim: int,
                     theta: float) -> tuple[float, ...] | None:
    """Per-frequency divisors for a Hugging Face `rope_scaling` (linear or llama3)."""
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    factor = float(scaling["factor"])
    if kind == "linear":
        return (factor,) * (head_dim // 2)
    if kind != "llama3":
        raise ModelError(f"config.json: rope_scaling type {kind!r} is not supported (linear, llama3)")
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(factors)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine preallocates and how much work one step may do."""

    max_seqs: int = 8  # sequences computed together
    max_seq_len: int = 2048  # context per sequence (capped by the model's)
    max_batch_tokens: int = 512  # tokens per step; longer prompts are computed in chunks
    kv_cache_mb: int = 512  # KV-cache pool; what running sequences do not hold caches prefixes
    block_size: int = 16  # tokens per KV-cache block (the prefix cache's granularity)

    def __post_init__(self) -> None:
        assert self.max_seqs >= 1 and self.max_seq_len >= 2 and self.max_batch_tokens >= 1
        assert self.kv_cache_mb >= 1 and self.block_size >= 1
