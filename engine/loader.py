"""Reading a model from disk: a GGUF file or a Hugging Face directory, into `ModelConfig` and
`Weights` in our names.

Owns: `load_model`, `load_gguf_reference`, `read_safetensors`, the HF/GGUF name tables.
Imports: numpy, engine.{config,gguf_file,weights}, kernels.{formats,quant}. Used by: server (CLI), tests, bench.

Both paths produce the same `Weights`: matrices (out, in), query/key rows in rotate-half order,
Phi-3's fused qkv and gate/up matrices split into their parts (row ranges: views, blocks
included), Gemma's norm weights as the 1 + w its RMSNorm multiplies by (GGUF files store them so).
`weights` picks what a matrix is in memory:
  "auto"  GGUF quantized matrices (every format of kernels.formats) stay blocks, viewed in the
          file's memory map (only query/key rows, reordered, are copied); F32 / F16 / BF16 ones
          become f32.
  "q8_0"  as auto, and float matrices are quantized to Q8_0 at load (a quarter of f32's bytes).
  "f32"   every matrix dequantized to f32: the reference path.
Norms and biases are always f32. Safetensors F32, F16 and BF16 are read through a memory map.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from engine.config import ModelConfig, ModelError
from engine.gguf_file import GGUFFile, GGUFTensor
from engine.weights import LayerWeights, Matrix, QuantMatrix, Weights, dequantize
from kernels.formats import FORMATS, QUANTIZED
from kernels.quant import QK, quantize_q8_0

# our name -> (Hugging Face name, GGUF name); "{i}" is the layer index.
GLOBAL_NAMES = {
    "tok_embeddings": ("model.embed_tokens.weight", "token_embd.weight"),
    "norm": ("model.norm.weight", "output_norm.weight"),
    "output": ("lm_head.weight", "output.weight"),
}
LAYER_NAMES = {
    "attn_norm": ("model.layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight"),
    "wq": ("model.layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight"),
    "wk": ("model.layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight"),
    "wv": ("model.layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight"),
    "wo": ("model.layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight"),
    "bq": ("model.layers.{i}.self_attn.q_proj.bias", "blk.{i}.attn_q.bias"),
    "bk": ("model.layers.{i}.self_attn.k_proj.bias", "blk.{i}.attn_k.bias"),
    "bv": ("model.layers.{i}.self_attn.v_proj.bias", "blk.{i}.attn_v.bias"),
    "ffn_norm": ("model.layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight"),
    "w1": ("model.layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
    "w2": ("model.layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
    "w3": ("model.layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
    "q_norm": ("model.layers.{i}.self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight"),
    "k_norm": ("model.layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight"),
    "post_attn_norm": ("model.layers.{i}.post_attention_layernorm.weight",
                       "blk.{i}.post_attention_norm.weight"),
    "post_ffn_norm": ("model.layers.{i}.post_feedforward_layernorm.weight",
                      "blk.{i}.post_ffw_norm.weight"),
}
HF, GGUF = 0, 1  # which of a name pair
# Gemma's Hugging Face names: its post_attention_layernorm follows attention (our post_attn_norm),
# and the FFN's input norm is pre_feedforward_layernorm.
_GEMMA_HF_FFN_NORM = "model.layers.{i}.pre_feedforward_layernorm.weight"
# Phi-3 keeps q, k, v in one matrix and the FFN's gate and up in another: their names, and which
# of our matrices each holds, in row order.
_FUSED = {("wq", "wk", "wv"): ("model.layers.{i}.self_attn.qkv_proj.weight", "blk.{i}.attn_qkv.weight"),
          ("w1", "w3"): ("model.layers.{i}.mlp.gate_up_proj.weight", "blk.{i}.ffn_up.weight")}
# GGUF architectures whose q/k rows llama.cpp's converter permuted (interleaved RoPE pairs).
_PERMUTED = {"llama", "smollm3"}

WEIGHT_MODES = ("auto", "q8_0", "f32")
_MATRICES = {"wq", "wk", "wv", "wo", "w1", "w2", "w3", "tok_embeddings", "output"}


def load_model(path: str | Path, gguf_file: GGUFFile | None = None,
               weights: str = "auto") -> tuple[ModelConfig, Weights]:
    """Load a `.gguf` file or a Hugging Face directory (config.json + *.safetensors), its
    matrices as `weights` says (see the module docstring). A GGUF already opened can be passed."""
    if weights not in WEIGHT_MODES:
        raise ModelError(f"weights {weights!r}: expected one of {', '.join(WEIGHT_MODES)}")
    path = Path(path)
    if path.is_dir():
        return _load_hf(path, weights)
    if path.suffix == ".gguf" and path.is_file():
        return _load_gguf(path, gguf_file, weights)
    raise ModelError(f"{path}: not a .gguf file or a Hugging Face model directory")


def build_weights(cfg: ModelConfig, get, mode: str = "auto") -> Weights:
    """Assemble `Weights` from get(our_name, layer_index | None) -> f32 array, QuantMatrix or None,
    converting matrices to `mode`."""
    def matrix(name: str, i: int | None):
        arr = get(name, i)
        return _convert(arr, mode) if name in _MATRICES else arr

    wanted = [n for n in LAYER_NAMES if (n not in ("bq", "bk", "bv") or cfg.qkv_bias)
              and (n not in ("q_norm", "k_norm") or cfg.qk_norm)
              and (n not in ("post_attn_norm", "post_ffn_norm") or cfg.post_norms)]
    layers = [LayerWeights(**{name: matrix(name, i) for name in wanted}) for i in range(cfg.n_layers)]
    emb = matrix("tok_embeddings", None)
    out = emb if cfg.tie_embeddings else matrix("output", None)
    weights = Weights(tok_embeddings=emb, layers=layers, norm=get("norm", None), output=out)
    _check_shapes(cfg, weights)
    return weights


def _convert(w: Matrix, mode: str) -> Matrix:
    if mode == "f32" and isinstance(w, QuantMatrix):
        return dequantize(w)
    if mode == "q8_0" and not isinstance(w, QuantMatrix) and w.shape[1] % QK == 0:
        return QuantMatrix(quantize_q8_0(w), "Q8_0")
    return w


def _check_shapes(cfg: ModelConfig, w: Weights) -> None:
    C, F, V = cfg.dim, cfg.hidden_dim, cfg.vocab_size
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    D = cfg.head_dim
    expect = {"wq": (q, C), "wk": (kv, C), "wv": (kv, C), "wo": (C, q), "w1": (F, C),
              "w2": (C, F), "w3": (F, C), "attn_norm": (C,), "ffn_norm": (C,),
              "bq": (q,), "bk": (kv,), "bv": (kv,), "q_norm": (D,), "k_norm": (D,),
              "post_attn_norm": (C,), "post_ffn_norm": (C,)}
    for name, size in [("dim", C), ("hidden_dim", F), ("n_heads * head_dim", q)]:
        if size % 8:  # the matmul kernels read rows 8 floats at a time
            raise ModelError(f"{name} = {size} is not a multiple of 8; Ember cannot run this model")
    for name, shape in [("tok_embeddings", (V, C)), ("output", (V, C)), ("norm", (C,))]:
        if getattr(w, name).shape != shape:
            raise ModelError(f"{name}: shape {getattr(w, name).shape}, expected {shape}")
    for i, layer in enumerate(w.layers):
        for name, shape in expect.items():
            arr = getattr(layer, name)
            if arr is not None and arr.shape != shape:
                raise ModelError(f"layer {i} {name}: shape {arr.shape}, expected {shape}")


# ---------------------------------------------------------------- GGUF


def _load_gguf(path: Path, file: GGUFFile | None = None, mode: str = "auto") -> tuple[ModelConfig, Weights]:
    file = file or GGUFFile(path)
    tensors = file.tensors
    rope = {n: _gguf_tensor(t) for n, t in tensors.items() if n.startswith("rope_")}  # factors
    try:
        cfg = ModelConfig.from_gguf(file.metadata, set(tensors), rope)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None

    def read(key: str) -> Matrix:
        if key not in tensors:
            raise ModelError(f"{path.name}: tensor {key!r} is missing")
        return _gguf_tensor(tensors[key])

    return cfg, build_weights(cfg, _gguf_getter(cfg, read), mode)


def load_gguf_reference(path: str | Path) -> tuple[ModelConfig, Weights]:
    """The f32 model of a GGUF file as the `gguf` package reads and dequantizes it, not through
    Ember's reader or kernels: what tests and benchmarks compare Ember's quantized path with."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
               .reshape([int(n) for n in reversed(t.shape)]) for t in reader.tensors}
    meta = {key: field.contents() for key, field in reader.fields.items()}
    cfg = ModelConfig.from_gguf(meta, set(tensors), {n: t for n, t in tensors.items() if n.startswith("rope_")})
    return cfg, build_weights(cfg, _gguf_getter(cfg, tensors.__getitem__), "f32")


