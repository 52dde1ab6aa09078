"""Make GGUF files whose blocks llama.cpp's own quantizer wrote: the golden data of the weight
formats (tests/test_quant_golden.py), and the bigger files the benchmarks use.

Not part of the test suite and never imported by it. Run it in a throw-away virtual environment
with llama-cpp-python (it compiles llama.cpp, about 5-20 minutes), gguf and numpy:

    python -m venv /tmp/q && /tmp/q/bin/pip install llama-cpp-python gguf numpy
    /tmp/q/bin/python tests/golden/make_quant_golden.py tiny
        # -> tests/golden/quant/tiny-TYPE.gguf, a few hundred KB each (committed)
    /tmp/q/bin/python tests/golden/make_quant_golden.py default ~/.cache/ember/models/SmolLM2-135M-Instruct.Q4_1.gguf OUTDIR
        # -> OUTDIR/SmolLM2-135M-Instruct-TYPE.gguf (too big to commit)
    /tmp/q/bin/python tests/golden/make_quant_golden.py 1b OUTDIR
        # -> OUTDIR/llama-1b-shape-TYPE.gguf: random weights in Llama 3.2 1B's shape

`tiny`: a random-weight llama model whose widths are multiples of 256 (so that every matrix,
the embedding and the output head included, gets K-quant blocks), written as F32 with the `gguf`
package, then quantized by llama.cpp to each file type; together the files hold every tensor
type Ember reads. `default`: the default model dequantized to F32 (lossless: F32 holds every
value a Q4_1 or Q8_0 block can) and quantized by llama.cpp. `1b`: Llama 3.2 1B's shape, random
weights, for bandwidth-bound benchmarks.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import gguf
import numpy as np

HERE = Path(__file__).parent
FILE_TYPES = {  # llama.cpp file type -> the tensor types it brings in
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1", "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1", "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS", "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
DEFAULT_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "IQ4_NL", "Q5_1")
BENCH_1B_TYPES = ("Q4_K_M", "Q8_0")


def quantize(src: Path, dst: Path, file_type: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FILE_TYPES[file_type])
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)):
        raise SystemExit(f"llama.cpp could not quantize {src} to {file_type}")
    print(dst, dst.stat().st_size, "bytes")


def write_llama(path: Path, dims: dict, tensors: dict[str, np.ndarray], meta: dict) -> None:
    """An F32 llama GGUF: the hyperparameters, a tokenizer (from meta) and the tensors."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(dims["n_layers"])
    w.add_context_length(dims["context"])
    w.add_embedding_length(dims["dim"])
    w.add_feed_forward_length(dims["hidden"])
    w.add_head_count(dims["n_heads"])
    w.add_head_count_kv(dims["n_kv_heads"])
    w.add_rope_freq_base(dims.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(dims["vocab"])
    for key, (kind, value) in meta.items():
        getattr(w, f"add_{kind}")(key, value) if kind in ("uint32", "string", "bool") else \
            w.add_array(key, value)
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def byte_tokenizer(vocab: int) -> dict:
    """A GPT-2 style vocabulary: the 256 byte pieces, then filler tokens up to `vocab`."""
    from gguf.vocab import SpecialVocab  # noqa: F401  (checks the package has the vocab tools)

    alphabet = [chr(c) for c in range(ord("!"), ord("~") + 1)] + \
        [chr(c) for c in range(ord("¡"), ord("¬") + 1)] + [chr(c) for c in range(ord("®"), ord("ÿ") + 1)]
    extra = [chr(256 + i) for i in range(256 - len(alphabet))]
    tokens = alphabet + extra + [f"<filler{i}>" for i in range(vocab - 256)]
    types = [1] * 256 + [3] * (vocab - 256)
    return {"tokenizer.ggml.model": ("string", "gpt2"), "tokenizer.ggml.pre": ("string", "gpt-2"),
            "tokenizer.ggml.tokens": ("array", tokens), "tokenizer.ggml.token_type": ("array", types),
            "tokenizer.ggml.merges": ("array", ["Ġ Ġ"]),
            "tokenizer.ggml.bos_token_id": ("uint32", 0), "tokenizer.ggml.eos_token_id": ("uint32", 1)}


def random_llama(dims: dict, seed: int) -> dict[str, np.ndarray]:
    """Random weights in GGUF names and layout (the q/k rows as llama.cpp stores them)."""
    rng = np.random.default_rng(seed)
    c, f, v = dims["dim"], dims["hidden"], dims["vocab"]
    d = c // dims["n_heads"]
    q, kv = dims["n_heads"] * d, dims["n_kv_heads"] * d

    def mat(rows, cols, scale=None):
        return rng.standard_normal((rows, cols), np.float32) * np.float32(scale or cols ** -0.5)

    out = {"token_embd.weight": mat(v, c, 1.0), "output_norm.weight": 1 + 0.1 * rng.standard_normal(c, np.float32),
           "output.weight": mat(v, c)}
    for i in range(dims["n_layers"]):
        out.update({
            f"blk.{i}.attn_norm.weight": 1 + 0.1 * rng.standard_normal(c, np.float32),
            f"blk.{i}.attn_q.weight": mat(q, c), f"blk.{i}.attn_k.weight": mat(kv, c),
            f"blk.{i}.attn_v.weight": mat(kv, c), f"blk.{i}.attn_output.weight": mat(c, q),
            f"blk.{i}.ffn_norm.weight": 1 + 0.1 * rng.standard_normal(c, np.float32),
            f"blk.{i}.ffn_gate.weight": mat(f, c), f"blk.{i}.ffn_up.weight": mat(f, c),
            f"blk.{i}.ffn_down.weight": mat(c, f)})
    return out


TINY = {"n_layers": 1, "dim": 256, "hidden": 256, "n_heads": 4, "n_kv_heads": 2, "vocab": 256,
        "context": 256}
LLAMA_1B = {"n_layers": 16, "dim": 2048, "hidden": 8192, "n_heads": 32, "n_kv_heads": 8,
            "vocab": 128256, "context": 2048, "rope_theta": 500000.0}


def make_tiny() -> None:
    out = HERE / "quant"
    out.mkdir(exist_ok=True)
    src = out / "tiny-F32.gguf.tmp"
    write_llama(src, TINY, random_llama(TINY, 0), byte_tokenizer(TINY["vocab"]))
    for file_type in FILE_TYPES:
        quantize(src, out / f"tiny-{file_type}.gguf", file_type)
    src.unlink()


def make_default(model: Path, outdir: Path) -> None:
    """The default model as F32 (every tensor dequantized by the gguf package), then each type."""
    outdir.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(model))
    src = outdir / f"{model.stem.split('.')[0]}-F32.gguf"
    w = gguf.GGUFWriter(str(src), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key == "general.file_type":
            continue
        value, kind = field.contents(), field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, kind, sub_type=field.types[-1])
        else:
            w.add_key_value(key, value, kind)
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, values.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for file_type in DEFAULT_TYPES:
        quantize(src, outdir / f"{model.stem.split('.')[0]}-{file_type}.gguf", file_type)


def make_1b(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    src = outdir / "llama-1b-shape-F32.gguf"
    meta = {"tokenizer.ggml.model": ("string", "none")}
    write_llama(src, LLAMA_1B, random_llama(LLAMA_1B, 1), meta)
    for file_type in BENCH_1B_TYPES:
        quantize(src, outdir / f"llama-1b-shape-{file_type}.gguf", file_type)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    if what == "tiny":
        make_tiny()
    elif what == "default":
        make_default(Path(sys.argv[2]).expanduser(), Path(sys.argv[3]))
    elif what == "1b":
        make_1b(Path(sys.argv[2]))
    else:
        raise SystemExit(__doc__)
