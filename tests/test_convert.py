"""`ember convert` on the default model: the Hugging Face directory loads back to the same logits,
so both loader paths are exercised on real weights."""

import json

import numpy as np
import pytest

from engine import load_model
from engine.model import Transformer, forward
from tests.conftest import SlotCache
from server.__main__ import main
from tokenizer import Tokenizer

pytestmark = pytest.mark.model


def _logits(path, ids):
    cfg, w = load_model(path, weights="f32")  # the GGUF's blocks dequantized, as convert writes them
    return forward(Transformer(cfg, w, 64), *_slot(cfg, 64, ids))[0]


def test_convert_round_trip(default_model_path, tmp_path, capsys):
    out = tmp_path / "smollm2-hf"
    assert main(["convert", str(default_model_path), str(out)]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"]
    assert config["rms_norm_eps"] == 1e-5

    a, b = Tokenizer.from_path(default_model_path), Tokenizer.from_path(out)
    assert a.chat_template == b.chat_template and a.eos_ids == b.eos_ids and a.bos_id == b.bos_id
    text = "<|im_start|>user\nConvert 1234 things, café 🙂<|im_end|>\n<|im_start|>assistant\n"
    ids = a.encode(text)
    assert b.encode(text) == ids
    np.testing.assert_array_equal(_logits(out, ids), _logits(default_model_path, ids))


def _slot(cfg, max_len, ids):
    slots = SlotCache(cfg, 1, max_len)
    return slots.cache, slots.batch([(ids, 0, 0)])
