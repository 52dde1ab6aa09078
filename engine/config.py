"""Frozen configuration of the model architecture and of the engine.

Owns: `ModelConfig` (with `from_hf` and `from_gguf`), `Rope`, `EngineConfig`, `ModelError`.
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
class Rope:
    """How a layer rotates queries and keys: rotate-half pairs (d, d + dims/2) over the first
    `dims` of each head, frequency i being theta^(-2i/dims) / factor_i."""

    theta: float = 10000.0
    dims: int = 0  # rotated dims per head; 0 means all of them (phi3 may rotate a part)
    factors: tuple[float, ...] | None = None  # one divisor per frequency: linear, llama3, LongRoPE
    long_factors: tuple[float, ...] | None = None  # LongRoPE: used instead when the context
    original_context: int = 0  # ... is longer than this (llama.cpp's rule: one choice per context)
    attn_factor: float = 1.0  # cos and sin are multiplied by it (LongRoPE's magnitude correction)

    def tables(self, head_dim: int, context: int) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin), each (context, dims/2) f32, for positions 0..context-1."""
        dims = self.dims or head_dim
        factors = self.factors
        if self.long_factors is not None and context > self.original_context:
            factors = self.long_factors
        freq = 1.0 / self.theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
        if factors is not None:
            if len(factors) != dims // 2:
                raise ModelError(f"RoPE: {len(factors)} frequency factors for {dims} rotated dims")
            freq = freq / np.asarray(factors, np.float64)
        angles = np.outer(np.arange(context), freq)  # (S, dims/2) f64
        return ((np.cos(angles) * self.attn_factor).astype(np.float32),
                (np.sin(angles) * self.attn_factor).astype(np.float32))


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of the Llama family: RMSNorm, RoPE, grouped-query attention
    and a gated FFN, with the choices that tell its members apart (`arch` names the member).

    llama, qwen2: the base; qwen2 adds q/k/v biases.  qwen3: RMSNorm on each head's q and k.
    phi3: as llama (its fused matrices are split at load), LongRoPE.  gemma2, gemma3: embeddings
    scaled, GELU-tanh gate, norms after attention and FFN too, sliding-window layers; gemma2
    soft-caps scores and logits, gemma3 has q/k norms and its own RoPE for local layers.
    smollm3: no RoPE in some layers.
    """

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    max_seq_len: int
    tie_embeddings: bool
    arch: str = "llama"
    rope: Rope = Rope()
    qkv_bias: bool = False
    qk_norm: bool = False  # RMSNorm on each head's q and k, before RoPE
    post_norms: bool = False  # RMSNorm on the attention and FFN outputs, before the residual add
    activation: str = "silu"  # the FFN's gate: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale: float = 1.0  # embeddings are multiplied by it (gemma: sqrt(dim))
    attn_scale: float = 0.0  # the q.k multiplier; 0 means 1 / sqrt(head_dim)
    attn_softcap: float = 0.0  # scores become cap * tanh(score / cap); 0: not capped
    final_softcap: float = 0.0  # the same for the logits
    sliding_window: int = 0  # a local layer's token attends to this many positions (itself included)
    local_layers: tuple[int, ...] = ()  # the layers with sliding-window attention
    local_rope: Rope | None = None  # the local layers' RoPE, when it is not `rope` (gemma3)
    no_rope_layers: tuple[int, ...] = ()  # layers whose q and k are not rotated (smollm3)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 8:
            raise ModelError(f"head_dim={self.head_dim} is not a multiple of 8; Ember cannot run it")
        for rope in (self.rope, self.local_rope):
            if rope is not None and (rope.dims or self.head_dim) % 2:
                raise ModelError(f"RoPE over {rope.dims or self.head_dim} dims: must be even")
        if self.activation not in ("silu", "gelu_tanh"):
            raise ModelError(f"FFN activation {self.activation!r} is not supported (silu, gelu_tanh)")
        if self.local_layers and self.sliding_window < 1:
            raise ModelError("local layers need a sliding window of at least one position")

    def window(self, layer: int) -> int:
        """How many positions back the layer attends (0: all of them)."""
        return self.sliding_window if layer in self.local_layers else 0

    def layer_rope(self, layer: int) -> Rope | None:
        if layer in self.no_rope_layers:
            return None
        if layer in self.local_layers and self.local_rope is not None:
            return self.local_rope
        return self.rope

    @property
    def scale(self) -> float:
        return self.attn_scale or 1.0 / math.sqrt(self.head_dim)

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """From a Hugging Face `config.json` (see _HF_ARCHS), in transformers 4's layout or 5's."""
        archs = cfg.get("architectures") or ["LlamaForCausalLM"]
        arch = _HF_ARCHS.get(archs[0])
        if arch is None:
            raise ModelError(f"config.json: architecture {archs[0]!r} is not supported "
                             f"(supported: {', '.join(sorted(_HF_ARCHS))})")
        try:
            return _from_hf(cls, arch, cfg)
        except KeyError as e:
            raise ModelError(f"config.json: missing field {e.args[0]!r}") from None

    @classmethod
    def from_gguf(cls, meta: dict[str, Any], tensor_names: set[str],
                  rope_freqs: dict[str, np.ndarray] | None = None) -> ModelConfig:
        """From GGUF metadata (`general.architecture`, see _GGUF_ARCHS) and its tensor names;
        rope_freqs holds the file's RoPE factor tensors by name, if any."""
        arch = meta.get("general.architecture")
        if arch not in _GGUF_ARCHS:
            raise ModelError(f"GGUF architecture {arch!r} is not supported "
                             f"(supported: {', '.join(sorted(_GGUF_ARCHS))})")
        return _from_gguf(cls, arch, meta, tensor_names, rope_freqs or {})


