"""The architectures beside llama and qwen2 against transformers' own implementations.

Golden data (tests/golden/arch/, made by tests/golden/make_arch_golden.py in a throw-away venv):
for each of qwen3, phi3 (plain and with LongRoPE), gemma2, gemma3 and smollm3 a tiny random-weight
model, as a Hugging Face directory and as a GGUF file in llama.cpp's layout for it, with
transformers' logits at every position of a 48-token prompt (longer than every sliding window and
than the LongRoPE model's original context) and its 16-token greedy continuation. Both files must
give those logits and that continuation; the forward-pass invariants must hold too.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from engine import Engine, EngineConfig, ModelConfig, SamplingParams, load_model
from engine.model import Transformer, forward
from tests.conftest import SlotCache

ARCH = Path(__file__).parent / "golden" / "arch"
NAMES = ["qwen3", "phi3", "phi3-longrope", "gemma2", "gemma3", "smollm3"]
SOURCES = ["gguf", "hf"]


def golden(name: str) -> dict:
    return json.loads((ARCH / f"{name}.json").read_text(encoding="utf-8"))


def unpack(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), "<f4").reshape(d["shape"])


_models: dict = {}


def model(name: str, source: str):
    if (name, source) not in _models:
        _models[name, source] = load_model(ARCH / (f"{name}.gguf" if source == "gguf" else f"{name}-hf"))
    return _models[name, source]


def logits_of(cfg: ModelConfig, weights, ids: list[int], context: int) -> np.ndarray:
    slots = SlotCache(cfg, 1, context)
    return forward(Transformer(cfg, weights, context), slots.cache,
                   slots.batch([(ids, 0, 0)], all_logits=True))


def assert_close(got: np.ndarray, ref: np.ndarray, tolerance: float = 1e-3) -> None:
    """The golden tolerance: within 1e-3 of the largest |logit|, and the same argmax."""
    err = np.abs(got - ref).max()
    assert err <= tolerance * np.abs(ref).max(), f"max |delta| {err} vs max |logit| {np.abs(ref).max()}"
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def assert_matches(got: np.ndarray, case: dict) -> None:
    """Against transformers with keys and values rounded to f16 where they enter attention (what
    Ember's f16 KV cache holds): the golden tolerance. Against plain float32 transformers: these
    random tiny models turn the cache's rounding alone into up to 2.3e-3 of the logits' range
    (llama.cpp with its default f16 cache: 0.7e-3 to 2.3e-3 on the same files), so 3e-3."""
    assert_close(got, unpack(case["logits_f16_kv"]))
    assert_close(got, unpack(case["logits"]), 3e-3)


def test_both_files_describe_the_same_model():
    for name in NAMES:
        (a, _), (b, _) = model(name, "gguf"), model(name, "hf")
        assert a == b, name
        assert a.arch == name.split("-")[0]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name, source):
    cfg, weights = model(name, source)
    data = golden(name)
    assert_matches(logits_of(cfg, weights, data["input_ids"], cfg.max_seq_len), data)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", NAMES)
def test_greedy_continuation_matches_transformers(name, source):
    cfg, weights = model(name, source)
    data = golden(name)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=cfg.max_seq_len))
    params = SamplingParams(temperature=0, max_tokens=len(data["greedy"]), ignore_eos=True)
    assert list(engine.generate(data["input_ids"], params, "g")) == data["greedy"]


@pytest.mark.parametrize("source", SOURCES)
def test_longrope_short_factors_within_the_original_context(source):
    """A context no longer than the original one rotates by the short factors (llama.cpp's rule,
    and transformers' for a sequence that stays inside it)."""
    cfg, weights = model("phi3-longrope", source)
    short = golden("phi3-longrope")["short"]
    context = cfg.rope.original_context
    assert_matches(logits_of(cfg, weights, short["input_ids"], context), short)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=context))
    params = SamplingParams(temperature=0, max_tokens=len(short["greedy"]), ignore_eos=True)
    assert list(engine.generate(short["input_ids"], params, "s")) == short["greedy"]