def _gguf_getter(cfg: ModelConfig, read):
    """get(our name, layer) over read(GGUF tensor name): fused matrices split, q/k rows of
    permuting converters put back in rotate-half order."""
    def get(name: str, i: int | None) -> Matrix:
        key, rows = _tensor_name(cfg, name, i, GGUF)
        arr = _rows(read(key), rows)
        if cfg.arch in _PERMUTED and name in ("wq", "bq", "wk", "bk"):
            heads = cfg.n_heads if name[1] == "q" else cfg.n_kv_heads
            if isinstance(arr, QuantMatrix):
                return QuantMatrix(_unpermute_rope(arr.data, heads), arr.fmt)
            return _unpermute_rope(arr, heads)
        return arr

    return get


def _tensor_name(cfg: ModelConfig, name: str, i: int | None, source: int) -> tuple[str, slice | None]:
    """The tensor of a `source` (HF or GGUF) file that holds our `name` of layer i, and which of
    its rows are ours (None: all)."""
    if i is None:
        return GLOBAL_NAMES[name][source], None
    if cfg.arch == "phi3":
        for parts, names in _FUSED.items():
            if name in parts:
                return names[source].format(i=i), _fused_rows(cfg, parts, name)
    if source == HF and name == "ffn_norm" and cfg.post_norms:
        return _GEMMA_HF_FFN_NORM.format(i=i), None
    return LAYER_NAMES[name][source].format(i=i), None