def _f32(x: float) -> float:
    """A GGUF float32 as the decimal it was written from (1e-5, not 9.999999747378752e-06)."""
    return float(str(np.float32(x)))


def _f32_sqrt(n: int) -> float:
    return float(np.sqrt(np.float32(n)))  # as an f32 multiplier, the way both references compute it


# ---------------------------------------------------------------- Hugging Face config.json

_HF_ARCHS = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama",
             "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Phi3ForCausalLM": "phi3",
             "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
             "SmolLM3ForCausalLM": "smollm3"}


def _from_hf(cls, arch: str, cfg: dict[str, Any]) -> ModelConfig:
    n_heads, dim = int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    n_layers = int(cfg["num_hidden_layers"])
    head_dim = int(cfg.get("head_dim") or dim // n_heads)
    gemma = arch in ("gemma2", "gemma3")
    # transformers 5 keeps RoPE in "rope_parameters" (per layer type for gemma3); 4 at top level.
    params = cfg.get("rope_parameters") or {}
    if "full_attention" in params:
        rope = _hf_rope(params["full_attention"], cfg, head_dim)
        local_rope = _hf_rope(params["sliding_attention"], cfg, head_dim)
    else:
        rope = _hf_rope(params or {"rope_theta": cfg.get("rope_theta", 10000.0),
                                   **(cfg.get("rope_scaling") or {})}, cfg, head_dim)
        local_rope = Rope(float(cfg.get("rope_local_base_freq", 10000.0))) if arch == "gemma3" else None
    window = int(cfg.get("sliding_window") or 0)
    kinds = cfg.get("layer_types")
    if kinds is None:  # transformers 4 wrote no layer_types: each family's fixed pattern
        if arch == "gemma2":
            local = range(0, n_layers, 2)
        elif arch == "gemma3":
            period = int(cfg.get("sliding_window_pattern", 6))
            local = (i for i in range(n_layers) if (i + 1) % period)
        else:  # Mistral and Phi-3 window every layer when sliding_window is set
            local = range(n_layers) if arch in ("llama", "phi3") else ()
    else:
        local = (i for i, kind in enumerate(kinds) if kind == "sliding_attention")
    local = tuple(local) if window else ()
    no_rope: tuple[int, ...] = ()
    if arch == "smollm3":  # no_rope_layers: 1 where q and k are rotated, 0 where not
        interval = int(cfg.get("no_rope_layer_interval", 4))
        flags = cfg.get("no_rope_layers") or [(i + 1) % interval != 0 for i in range(n_layers)]
        no_rope = tuple(i for i, rotated in enumerate(flags) if not rotated)
    pre_attn = cfg.get("query_pre_attn_scalar")
    return cls(
        vocab_size=int(cfg["vocab_size"]), dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads), head_dim=head_dim,
        hidden_dim=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", gemma)), arch=arch, rope=rope,
        qkv_bias=bool(cfg.get("attention_bias", arch == "qwen2")),
        qk_norm=arch in ("qwen3", "gemma3"), post_norms=gemma,
        activation="gelu_tanh" if gemma else "silu",
        embed_scale=_f32_sqrt(dim) if gemma else 1.0,
        attn_scale=float(pre_attn) ** -0.5 if pre_attn and pre_attn != head_dim else 0.0,
        attn_softcap=float(cfg.get("attn_logit_softcapping") or 0.0),
        final_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
        sliding_window=window if local else 0, local_layers=local,
        local_rope=local_rope if local else None, no_rope_layers=no_rope,
    )


