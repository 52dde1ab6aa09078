"""Loading: Hugging Face directories (safetensors f32/f16/bf16) and GGUF files (F32, F16, Q8_0,
Q4_0, Q4_1) give the same `Weights`, and bad files give clear errors."""

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import save_file

from engine import ModelConfig, ModelError, load_model
from engine.loader import GLOBAL_NAMES, LAYER_NAMES, read_safetensors
from engine.weights import QuantMatrix, dequantize
from tests.conftest import tiny_config, tiny_weights


def _named(cfg, w, column):
    """Weights under their Hugging Face (column 0) or GGUF (column 1) names."""
    out = {}
    for ours, names in GLOBAL_NAMES.items():
        if not (ours == "output" and cfg.tie_embeddings):
            out[names[column]] = getattr(w, ours)
    for i, layer in enumerate(w.layers):
        for ours, names in LAYER_NAMES.items():
            if getattr(layer, ours) is not None:
                out[names[column].format(i=i)] = getattr(layer, ours)
    return out


def _hf_config(cfg, **extra):
    return {"architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[cfg.arch]],
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope.theta, "max_position_embeddings": cfg.max_seq_len,
            "tie_word_embeddings": cfg.tie_embeddings, **extra}


def _assert_same(a, b, rtol=0.0, atol=0.0):
    for name in ("tok_embeddings", "norm", "output"):
        np.testing.assert_allclose(dequantize(getattr(a, name)), dequantize(getattr(b, name)),
                                   rtol=rtol, atol=atol)
    for la, lb in zip(a.layers, b.layers):
        for name in LAYER_NAMES:
            x, y = getattr(la, name), getattr(lb, name)
            assert (x is None) == (y is None), name
            if x is not None:
                np.testing.assert_allclose(dequantize(x), dequantize(y), rtol=rtol, atol=atol,
                                           err_msg=name)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("overrides", [{}, {"arch": "qwen2", "qkv_bias": True, "tie_embeddings": False}])
def test_hf_directory_round_trip(tmp_path, dtype, overrides):
    cfg = tiny_config(**overrides)
    w = tiny_weights(cfg)
    tensors = _named(cfg, w, 0)
    if dtype == "F16":
        tensors = {k: v.astype(np.float16) for k, v in tensors.items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    if dtype == "BF16":  # numpy has no bfloat16: rewrite the header and keep the top 16 bits
        _rewrite_as_bf16(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(cfg)))
    cfg2, w2 = load_model(tmp_path)
    assert cfg2 == cfg
    tol = {"F32": 0, "F16": 2e-3, "BF16": 1e-2}[dtype]
    _assert_same(w2, w, rtol=tol, atol=tol)


def _rewrite_as_bf16(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = (np.ascontiguousarray(arr, np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    assert read_safetensors(path)["model.norm.weight"].dtype == np.float32


def _permute(w, n_heads):
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (rotate-half -> interleaved)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, cfg, w, qtype):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope.theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    expected = {}
    for name, arr in _named(cfg, w, 1).items():
        if ".attn_q." in name:
            arr = _permute(arr, cfg.n_heads)
        elif ".attn_k." in name:
            arr = _permute(arr, cfg.n_kv_heads)
        if arr.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(arr, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
        else:
            writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_loads_the_same_weights(tmp_path, qtype):
    cfg = tiny_config(vocab_size=64, dim=32, hidden_dim=64, head_dim=8)
    w = tiny_weights(cfg)
    t = gguf.GGMLQuantizationType[qtype]
    _write_gguf(tmp_path / "m.gguf", cfg, w, t)
    cfg2, w2 = load_model(tmp_path / "m.gguf")
    assert cfg2 == cfg
    if qtype == "F32":
        _assert_same(w2, w)  # exact: the q/k permutation is undone
        return

    def roundtrip(a):  # what the format can represent of a matrix
        return gguf.quants.dequantize(gguf.quants.quantize(a, t), t) if a.ndim == 2 else a

    assert np.array_equal(dequantize(w2.layers[1].wq), roundtrip(w.layers[1].wq))
    assert np.array_equal(dequantize(w2.layers[0].w2), roundtrip(w.layers[0].w2))
    _assert_same(w2, w, atol={"F16": 2e-3, "BF16": 2e-2, "Q8_0": 0.03}.get(qtype, 0.4))  # 4 bits: ~max|w|/8
    if qtype not in ("F16", "BF16"):  # blocks stay blocks, in the file's memory map (q/k rows are reordered)
        assert isinstance(w2.layers[0].w2, QuantMatrix) and w2.layers[0].w2.fmt == qtype
        assert isinstance(w2.layers[0].w2.data.base, np.memmap)
        assert w2.output is w2.tok_embeddings
    _, w3 = load_model(tmp_path / "m.gguf", weights="f32")  # the reference path: all f32
    assert all(isinstance(m, np.ndarray) and m.dtype == np.float32
               for m in (w3.tok_embeddings, w3.layers[0].wq, w3.layers[1].w2))
    _assert_same(w3, w2)


def test_weights_q8_0_quantizes_a_float_checkpoint_at_load(tmp_path):
    cfg = tiny_config(vocab_size=64, dim=32, hidden_dim=64, head_dim=8)
    w = tiny_weights(cfg)
    save_file(_named(cfg, w, 0), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_hf_config(cfg)))
    _, wq = load_model(tmp_path, weights="q8_0")
    for m, ref in ((wq.layers[0].w1, w.layers[0].w1), (wq.tok_embeddings, w.tok_embeddings)):
        assert isinstance(m, QuantMatrix) and m.fmt == "Q8_0"
        assert m.data.tobytes() == gguf.quants.quantize(ref, gguf.GGMLQuantizationType.Q8_0).tobytes()
    assert wq.output is wq.tok_embeddings
    assert isinstance(wq.norm, np.ndarray) and wq.norm.dtype == np.float32
    with pytest.raises(ModelError, match="weights 'q3'"):
        load_model(tmp_path, weights="q3")


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="not a .gguf file or a Hugging Face"):
        load_model(tmp_path / "missing.bin")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="not a readable GGUF"):
        load_model(tmp_path / "junk.gguf")
    d = tmp_path / "hf"
    d.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(d)
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelError, match="GPT2LMHeadModel.*not supported"):
        load_model(d)
    cfg = tiny_config()
    (d / "config.json").write_text(json.dumps(_hf_config(cfg)))
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        load_model(d)
    tensors = _named(cfg, tiny_weights(cfg), 0)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(ModelError, match="up_proj.weight' is missing"):
        load_model(d)