@pytest.mark.parametrize("name", NAMES)
def test_prefill_then_decode_equals_one_forward(name):
    """Sliding windows included: the prompt is longer than every window, so decoding steps read
    a window that starts inside the cache."""
    cfg, weights = model(name, "gguf")
    ids = golden(name)["input_ids"]
    context = cfg.max_seq_len
    full = logits_of(cfg, weights, ids, context)
    m, slots = Transformer(cfg, weights, context), SlotCache(cfg, 1, context)
    steps = [forward(m, slots.cache, slots.batch([(ids[:20], 0, 0)], all_logits=True))]
    for p in range(20, len(ids)):
        steps.append(forward(m, slots.cache, slots.batch([([ids[p]], p, 0)])))
    np.testing.assert_allclose(np.concatenate(steps), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_packed_batch_gives_the_same_bits_as_alone(name):
    cfg, weights = model(name, "gguf")
    ids = golden(name)["input_ids"]
    context = cfg.max_seq_len
    seqs = [ids, ids[5:30], ids[:9]]
    m = Transformer(cfg, weights, context)
    alone = []
    for s in seqs:
        slots = SlotCache(cfg, 1, context)
        alone.append(forward(m, slots.cache, slots.batch([(s, 0, 0)], all_logits=True)))
    slots = SlotCache(cfg, 3, context)
    packed = forward(m, slots.cache, slots.batch([(s, 0, i) for i, s in enumerate(seqs)],
                                                 all_logits=True))
    assert np.array_equal(packed, np.concatenate(alone))


def q8_copy(src: Path, dst: Path) -> None:
    """src with its matrices quantized to Q8_0 by the gguf package (metadata as it was)."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        values = np.asarray(t.data, np.float32).reshape([int(x) for x in reversed(t.shape)])
        if values.ndim == 2 and not t.name.startswith("rope_"):
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(t.name, gguf.quants.quantize(values, q8), raw_dtype=q8)
        else:
            w.add_tensor(t.name, values)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("name", NAMES)
def test_quantized_file_reads_its_blocks_in_place(tmp_path, name):
    """A Q8_0 file of each architecture: fused rows (phi3) split as blocks, permuted q/k rows
    (smollm3) put back, and the same model as the f32 file dequantized by the gguf package."""
    from engine.loader import load_gguf_reference
    from engine.weights import QuantMatrix

    q8_copy(ARCH / f"{name}.gguf", tmp_path / "q8.gguf")
    cfg, weights = load_model(tmp_path / "q8.gguf")
    ref_cfg, ref = load_gguf_reference(tmp_path / "q8.gguf")
    assert cfg == ref_cfg == model(name, "gguf")[0]
    assert isinstance(weights.layers[0].wq, QuantMatrix) and isinstance(weights.layers[0].w3, QuantMatrix)
    ids = golden(name)["input_ids"]
    assert_close(logits_of(cfg, weights, ids, cfg.max_seq_len),
                 logits_of(ref_cfg, ref, ids, cfg.max_seq_len), 1e-4)


def test_what_is_refused_is_named(tmp_path):
    import shutil

    from engine import ModelError
    from engine.gguf_file import GGUFFile

    file = GGUFFile(ARCH / "qwen3.gguf")
    file.metadata["general.architecture"] = "mamba"
    with pytest.raises(ModelError, match=r"qwen3\.gguf: GGUF architecture 'mamba' is not supported "
                                         r"\(supported: gemma2, gemma3, llama, phi3, qwen2, qwen3, smollm3\)"):
        load_model(ARCH / "qwen3.gguf", file)
    hf = tmp_path / "gemma3"
    shutil.copytree(ARCH / "gemma3-hf", hf)
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "architectures": ["Gemma3ForConditionalGeneration"]}))
    with pytest.raises(ModelError, match="architecture 'Gemma3ForConditionalGeneration' is not supported"):
        load_model(hf)
    (hf / "config.json").write_text(json.dumps({**config, "rope_parameters": {
        "full_attention": {"rope_type": "yarn", "factor": 2.0}, "sliding_attention": {}}}))
    with pytest.raises(ModelError, match="RoPE type 'yarn' is not supported"):
        load_model(hf)
