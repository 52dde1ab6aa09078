"""Shared fixtures: tiny seeded models built in code, and the real default model (pulled once)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import ModelConfig, load_model
from engine.weights import LayerWeights, Weights


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  hidden_dim=48, norm_eps=1e-5, rope_theta=10000.0, max_seq_len=128,
                  tie_embeddings=True)
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_weights(cfg: ModelConfig, seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)

    def mat(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    layers = []
    for _ in range(cfg.n_layers):
        bias = cfg.qkv_bias
        layers.append(LayerWeights(
            attn_norm=1 + mat(cfg.dim, scale=0.1), wq=mat(q, cfg.dim), wk=mat(kv, cfg.dim),
            wv=mat(kv, cfg.dim), wo=mat(cfg.dim, q), ffn_norm=1 + mat(cfg.dim, scale=0.1),
            w1=mat(cfg.hidden_dim, cfg.dim), w2=mat(cfg.dim, cfg.hidden_dim),
            w3=mat(cfg.hidden_dim, cfg.dim), bq=mat(q) if bias else None,
            bk=mat(kv) if bias else None, bv=mat(kv) if bias else None))
    emb = mat(cfg.vocab_size, cfg.dim, scale=1.0)
    out = emb if cfg.tie_embeddings else mat(cfg.vocab_size, cfg.dim)
    return Weights(tok_embeddings=emb, layers=layers, norm=1 + mat(cfg.dim, scale=0.1), output=out)


@pytest.fixture
def tiny():
    cfg = tiny_config()
    return cfg, tiny_weights(cfg)


@pytest.fixture(scope="session")
def default_model_path(tmp_path_factory):
    """The default model's GGUF, pulled into $EMBER_HOME on first use (as `ember pull` does)."""
    from server.models import ember_home, pull

    return pull(ember_home(), quiet=True)


@pytest.fixture(scope="session")
def smol(default_model_path):
    """(ModelConfig, Weights, Tokenizer) of the default model, loaded once per test session."""
    from tokenizer import Tokenizer

    cfg, weights = load_model(default_model_path)
    return cfg, weights, Tokenizer.from_path(default_model_path)