def test_llama3_rope_scaling_and_config_checks():
    base = _hf_config(tiny_config(head_dim=8))
    cfg = ModelConfig.from_hf({**base, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}})
    f = np.asarray(cfg.rope.factors)
    assert f[0] == 1.0 and f[-1] == 8.0 and np.all(np.diff(f) >= 0)  # high freqs kept, low scaled
    cos, sin = cfg.rope.tables(cfg.head_dim, 64)
    plain_cos, plain_sin = ModelConfig.from_hf(base).rope.tables(cfg.head_dim, 64)
    angle, plain = np.arctan2(sin[1], cos[1]), np.arctan2(plain_sin[1], plain_cos[1])  # position 1
    np.testing.assert_allclose(angle, plain / f, rtol=1e-6)
    with pytest.raises(ModelError, match="RoPE type 'yarn'"):
        ModelConfig.from_hf({**base, "rope_scaling": {"type": "yarn", "factor": 2.0}})
    with pytest.raises(ModelError, match="missing field 'hidden_size'"):
        ModelConfig.from_hf({k: v for k, v in base.items() if k != "hidden_size"})


@pytest.mark.model
def test_gguf_file_reads_what_the_gguf_package_reads(default_model_path):
    """Our memory-mapped reader (fast start-up) against the reference reader, on the default
    model: every metadata value, and every tensor's type, shape and bytes."""
    from engine.gguf_file import GGUFFile

    ours = GGUFFile(default_model_path)
    ref = gguf.GGUFReader(str(default_model_path))
    assert ours.metadata.keys() == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key in ours.metadata:
        assert ours.metadata[key] == ref.fields[key].contents(), key
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.kind == t.tensor_type.name
        assert np.array_equal(mine.data.reshape(-1).view(np.uint8), np.asarray(t.data).reshape(-1).view(np.uint8))


def test_gguf_file_rejects_truncated_and_foreign_files(tmp_path):
    from engine.gguf_file import GGUFFile

    cfg = tiny_config(vocab_size=64, dim=32, hidden_dim=64, head_dim=8)
    _write_gguf(tmp_path / "m.gguf", cfg, tiny_weights(cfg), gguf.GGMLQuantizationType.Q4_1)
    data = (tmp_path / "m.gguf").read_bytes()
    for name, blob, message in [
            ("cut.gguf", data[:len(data) - 100], r"tensor \S+ runs past the end of the file"),
            ("head.gguf", data[:200], "the GGUF header is cut off at byte"),
            ("v9.gguf", data[:4] + (9).to_bytes(4, "little") + data[8:], "GGUF version 9 is not supported"),
            ("text.gguf", b"hello", "not a readable GGUF file"), ("empty.gguf", b"", "not a readable GGUF file")]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelError, match=message) as e:
            GGUFFile(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)


def test_unsupported_gguf_types_are_all_named_with_their_tensors(tmp_path):
    """One message naming every type Ember cannot read and where it is, and what to do."""
    cfg = tiny_config(vocab_size=64, dim=32, hidden_dim=64, head_dim=8)
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    for i, (name, qtype) in enumerate([("blk.0.attn_q.weight", "Q8_1"), ("blk.0.attn_k.weight", "Q8_1"),
                                       ("blk.1.attn_q.weight", "Q8_1"), ("blk.1.attn_k.weight", "Q8_1"),
                                       ("blk.0.ffn_up.weight", "MXFP4"), ("token_embd.weight", "Q4_0")]):
        t = gguf.GGMLQuantizationType[qtype]
        per_block, block_bytes = gguf.GGML_QUANT_SIZES[t]
        raw = np.random.default_rng(i).integers(0, 256, (cfg.dim, cfg.dim // per_block * block_bytes),
                                                dtype=np.uint8)
        writer.add_tensor(name, raw, raw_dtype=t)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError) as e:
        load_model(tmp_path / "m.gguf")
    message = str(e.value)
    assert "Q8_1 (blk.0.attn_q.weight, blk.0.attn_k.weight, blk.1.attn_q.weight and 1 more)" in message
    assert "MXFP4 (blk.0.ffn_up.weight)" in message and "token_embd" not in message
    assert "Q4_K" in message and "llama-quantize --allow-requantize m.gguf" in message
    assert "not a readable" not in message and "\n" not in message


def test_a_wrong_shaped_tensor_is_one_clear_line(tmp_path):
    cfg = tiny_config(vocab_size=64, dim=32, hidden_dim=64, head_dim=8)
    w = tiny_weights(cfg)
    w.layers[1].w2 = w.layers[1].w2[:, :32]  # (C, F) cut to (C, 32)
    _write_gguf(tmp_path / "m.gguf", cfg, w, gguf.GGMLQuantizationType.Q8_0)
    with pytest.raises(ModelError, match=r"^layer 1 w2: shape \(32, 32\), expected \(32, 64\)$"):
        load_model(tmp_path / "m.gguf")
