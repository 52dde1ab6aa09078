"""Make the golden data of the new architectures (qwen3, phi3, phi3-longrope, gemma2, gemma3, smollm3).

Not part of the test suite and never imported by it: the tests read only the files this writes.
For each architecture NAME it builds a tiny random-weight model with transformers' own class
(Qwen3ForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, SmolLM3ForCausalLM),
float32, eager attention, a fixed seed, and writes into tests/golden/arch/:

    NAME-hf/    config.json, model.safetensors (float32), tokenizer.json, tokenizer_config.json,
                generation_config.json (save_pretrained's own output, reloaded and re-checked)
    NAME.gguf   the same weights as F32 GGUF in llama.cpp's layout for that architecture: the
                metadata keys, tensor names and data transformations of llama.cpp's converter
                (convert_hf_to_gguf.py + conversion/*.py of llama.cpp as vendored by
                llama-cpp-python 0.3.36), written with gguf.GGUFWriter; tokenizer as "gpt2"/"gpt-2"
    NAME.json   the config, the test ids (48 tokens, longer than every sliding window and than
                phi3-longrope's original context), transformers' logits at every prompt position
                (base64 float32, row-major [T, V]) and at the last one (a list), the same with
                keys and values rounded to float16 as an f16 KV cache holds them
                ("logits_f16_kv": random tiny models are sensitive enough that the cache's rounding
                alone moves logits by up to 2e-3 of their range), and the 16-token
                greedy continuation (argmax of full forwards, checked against generate() with the
                KV cache; EOS does not stop it) with each step's top-1 minus top-2 logit margin;
                "gguf_metadata" lists the GGUF's model keys and tensor shapes (GGUF order).
                phi3-longrope.json also has a "short" case whose positions all stay within the
                original context (so transformers uses the short factors).

All six share one tokenizer: byte-level BPE, the 256 byte pieces (id = byte value, GPT-2's
byte-to-unicode alphabet), 30 merges learned here from a fixed text, then <|bos|> and <|eos|>.

Run it in a throw-away virtual environment (CPU torch; nothing is downloaded but packages):

    python3 -m venv /tmp/archref
    /tmp/archref/bin/pip install torch==2.13.0 transformers gguf numpy safetensors tokenizers
    /tmp/archref/bin/python tests/golden/make_arch_golden.py             # all; or name some: qwen3 gemma2

Two optional checks, not needed to make the data:

    # 1. llama.cpp's own converter on each NAME-hf/ gives the same GGUF (same keys and values,
    #    same tensor names, shapes and bytes) -- LLAMA_CPP is a llama.cpp source tree, e.g. the one
    #    in `pip download llama-cpp-python==0.3.36 --no-binary :all: --no-deps` (vendor/llama.cpp).
    #    The converter cannot hash this toy tokenizer, so the check gives it the "gpt-2" pre-tokenizer
    #    name and the gpt2 vocab path (tokenizer keys are compared too).
    /tmp/archref/bin/python tests/golden/make_arch_golden.py check-converter LLAMA_CPP

    # 2. llama.cpp itself (a venv with llama-cpp-python and numpy, no torch needed) evaluates each
    #    NAME.gguf on the same ids (F32 KV cache), greedy-decodes 16 tokens with its own cache, and
    #    tokenizes the prompt; prints its differences from transformers and records them in
    #    NAME.json under "llama_cpp" (a rebuild rewrites NAME.json: run verify again after it).
    /tmp/lcpvenv/bin/python tests/golden/make_arch_golden.py verify

Made with torch 2.13.0+cpu, transformers 5.24.0, tokenizers 0.23.3, gguf 0.19.0 (each NAME.json
records them); a rebuild with the same versions gives byte-identical weights and GGUFs.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
OUT = HERE / "arch"

N_PROMPT = 48
N_GREEDY = 16
N_SHORT = 16  # phi3-longrope's short case: 16 + 16 positions <= original context 32

HIDDEN = 64
BOS, EOS = "<|bos|>", "<|eos|>"

CORPUS = (
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs "
    "into the forest. In the forest there is a small house; in the house there lives an old man "
    "who reads the same book every evening. He reads it to the cat, and the cat listens. "
    "Numbers too: 1, 22, 333, 4444 and 3.14159. Then the story starts again from the beginning."
)
PROMPT = (
    "Once upon a time, in the forest by the river, the old man and the cat read the book about "
    "the quick fox and the lazy dog; then they slept until the sun came back over the hills."
)
SHORT_PROMPT = "The cat reads the book in the sun."

# ---------------------------------------------------------------------------------------------
# The architectures. "hf" is the transformers config (its class's own field names), "gguf" the
# llama.cpp architecture string; SEEDS keep every model's weights fixed.
# ---------------------------------------------------------------------------------------------

COMMON = dict(hidden_size=HIDDEN, intermediate_size=64, tie_word_embeddings=True,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)  # ids filled in below

LONGROPE_SHORT = [1.0, 1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0]
LONGROPE_LONG = [1.0, 1.25, 1.6, 2.2, 3.0, 4.5, 7.0, 10.0]

ARCHS: dict[str, dict] = {
    "qwen3": dict(
        cls="Qwen3ForCausalLM", config="Qwen3Config", gguf="qwen3", seed=1001,
        hf=dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=32,  # 4 x 32 = 128 != hidden 64: attention.key_length is needed
                tie_word_embeddings=False, max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                use_sliding_window=False, hidden_act="silu")),
    "phi3": dict(
        cls="Phi3ForCausalLM", config="Phi3Config", gguf="phi3", seed=1002,
        hf=dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                tie_word_embeddings=False, max_position_embeddings=128,
                original_max_position_embeddings=128, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0,
                                 "partial_rotary_factor": 1.0},
                sliding_window=None, hidden_act="silu")),
    "phi3-longrope": dict(
        cls="Phi3ForCausalLM", config="Phi3Config", gguf="phi3", seed=1003,
        hf=dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                tie_word_embeddings=False, max_position_embeddings=128,
                original_max_position_embeddings=32, rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "longrope", "rope_theta": 10_000.0,
                                 "partial_rotary_factor": 1.0,
                                 "original_max_position_embeddings": 32,
                                 "short_factor": LONGROPE_SHORT, "long_factor": LONGROPE_LONG},
                sliding_window=None, hidden_act="silu")),
    "gemma2": dict(
        cls="Gemma2ForCausalLM", config="Gemma2Config", gguf="gemma2", seed=3007,
        hf=dict(COMMON, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=32,  # 4 x 32 = 128 != hidden 64
                max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
                # llama.cpp has no key for query_pre_attn_scalar: it scales by 1/sqrt(head_dim)
                # (1/sqrt(n_embd/n_head) for the 46-layer 27B), so the golden model uses head_dim.
                query_pre_attn_scalar=32,
                sliding_window=12, attn_logit_softcapping=5.0, final_logit_softcapping=10.0,
                hidden_activation="gelu_pytorch_tanh")),
    "gemma3": dict(
        cls="Gemma3ForCausalLM", config="Gemma3TextConfig", gguf="gemma3", seed=2007,
        hf=dict(COMMON, num_hidden_layers=6,  # llama.cpp's fixed pattern: 5 local + 1 global
                num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 4.0,
                                       "rope_theta": 1_000_000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
                query_pre_attn_scalar=32, sliding_window=16,
                final_logit_softcapping=None, attn_logit_softcapping=None,
                hidden_activation="gelu_pytorch_tanh")),
    "smollm3": dict(
        cls="SmolLM3ForCausalLM", config="SmolLM3Config", gguf="smollm3", seed=2002,
        hf=dict(COMMON, num_hidden_layers=4,  # no_rope_layers = [1, 1, 1, 0]: layer 3 has no RoPE
                num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=256, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 100_000.0},
                no_rope_layer_interval=4, use_sliding_window=False, hidden_act="silu")),
}


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE.
# ---------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(n_merges: int) -> list[tuple[str, str]]:
    """Plain BPE on CORPUS's GPT-2 pre-tokens; ties broken by the smaller pair (deterministic)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    words: dict[tuple[str, ...], int] = {}
    for piece, _ in pre.pre_tokenize_str(CORPUS):
        words[tuple(piece)] = words.get(tuple(piece), 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def build_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    merges = learn_merges(30)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(BOS, special=True, normalized=False),
                            AddedToken(EOS, special=True, normalized=False)])
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return tok, merges, bos_id, eos_id


