"""Every tensor type on blocks that llama.cpp's own quantizer wrote (tests/golden/quant/, made by
tests/golden/make_quant_golden.py): a tiny random-weight model whose widths are multiples of 256,
in twelve file types that together hold every format Ember reads, the embedding and the output
head included. Each format's NumPy reference equals the `gguf` package's dequantizer on these
blocks, each kernel its reference; the model run on its blocks gives the logits of an f32 model
built from the `gguf` package's dequantization of the same file; and the invariants of the
engine (a row's bits alone or in a batch, prefill then decode, a cached prefix) hold per file."""

from pathlib import Path

import gguf
import numpy as np
import pytest

from engine import Engine, EngineConfig, SamplingParams, load_model
from engine.gguf_file import GGUFFile
from engine.loader import load_gguf_reference
from engine.model import Transformer, forward
from engine.weights import QuantMatrix, dequantize
from kernels import dequantize_rows, qmatmul_rows
from kernels.formats import FORMATS, QUANTIZED
from tests.conftest import SlotCache

FILES = sorted((Path(__file__).parent / "golden" / "quant").glob("tiny-*.gguf"))
IDS = [int(x) for x in np.random.default_rng(0).integers(0, 256, 40)]


def test_the_files_hold_every_quantized_format():
    kinds = {t.kind for f in FILES for t in GGUFFile(f).tensors.values()}
    assert set(QUANTIZED) <= kinds


@pytest.fixture(scope="module", params=FILES, ids=lambda p: p.stem)
def model_file(request):
    return request.param


def test_references_equal_gguf_and_kernels_equal_references(model_file):
    reader = gguf.GGUFReader(str(model_file))
    ours = GGUFFile(model_file)
    for t in reader.tensors:
        kind = ours.tensors[t.name].kind
        if kind not in QUANTIZED:
            continue
        data = ours.tensors[t.name].data
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(data.shape[0], -1)
        mine = FORMATS[kind].dequantize(data)
        assert np.array_equal(mine, ref), (t.name, kind)
        out = np.empty_like(mine)
        dequantize_rows(np.ascontiguousarray(data), kind, np.arange(len(mine)), out)
        assert np.array_equal(out, mine), (t.name, kind)
        x = np.random.default_rng(1).standard_normal((3, mine.shape[1])).astype(np.float32)
        got = np.empty((3, len(mine)), np.float32)
        qmatmul_rows(x, np.ascontiguousarray(data), kind, got)
        np.testing.assert_allclose(got, x.astype(np.float64) @ mine.T.astype(np.float64),
                                   rtol=1e-4, atol=1e-4 * np.abs(got).max())


def _gguf_reference_weights(path: Path, cfg):
    ref_cfg, weights = load_gguf_reference(path)
    assert ref_cfg == cfg
    return weights


def _logits(cfg, weights, ids):
    slots = SlotCache(cfg, 1, 64)
    return forward(Transformer(cfg, weights, 64), slots.cache, slots.batch([(ids, 0, 0)], all_logits=True))


def test_logits_on_the_blocks_match_an_f32_model_of_the_same_file(model_file):
    cfg, weights = load_model(model_file)
    assert any(isinstance(m, QuantMatrix) for m in (weights.layers[0].wq, weights.output))
    got = _logits(cfg, weights, IDS)
    ref = _logits(cfg, _gguf_reference_weights(model_file, cfg), IDS)
    err = np.abs(got - ref).max()
    assert err <= 1e-3 * np.abs(ref).max(), f"max |delta| {err} vs max |logit| {np.abs(ref).max()}"
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=64))
    greedy = list(engine.generate(IDS[:8], SamplingParams(temperature=0, max_tokens=16)))
    ref_engine = Engine(cfg, _gguf_reference_weights(model_file, cfg), EngineConfig(max_seqs=1, max_seq_len=64))
    assert greedy == list(ref_engine.generate(IDS[:8], SamplingParams(temperature=0, max_tokens=16)))


def test_a_row_has_the_same_bits_alone_in_a_batch_and_after_a_cached_prefix(model_file):
    cfg, weights = load_model(model_file)
    model = Transformer(cfg, weights, 64)
    slots = SlotCache(cfg, 4, 64)
    seqs = [IDS[:24], IDS[5:9], IDS[10:40]]
    alone = [forward(model, slots.cache, slots.batch([(s, 0, 0)], all_logits=True)) for s in seqs]
    packed = forward(model, slots.cache, slots.batch([(s, 0, i + 1) for i, s in enumerate(seqs)],
                                                     all_logits=True))
    assert np.array_equal(packed, np.concatenate(alone))
    # the first 16 tokens already in the cache (a prefix hit), then the rest, then one decode step
    forward(model, slots.cache, slots.batch([(IDS[:16], 0, 3)]))
    rest = forward(model, slots.cache, slots.batch([(IDS[16:24], 16, 3)], all_logits=True))
    assert np.array_equal(rest, alone[0][16:24])
    assert np.array_equal(dequantize(weights.tok_embeddings, np.array(IDS[:3])),
                          _gguf_reference_weights(model_file, cfg).tok_embeddings[IDS[:3]])