def _hf_rope(p: dict[str, Any], cfg: dict[str, Any], head_dim: int) -> Rope:
    """A Rope from a rope_parameters / rope_scaling dict (default, linear, llama3, longrope)."""
    theta = float(p.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    partial = float(p.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    dims = int(head_dim * partial) if partial != 1.0 else 0
    kind = p.get("rope_type") or p.get("type") or "default"
    if kind == "default":
        return Rope(theta, dims)
    if kind == "linear":
        return Rope(theta, dims, (float(p["factor"]),) * ((dims or head_dim) // 2))
    if kind == "llama3":
        return Rope(theta, dims, _llama3_factors(p, dims or head_dim, theta))
    if kind in ("longrope", "su"):
        original = int(p.get("original_max_position_embeddings")
                       or cfg["original_max_position_embeddings"])
        scale = int(cfg.get("max_position_embeddings", original)) / original
        attn = p.get("attention_factor") or (
            math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        return Rope(theta, dims, tuple(map(float, p["short_factor"])),
                    tuple(map(float, p["long_factor"])), original, _f32(attn))
    raise ModelError(f"config.json: RoPE type {kind!r} is not supported "
                     "(default, linear, llama3, longrope)")


def _llama3_factors(p: dict[str, Any], dims: int, theta: float) -> tuple[float, ...]:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between."""
    factor = float(p["factor"])
    low = float(p.get("low_freq_factor", 1.0))
    high = float(p.get("high_freq_factor", 4.0))
    old_ctx = float(p.get("original_max_position_embeddings", 8192))
    factors = []
    for i in range(0, dims, 2):
        wavelen = 2 * math.pi * theta ** (i / dims)
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(factors)


# ---------------------------------------------------------------- GGUF metadata

_GGUF_ARCHS = {"llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "smollm3"}


def _from_gguf(cls, arch: str, meta: dict[str, Any], tensor_names: set[str],
               rope_freqs: dict[str, np.ndarray]) -> ModelConfig:
    """As llama.cpp reads each architecture (src/llama-model.cpp and src/models/ARCH.cpp)."""

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelError(f"GGUF metadata: missing {arch}.{key}")
        return value

    n_heads, dim = int(get("attention.head_count")), int(get("embedding_length"))
    n_layers = int(get("block_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or dim // n_heads)
    rot = int(meta.get(f"{arch}.rope.dimension_count") or head_dim)
    theta = _f32(get("rope.freq_base", 10000.0))
    dims = rot if rot != head_dim else 0

    def factors(key: str) -> tuple[float, ...] | None:
        return tuple(_f32(x) for x in rope_freqs[key]) if key in rope_freqs else None

    if "rope_factors_long.weight" in rope_freqs:  # phi3's LongRoPE
        rope = Rope(theta, dims, factors("rope_factors_short.weight"),
                    factors("rope_factors_long.weight"),
                    int(get("rope.scaling.original_context_length")),
                    _f32(get("rope.scaling.attn_factor", 1.0)))
    elif "rope_freqs.weight" in rope_freqs:  # Llama 3.1's frequency factors, stored as a tensor
        rope = Rope(theta, dims, factors("rope_freqs.weight"))
    elif meta.get(f"{arch}.rope.scaling.type") == "linear":
        rope = Rope(theta, dims, (_f32(get("rope.scaling.factor")),) * ((dims or head_dim) // 2))
    else:
        rope = Rope(theta, dims)
    gemma = arch in ("gemma2", "gemma3")
    window = int(meta.get(f"{arch}.attention.sliding_window") or 0)
    local: tuple[int, ...] = ()
    local_rope = None
    if arch == "gemma2":
        window = window or 4096
        local = tuple(range(0, n_layers, 2))
    elif arch == "gemma3" and window:
        period = int(meta.get(f"{arch}.attention.sliding_window_pattern") or 6)
        local = tuple(i for i in range(n_layers) if i % period < period - 1)
        local_rope = Rope(_f32(get("rope.freq_base_swa", 10000.0)), dims)
    # llama.cpp's Gemma attention scale: 1/sqrt(head_dim), but 1/sqrt(dim / heads) for the 27B
    # models (46 and 62 layers), whose query_pre_attn_scalar is dim / heads.
    big = (arch, n_layers) in (("gemma2", 46), ("gemma3", 62))
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", ()))
    return cls(
        vocab_size=int(vocab), dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)), head_dim=head_dim,
        hidden_dim=int(get("feed_forward_length")),
        norm_eps=_f32(get("attention.layer_norm_rms_epsilon")),
        max_seq_len=int(get("context_length")),
        tie_embeddings=gemma or "output.weight" not in tensor_names, arch=arch, rope=rope,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names, post_norms=gemma,
        activation="gelu_tanh" if gemma else "silu",
        embed_scale=_f32_sqrt(dim) if gemma else 1.0,
        attn_scale=1.0 / math.sqrt(dim / n_heads) if big and dim != n_heads * head_dim else 0.0,
        attn_softcap=_f32(meta.get(f"{arch}.attn_logit_softcapping") or 0.0),
        final_softcap=_f32(meta.get(f"{arch}.final_logit_softcapping") or 0.0),
        sliding_window=window if local else 0, local_layers=local, local_rope=local_rope,
        # llama.cpp: SmolLM3 skips RoPE in every fourth layer (no GGUF key says so)
        no_rope_layers=tuple(range(3, n_layers, 4)) if arch == "smollm3" else (),
    )


@dataclass(frozen=True)
class EngineConfig:
    """What the engine preallocates and how much work one step may do."""

    max_seqs: int = 8  # sequences computed together
    max_seq_len: int = 2048  # context per sequence (capped by the model's)
    max_batch_tokens: int = 512  # tokens per step; longer prompts are computed in chunks
    kv_cache_mb: int = 512  # KV-cache pool; what running sequences do not hold caches prefixes
    block_size: int = 16  # tokens per KV-cache block (the prefix cache's granularity)
    max_draft: int = 8  # drafted tokens per sequence and step (engine.proposer); 0: no drafts

    def __post_init__(self) -> None:
        assert self.max_seqs >= 1 and self.max_seq_len >= 2 and self.max_batch_tokens >= 1
        assert self.kv_cache_mb >= 1 and self.block_size >= 1 and self.max_draft >= 0