def save_tokenizer(tok, out: Path, bos_id: int, eos_id: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
    }, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Models.
# ---------------------------------------------------------------------------------------------

def make_model(name: str, bos_id: int, eos_id: int, vocab_size: int):
    import torch
    import transformers

    spec = ARCHS[name]
    kw = dict(spec["hf"], vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id)
    config = getattr(transformers, spec["config"])(**kw)
    config._attn_implementation = "eager"
    torch.manual_seed(spec["seed"])
    model = getattr(transformers, spec["cls"])(config).to(torch.float32).eval()
    gemma = spec["gguf"].startswith("gemma")
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for pname, p in sorted(model.named_parameters()):
            r = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if gemma and pname.endswith(("post_attention_layernorm.weight",
                                         "post_feedforward_layernorm.weight")):
                # Gemma's RMSNorm multiplies by (1 + w), so w is an offset; post-norms of about 3
                # keep the blocks' outputs from being swamped by the scaled embedding
                p.copy_(2.0 + 0.15 * r)
            elif gemma and pname == "model.norm.weight":
                p.copy_(3.0 + 0.15 * r)  # (1 + w) ~ 4 spreads the logits of the small tied embedding
            elif pname.endswith("norm.weight"):
                p.copy_(0.15 * r if gemma else 1.0 + 0.15 * r)
            elif "embed_tokens" in pname:
                p.copy_((0.1 if gemma else 0.5) * r)
            elif pname == "lm_head.weight":
                p.copy_(0.4 * r)
            elif p.ndim == 2:
                p.copy_(1.5 * r / np.sqrt(p.shape[1]))
            else:
                raise ValueError(f"unexpected parameter {pname}")
    model.generation_config.eos_token_id = eos_id  # saved as usual; hf_outputs never stops at it
    model.generation_config.bos_token_id = bos_id
    model.generation_config.pad_token_id = eos_id
    model.generation_config.do_sample = False
    return model