def _fused_rows(cfg: ModelConfig, parts: tuple[str, ...], name: str) -> slice:
    q, kv, f = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.hidden_dim
    sizes = {"wq": q, "wk": kv, "wv": kv, "w1": f, "w3": f}
    start = sum(sizes[p] for p in parts[:parts.index(name)])
    return slice(start, start + sizes[name])


def _rows(arr: Matrix, rows: slice | None) -> Matrix:
    if rows is None:
        return arr
    if isinstance(arr, QuantMatrix):  # a block row is a weight row: rows slice as they are
        return QuantMatrix(arr.data[rows], arr.fmt)
    return arr[rows]


def _gguf_tensor(t: GGUFTensor) -> Matrix:
    """Quantized matrices as a `QuantMatrix` over the file's memory map; F32 matrices as views
    of it too; F16 / BF16 (and quantized vectors) widened to f32."""
    if t.kind in QUANTIZED:
        if len(t.shape) == 2:
            return QuantMatrix(t.data, t.kind)
        return FORMATS[t.kind].dequantize(t.data).reshape(t.shape)
    if t.kind == "BF16":
        return _bf16_to_f32(t.data)
    return t.data if t.kind == "F32" else t.data.astype(np.float32)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> f32: they are an f32's top 16 bits."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of q/k rows (interleaved pairs -> rotate-half)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape).copy()


# ---------------------------------------------------------------- Hugging Face directory


def _load_hf(path: Path, mode: str = "auto") -> tuple[ModelConfig, Weights]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path}: no config.json")
    try:
        cfg = ModelConfig.from_hf(json.loads(config_file.read_text()))
    except json.JSONDecodeError as e:
        raise ModelError(f"{config_file}: not valid JSON ({e})") from None
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{path}: no *.safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(f))

    gemma = cfg.arch in ("gemma2", "gemma3")

    def get(name: str, i: int | None) -> np.ndarray:
        key, rows = _tensor_name(cfg, name, i, HF)
        if key not in tensors:
            raise ModelError(f"{path}: tensor {key!r} is missing")
        arr = np.ascontiguousarray(_rows(tensors[key], rows), dtype=np.float32)
        if gemma and name.endswith("norm"):  # Gemma's RMSNorm scales by 1 + w (GGUF files store 1 + w)
            arr = arr + np.float32(1.0)
        return arr

    return cfg, build_weights(cfg, get, mode)


_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Map a .safetensors file; F32 and F16 come back as-is, BF16 widened to f32."""
    path = Path(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        (n,) = struct.unpack("<Q", bytes(data[:8]))
        header = json.loads(bytes(data[8:8 + n]))
    except (struct.error, ValueError) as e:
        raise ModelError(f"{path}: not a safetensors file ({e})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ModelError(f"{path.name}: tensor {name} has dtype {info['dtype']} "
                             f"(supported: F32, F16, BF16)")
        start, end = info["data_offsets"]
        arr = data[8 + n + start:8 + n + end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            arr = _bf16_to_f32(arr)
        out[name] = arr
    return out
