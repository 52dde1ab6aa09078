"""`ember convert MODEL.gguf OUTDIR`: write a GGUF model as a Hugging Face directory.

Owns: `convert_gguf`. Imports: numpy, safetensors, engine, tokenizer. Used by: server.__main__.

The directory holds config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json
(with the chat template) and generation_config.json, and loads back to the same logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from engine import ModelConfig, ModelError, load_model
from engine.loader import GLOBAL_NAMES, LAYER_NAMES
from tokenizer import Tokenizer


def convert_gguf(src: Path, out: Path, quiet: bool = False) -> None:
    cfg, weights = load_model(src, weights="f32")
    if cfg.arch not in ("llama", "qwen2") or cfg.rope.factors is not None:
        raise ModelError(f"{src}: only llama and qwen2 models without RoPE frequency factors can be "
                         f"converted (this is {cfg.arch})")
    tok = Tokenizer.from_path(src)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for ours, (hf_name, _) in GLOBAL_NAMES.items():
        if ours == "output" and cfg.tie_embeddings:
            continue
        tensors[hf_name] = getattr(weights, ours)
    for i, layer in enumerate(tqdm(weights.layers, desc="convert", disable=quiet, leave=False)):
        for ours, (hf_name, _) in LAYER_NAMES.items():
            arr = getattr(layer, ours)
            if arr is not None:
                tensors[hf_name.format(i=i)] = arr
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", hf_config(cfg, tok))
    tok.hf.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "bos_token": tok.bos_token or None,
        "eos_token": tok.eos_token or None,
        "add_bos_token": tok.add_bos,
        "chat_template": tok.chat_template,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    _write_json(out / "generation_config.json", {
        "bos_token_id": tok.bos_id,
        "eos_token_id": sorted(tok.eos_ids),
    })


def hf_config(cfg: ModelConfig, tok: Tokenizer) -> dict:
    arch = "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"
    return {
        "architectures": [arch],
        "model_type": "qwen2" if cfg.qkv_bias else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope.theta,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": cfg.qkv_bias,
        "hidden_act": "silu",
        "bos_token_id": tok.bos_id,
        "eos_token_id": sorted(tok.eos_ids),
        "torch_dtype": "float32",
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