def hf_outputs(model, ids: list[int], n_new: int):
    import torch

    with torch.no_grad():
        x = torch.tensor([ids])
        logits = model(x).logits[0].float().numpy()
        seq, margins = list(ids), []
        for _ in range(n_new):  # greedy by full forwards: no cache, no stopping
            step = model(torch.tensor([seq])).logits[0, -1]
            top2 = torch.topk(step, 2).values
            margins.append(float(top2[0] - top2[1]))
            seq.append(int(step.argmax()))
        greedy = seq[len(ids):]
        gen = model.generate(x, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                             eos_token_id=None, pad_token_id=model.generation_config.pad_token_id)
        cached = gen[0, len(ids):].tolist()
    if cached != greedy:
        raise RuntimeError(f"generate() with the cache {cached} != full-forward greedy {greedy}")
    return logits, greedy, margins


def f16_kv_logits(model, ids: list[int]) -> np.ndarray:
    """The logits when every key and value is rounded to float16 where it enters attention, as
    an f16 KV cache stores them (Ember's, and llama.cpp's by default): what an f16-cache engine
    computing exactly otherwise must match. The rest of the model stays float32."""
    import torch

    module = sys.modules[type(model).__module__]
    eager = module.eager_attention_forward

    def rounded(attn, query, key, value, *args, **kwargs):
        return eager(attn, query, key.half().float(), value.half().float(), *args, **kwargs)

    module.eager_attention_forward = rounded
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()
    finally:
        module.eager_attention_forward = eager


def b64(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def unb64(d: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), dtype="<f4").reshape(d["shape"])


# ---------------------------------------------------------------------------------------------
# GGUF, mirroring llama.cpp's converter (paths relative to vendor/llama.cpp/).
# ---------------------------------------------------------------------------------------------

def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """conversion/llama.py LlamaModel.permute: rows of each head from HF's [x_0..x_{d/2-1} |
    x_{d/2}..x_{d-1}] halves to llama.cpp's interleaved pairs (x_0, x_{d/2}, x_1, x_{d/2+1}, ...)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(name: str, cfg: dict, state: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    arch = ARCHS[name]["gguf"]
    gemma = arch.startswith("gemma")
    out = []
    if arch == "phi3" and (cfg["rope_parameters"].get("long_factor")):
        # conversion/phi.py Phi3MiniModel.generate_extra_tensors (written before the weights)
        out.append(("rope_factors_long.weight",
                    np.asarray(cfg["rope_parameters"]["long_factor"], dtype=np.float32)))
        out.append(("rope_factors_short.weight",
                    np.asarray(cfg["rope_parameters"]["short_factor"], dtype=np.float32)))
    layer_map = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
        "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
        # gemma2/3 have four norms per block; the others have post_attention_layernorm = ffn_norm
        "post_attention_layernorm": "post_attention_norm" if gemma else "ffn_norm",
        "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
        "mlp.gate_up_proj": "ffn_up",  # phi3: [gate; up] stacked, kept fused
    }
    for hf_name in sorted(state):
        data = state[hf_name]
        if hf_name == "model.embed_tokens.weight":
            new = "token_embd.weight"
        elif hf_name == "model.norm.weight":
            new = "output_norm.weight"
        elif hf_name == "lm_head.weight":
            if gemma:
                continue  # conversion/gemma.py filter_tensors drops it (tied anyway)
            new = "output.weight"
        else:
            parts = hf_name.split(".")
            assert parts[:2] == ["model", "layers"] and parts[-1] == "weight", hf_name
            bid, mod = int(parts[2]), ".".join(parts[3:-1])
            new = f"blk.{bid}.{layer_map[mod]}.weight"
        if gemma and hf_name.endswith("norm.weight"):
            data = data + np.float32(1.0)  # conversion/gemma.py: Gemma RMSNorm scales by (1 + w)
        if arch == "smollm3" and hf_name.endswith("self_attn.q_proj.weight"):
            data = permute_rope(data, cfg["num_attention_heads"])
        if arch == "smollm3" and hf_name.endswith("self_attn.k_proj.weight"):
            data = permute_rope(data, cfg["num_key_value_heads"])
        out.append((new, np.ascontiguousarray(data, dtype=np.float32)))
    return out


def write_gguf(name: str, path: Path, cfg: dict, state: dict[str, np.ndarray], tok_info: dict) -> dict:
    import math

    import gguf

    arch = ARCHS[name]["gguf"]
    w = gguf.GGUFWriter(str(path), arch)
    kv: list[tuple[str, object, str]] = []  # (key, value, type) in the converter's order

    def add(key, value, t):
        kv.append((key.format(arch=arch), value, t))

    rope = cfg["rope_parameters"]
    n_embd, n_head, n_kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    if arch in ("qwen3", "smollm3"):
        # conversion/base.py TextModel.set_gguf_parameters (+ conversion/llama.py for smollm3)
        add("{arch}.block_count", cfg["num_hidden_layers"], "u32")
        add("{arch}.context_length", cfg["max_position_embeddings"], "u32")
        add("{arch}.embedding_length", n_embd, "u32")
        add("{arch}.feed_forward_length", cfg["intermediate_size"], "u32")
        add("{arch}.attention.head_count", n_head, "u32")
        add("{arch}.attention.head_count_kv", n_kv, "u32")
        add("{arch}.rope.freq_base", rope["rope_theta"], "f32")
        add("{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"], "f32")
        if cfg.get("head_dim") is not None:
            add("{arch}.attention.key_length", cfg["head_dim"], "u32")
            add("{arch}.attention.value_length", cfg["head_dim"], "u32")
        add("general.file_type", 0, "u32")
        if arch == "smollm3":
            add("{arch}.vocab_size", cfg["vocab_size"], "u32")
            add("{arch}.rope.dimension_count", cfg.get("head_dim") or n_embd // n_head, "u32")
    elif arch == "phi3":
        # conversion/phi.py Phi3MiniModel.set_gguf_parameters (does not call TextModel's)
        orig = rope["original_max_position_embeddings"] if "original_max_position_embeddings" in rope \
            else cfg["original_max_position_embeddings"]
        rope_dims = int(rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head
        add("{arch}.context_length", cfg["max_position_embeddings"], "u32")
        add("{arch}.rope.scaling.original_context_length", orig, "u32")
        add("{arch}.embedding_length", n_embd, "u32")
        add("{arch}.feed_forward_length", cfg["intermediate_size"], "u32")
        add("{arch}.block_count", cfg["num_hidden_layers"], "u32")
        add("{arch}.attention.head_count", n_head, "u32")
        add("{arch}.attention.head_count_kv", n_kv, "u32")
        add("{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"], "f32")
        add("{arch}.rope.dimension_count", rope_dims, "u32")
        add("{arch}.rope.freq_base", rope["rope_theta"], "f32")
        add("general.file_type", 0, "u32")
        add("{arch}.attention.sliding_window", cfg.get("sliding_window") or 0, "u32")
        if rope.get("long_factor"):
            scale = cfg["max_position_embeddings"] / orig
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
            add("{arch}.rope.scaling.attn_factor", attn_factor, "f32")
    elif arch == "gemma2":
        # conversion/gemma.py Gemma2Model.set_gguf_parameters (does not call TextModel's: no
        # rope.freq_base key, llama.cpp's default 10000 applies)
        add("{arch}.context_length", cfg["max_position_embeddings"], "u32")
        add("{arch}.embedding_length", n_embd, "u32")
        add("{arch}.block_count", cfg["num_hidden_layers"], "u32")
        add("{arch}.feed_forward_length", cfg["intermediate_size"], "u32")
        add("{arch}.attention.head_count", n_head, "u32")
        add("{arch}.attention.head_count_kv", n_kv, "u32")
        add("{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"], "f32")
        add("{arch}.attention.key_length", cfg["head_dim"], "u32")
        add("{arch}.attention.value_length", cfg["head_dim"], "u32")
        add("general.file_type", 0, "u32")
        add("{arch}.attn_logit_softcapping", cfg["attn_logit_softcapping"], "f32")
        add("{arch}.final_logit_softcapping", cfg["final_logit_softcapping"], "f32")
        add("{arch}.attention.sliding_window", cfg["sliding_window"], "u32")
    elif arch == "gemma3":
        # conversion/base.py TextModel.set_gguf_parameters, then conversion/gemma.py
        # Gemma3Model.set_gguf_parameters (which rewrites some keys with the same values)
        full, local = rope["full_attention"], rope["sliding_attention"]
        add("{arch}.block_count", cfg["num_hidden_layers"], "u32")
        add("{arch}.context_length", cfg["max_position_embeddings"], "u32")
        add("{arch}.embedding_length", n_embd, "u32")
        add("{arch}.feed_forward_length", cfg["intermediate_size"], "u32")
        add("{arch}.attention.head_count", n_head, "u32")
        add("{arch}.attention.head_count_kv", n_kv, "u32")
        if full.get("rope_type") == "linear" and full.get("factor") is not None:
            add("{arch}.rope.scaling.type", "linear", "str")
            add("{arch}.rope.scaling.factor", full["factor"], "f32")
        add("{arch}.rope.freq_base", full["rope_theta"], "f32")
        add("{arch}.rope.freq_base_swa", local["rope_theta"], "f32")
        add("{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"], "f32")
        add("{arch}.attention.key_length", cfg["head_dim"], "u32")
        add("{arch}.attention.value_length", cfg["head_dim"], "u32")
        add("general.file_type", 0, "u32")
        if cfg.get("final_logit_softcapping"):
            add("{arch}.final_logit_softcapping", cfg["final_logit_softcapping"], "f32")
        if cfg.get("sliding_window_pattern") != 1:
            add("{arch}.attention.sliding_window", cfg["sliding_window"], "u32")
    else:
        raise ValueError(arch)

    for key, value, t in kv:
        if t == "u32":
            w.add_uint32(key, int(value))
        elif t == "f32":
            w.add_float32(key, float(value))
        else:
            w.add_string(key, value)
    w.add_type("model")
    # not the architecture's name: llama.cpp's vocab loader gives models whose general.name holds
    # "phi3" or "phi-3" special handling that needs a "</s>" token (src/llama-vocab.cpp)
    w.add_name("ember-golden-tiny")
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # conversion/base.py TextModel._set_vocab_gpt2 + gguf.SpecialVocab
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tok_info["tokens"])
    w.add_token_types(tok_info["token_types"])
    w.add_token_merges(tok_info["merges"])
    w.add_bos_token_id(tok_info["bos_id"])
    w.add_eos_token_id(tok_info["eos_id"])
    w.add_add_bos_token(True)
    w.add_add_sep_token(False)  # SpecialVocab reads add_sep_token's absence as False
    w.add_add_eos_token(False)
    tensors = gguf_tensors(name, cfg, state)
    for tname, data in tensors:
        w.add_tensor(tname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {k: v for k, v, _ in kv} | {"tensors": {n: list(reversed(d.shape)) for n, d in tensors}}


# ---------------------------------------------------------------------------------------------
# Build.
# ---------------------------------------------------------------------------------------------

def build(names: list[str]) -> None:
    import safetensors.numpy
    import tokenizers
    import torch
    import transformers

    import gguf

    torch.set_num_threads(1)
    tok, merges, bos_id, eos_id = build_tokenizer()
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    assert (bos_id, eos_id) == (vocab_size - 2, vocab_size - 1)
    id_to_tok = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    tok_info = dict(tokens=[id_to_tok[i] for i in range(vocab_size)],
                    token_types=[3 if i in (bos_id, eos_id) else 1 for i in range(vocab_size)],
                    merges=[f"{a} {b}" for a, b in merges], bos_id=bos_id, eos_id=eos_id)
    prompt_ids = tok.encode(PROMPT).ids[:N_PROMPT]
    short_ids = tok.encode(SHORT_PROMPT).ids[:N_SHORT]
    assert len(prompt_ids) == N_PROMPT and prompt_ids[0] == bos_id, len(prompt_ids)
    assert len(short_ids) == N_SHORT, len(short_ids)
    OUT.mkdir(exist_ok=True)
    for name in names:
        model = make_model(name, bos_id, eos_id, vocab_size)
        hf_dir = OUT / f"{name}-hf"
        hf_dir.mkdir(exist_ok=True)
        for f in hf_dir.iterdir():
            f.unlink()
        model.save_pretrained(hf_dir, safe_serialization=True)
        save_tokenizer(tok, hf_dir, bos_id, eos_id)
        cfg = json.loads((hf_dir / "config.json").read_text())
        # reload from disk, as a user would, and take every number from the reloaded model
        model = transformers.AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
        model.generation_config.eos_token_id = None
        state = safetensors.numpy.load_file(str(hf_dir / "model.safetensors"))
        assert all(a.dtype == np.float32 for a in state.values())
        logits, greedy, margins = hf_outputs(model, prompt_ids, N_GREEDY)
        hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
        assert hf_tok(PROMPT)["input_ids"][:N_PROMPT] == prompt_ids
        record = {
            "arch": ARCHS[name]["gguf"], "hf_class": ARCHS[name]["cls"],
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__, "gguf": gguf.__version__
                         if hasattr(gguf, "__version__") else None},
            "hf_config": cfg,
            "text": PROMPT, "input_ids": prompt_ids,
            "last_logits": [float(v) for v in logits[-1]],
            "logits": b64(logits),
            "logits_f16_kv": b64(f16_kv_logits(model, prompt_ids)),
            "greedy": greedy,
            "greedy_margins": margins,  # top-1 minus top-2 logit at each greedy step
        }
        if name == "phi3-longrope":
            s_logits, s_greedy, s_margins = hf_outputs(model, short_ids, N_GREEDY)
            assert len(short_ids) + N_GREEDY - 1 <= cfg["original_max_position_embeddings"]
            record["short"] = {"text": SHORT_PROMPT, "input_ids": short_ids,
                               "last_logits": [float(v) for v in s_logits[-1]],
                               "logits": b64(s_logits),
                               "logits_f16_kv": b64(f16_kv_logits(model, short_ids)),
                               "greedy": s_greedy,
                               "greedy_margins": s_margins}
        meta = write_gguf(name, OUT / f"{name}.gguf", cfg, state, tok_info)
        record["gguf_metadata"] = meta
        (OUT / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: logits std {logits.std():.3f}, last top {np.argsort(-logits[-1])[:5].tolist()}, "
              f"greedy {greedy}")


# ---------------------------------------------------------------------------------------------
# Check 1: llama.cpp's converter gives the same GGUF.
# ---------------------------------------------------------------------------------------------

def check_converter(llama_cpp: str, names: list[str]) -> None:
    import subprocess
    import tempfile

    runner = r'''
import runpy
import sys
root = sys.argv[1]
sys.path.insert(0, root)
sys.path.insert(1, root + "/gguf-py")
import conversion.base as base
import conversion.gemma, conversion.llama, conversion.phi, conversion.qwen
# the toy tokenizer has no registered pre-tokenizer hash (it is GPT-2's regex byte-level BPE), and
# gemma/phi3 would look for a SentencePiece tokenizer.model: take the gpt2 vocab path for all
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
for cls in (conversion.gemma.Gemma2Model, conversion.gemma.Gemma3Model, conversion.phi.Phi3MiniModel,
            conversion.llama.SmolLM3Model, conversion.qwen.Qwen3Model):
    cls.set_vocab = base.TextModel._set_vocab_gpt2
sys.argv = [root + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''
    import gguf

    failures = 0
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "conv.gguf"
            script = Path(tmp) / "run.py"
            script.write_text(runner)
            r = subprocess.run([sys.executable, str(script), llama_cpp, str(OUT / f"{name}-hf"),
                                "--outtype", "f32", "--outfile", str(out)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(r.stdout[-3000:], r.stderr[-6000:])
                raise SystemExit(f"{name}: converter failed")
            a, b = gguf.GGUFReader(str(out)), gguf.GGUFReader(str(OUT / f"{name}.gguf"))

            descriptive = ("general.name", "general.size_label", "general.basename", "general.finetune")

            def fields(rd):
                return {k: f.contents() for k, f in rd.fields.items()
                        if not k.startswith("GGUF.") and k not in descriptive}
            fa, fb = fields(a), fields(b)
            diffs = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)
                     and not (isinstance(fa.get(k), float) and isinstance(fb.get(k), float)
                              and np.float32(fa[k]) == np.float32(fb[k]))]
            ta = {t.name: t for t in a.tensors}
            tb = {t.name: t for t in b.tensors}
            tdiff = sorted(set(ta) ^ set(tb))
            for n in sorted(set(ta) & set(tb)):
                if list(ta[n].shape) != list(tb[n].shape) or ta[n].tensor_type != tb[n].tensor_type \
                        or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)):
                    tdiff.append(n)
            status = "same" if not diffs and not tdiff else "DIFFERENT"
            failures += status != "same"
            print(f"{name}: converter vs make_arch_golden: {status}; {len(fa)} keys, {len(ta)} tensors"
                  + (f"; keys differ: {[(k, fa.get(k), fb.get(k)) for k in diffs]}" if diffs else "")
                  + (f"; tensors differ: {tdiff}" if tdiff else ""))
            skipped = sorted(k for k in a.fields if k in descriptive)
            print(f"    (not compared: the converter's descriptive {skipped})")
    if failures:
        raise SystemExit(1)


# ---------------------------------------------------------------------------------------------
# Check 2: llama.cpp evaluates the GGUF.
# ---------------------------------------------------------------------------------------------

def verify(names: list[str], record: bool = True) -> None:
    import llama_cpp

    def run(path: Path, ids: list[int], n_ctx: int):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                              logits_all=True, verbose=False, n_threads=2, seed=0,
                              flash_attn=False, type_k=0, type_v=0)  # F32 KV cache (default F16)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
        seq = list(ids)
        for _ in range(N_GREEDY):  # greedy with llama.cpp's KV cache
            nxt = int(np.argmax(llm.scores[len(seq) - 1]))
            seq.append(nxt)
            llm.eval([nxt])
        toks = llm.tokenize(PROMPT.encode(), add_bos=True, special=False)[:N_PROMPT]
        del llm
        return logits, seq[len(ids):], toks

    for name in names:
        path = OUT / f"{name}.json"
        rec = json.loads(path.read_text())
        ref = unb64(rec["logits"])
        got, greedy, toks = run(OUT / f"{name}.gguf", rec["input_ids"], 256)
        res = {"llama_cpp_python": llama_cpp.__version__}
        res.update(compare(ref, got, greedy, rec["greedy"]))
        res["tokenizer_matches"] = toks == rec["input_ids"]
        print(f"{name}: {summary(res)}")
        if "short" in rec:
            # llama.cpp picks rope_factors_long/short by the context size (n_ctx padded to 256 >
            # original 32: always long); a copy whose original_context_length says 4096 takes
            # the short factors, as transformers does for sequences within the original context.
            import tempfile

            import gguf
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / "short.gguf"
                copy.write_bytes((OUT / f"{name}.gguf").read_bytes())
                rd = gguf.GGUFReader(str(copy), "r+")
                f = rd.fields["phi3.rope.scaling.original_context_length"]
                f.parts[f.data[0]][0] = 4096
                del rd
                s = rec["short"]
                got_s, greedy_s, _ = run(copy, s["input_ids"], 256)
            res["short"] = compare(unb64(s["logits"]), got_s, greedy_s, s["greedy"])
            res["short"]["note"] = "GGUF copy with phi3.rope.scaling.original_context_length = 4096"
            print(f"{name} (short factors): {summary(res['short'])}")
        if record:
            rec["llama_cpp"] = res
            path.write_text(json.dumps(rec, indent=1) + "\n")


def compare(ref: np.ndarray, got: np.ndarray, greedy: list[int], ref_greedy: list[int]) -> dict:
    d = np.abs(ref - got)
    last = d[-1]
    return {
        "last_max_abs_diff": float(last.max()),
        "last_max_rel_diff": float(last.max() / np.abs(ref[-1]).max()),
        "all_max_abs_diff": float(d.max()),
        "all_max_rel_diff": float(d.max() / np.abs(ref).max()),
        "argmax_agree_positions": int((ref.argmax(-1) == got.argmax(-1)).sum()),
        "positions": int(ref.shape[0]),
        "greedy": greedy,
        "greedy_matches": greedy == ref_greedy,
    }


def summary(r: dict) -> str:
    s = (f"last-position max |diff| {r['last_max_abs_diff']:.2e} (rel {r['last_max_rel_diff']:.2e}), "
         f"all positions {r['all_max_abs_diff']:.2e} (rel {r['all_max_rel_diff']:.2e}), argmax agrees "
         f"{r['argmax_agree_positions']}/{r['positions']}, greedy 16 {'matches' if r['greedy_matches'] else 'DIFFERS'}")
    if "tokenizer_matches" in r:
        s += f", llama.cpp tokenizes the prompt {'the same' if r['tokenizer_matches'] else 'DIFFERENTLY'}"
    return s


def main(argv: list[str]) -> None:
    if argv and argv[0] == "check-converter":
        check_converter(argv[1], argv[2:] or list(ARCHS))
    elif argv and argv[0] == "verify":
        verify(argv[1:] or list(ARCHS))
    else:
        names = argv or list(ARCHS)
        unknown = [n for n in names if n not in ARCHS]
        if unknown:
            raise SystemExit(f"unknown architectures {unknown}; known: {list(ARCHS)}")
        build(names)


if __name__ == "__main__":
    main(sys.argv[1:])
