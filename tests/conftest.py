"""Shared fixtures: tiny seeded models built in code, and the real default model (pulled once)."""

from __future__ import annotations

import kernels._env  # noqa: F401, I001  (first: thread settings before numba starts OpenMP)

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import anyio
import anyio.from_thread
import numpy as np
import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from engine import Engine, EngineConfig, ModelConfig, load_model
from engine.weights import LayerWeights, Weights
from tokenizer import ChatTemplate, Tokenizer


def tiny_config(**overrides) -> ModelConfig:
    fields = dict(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  hidden_dim=48, norm_eps=1e-5, max_seq_len=128,
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


class SlotCache:
    """For forward-only tests: a KV cache cut into fixed slots of contiguous blocks."""

    def __init__(self, cfg: ModelConfig, n_slots: int, max_len: int, block_size: int = 16):
        from engine.kv_cache import KVCache

        self.per_slot = -(-max_len // block_size)
        self.cache = KVCache(cfg, n_slots * self.per_slot, block_size)

    def batch(self, seqs, **kwargs):
        """StepBatch of (token_ids, start_position, slot) per sequence."""
        from engine.batch import StepBatch

        return StepBatch.pack([(t, p, list(range(s * self.per_slot, (s + 1) * self.per_slot)))
                               for t, p, s in seqs], self.cache.block_size, **kwargs)


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

    from engine.gguf_file import GGUFFile

    file = GGUFFile(default_model_path)  # parsed once, as the server does
    cfg, weights = load_model(default_model_path, file)
    return cfg, weights, Tokenizer.from_path(default_model_path, file.metadata)


# llama.cpp's own tokenizer test data: vocabulary-only GGUFs under models/ with .inp/.out cases,
# from the llama-cpp-python source distribution on PyPI (which vendors llama.cpp).
LLAMA_CPP_SDIST = ("llama-cpp-python==0.3.36",
                   "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")


@pytest.fixture(scope="session")
def llama_cpp_vocabs() -> Path:
    """A folder of llama.cpp's models/ggml-vocab-* files, fetched once into $EMBER_HOME."""
    from server.models import ember_home

    requirement, sha256 = LLAMA_CPP_SDIST
    target = ember_home() / "testdata" / f"llama.cpp-vocab-{requirement.split('==')[1]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--quiet", "-d", tmp, requirement], check=True, capture_output=True)
        (sdist,) = Path(tmp).glob("*.tar.gz")
        assert hashlib.sha256(sdist.read_bytes()).hexdigest() == sha256, f"{sdist}: sha256 differs"
        out = Path(tmp) / "vocab"
        out.mkdir()
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/vendor/llama.cpp/models/ggml-vocab-" in member.name:
                    (out / Path(member.name).name).write_bytes(tar.extractfile(member).read())
        os.replace(out, target)
    return target


SMOL_KEY = "test-key"


@pytest.fixture(scope="session")
def smol_server(default_model_path):
    """`ember serve` on the default model on a loopback port with an API key, shared by the
    real-client tests; yields its base URL."""
    from server.app import load_deployment
    from server.config import ServerConfig

    config = ServerConfig(port=0, api_keys=(SMOL_KEY,), max_seqs=4, context=2048)
    loader = partial(load_deployment, "SmolLM2-135M-Instruct", default_model_path, config)
    with run_server(config, {"SmolLM2-135M-Instruct": loader}) as port:
        yield f"http://127.0.0.1:{port}"


def byte_tokenizer() -> Tokenizer:
    """Every byte is one token (ids 0-255 in byte-level alphabet order), plus <|im_end|> (256)."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|im_end|>", special=True, normalized=False)])
    eos = hf.token_to_id("<|im_end|>")
    return Tokenizer(hf, None, frozenset({eos}), False, None, frozenset({eos}))


def tiny_deployment(name: str = "tiny", max_seqs: int = 4, context: int = 256, seed: int = 0,
                    max_queue: int = 64):
    """A served tiny model: random weights over the byte tokenizer's 257 tokens."""
    from server.engine_client import EngineClient
    from server.deployment import Deployment

    cfg = tiny_config(vocab_size=257, max_seq_len=context)
    engine = Engine(cfg, tiny_weights(cfg, seed), EngineConfig(max_seqs=max_seqs, max_seq_len=context,
                                                               max_batch_tokens=64))
    tok = byte_tokenizer()
    return Deployment(name, EngineClient(engine, max_queue), tok, ChatTemplate(None),
                      f"fp_tiny{seed}", context)


@contextmanager
def run_server(config, loaders, wait_ready: bool = True):
    """Run `ember serve` in a background thread on a free loopback port; yields the port (once
    /health answers 200 if wait_ready); stops it as SIGTERM would on exit."""
    import http.client

    from server.app import serve

    with anyio.from_thread.start_blocking_portal() as portal:
        stop = portal.call(anyio.Event)
        future, port = portal.start_task(serve, config, loaders, None, stop)
        try:
            for _ in range(600 if wait_ready else 0):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        break
                finally:
                    conn.close()
                threading.Event().wait(0.1)
            yield port
        finally:
            portal.call(stop.set)
            future.result(timeout=60)


@contextmanager
def serve_process(*args: str, env: dict | None = None):
    """`ember serve ARGS` on a free loopback port in a child process (so a client in this
    process does not share its GIL); yields (port, process) once it is ready."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", "0", *args],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"listening on http://127.0.0.1:(\d+)", line)
            port = int(m[1]) if m else port
            if "ready:" in line:
                break
        if port is None:
            raise RuntimeError("the server did not start")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        proc.stderr.close()


@pytest.fixture
def tiny_server():
    """A real loopback server with two tiny deployments and an API key."""
    from server.config import ServerConfig

    config = ServerConfig(host="127.0.0.1", port=0, api_keys=("secret",), max_body=4096,
                          max_header=2048, read_timeout=2.0, idle_timeout=1.0, grace=5.0)
    loaders = {"tiny": partial(tiny_deployment, "tiny"), "broken": broken_deployment,
               "full": partial(tiny_deployment, "full", max_queue=0)}
    with run_server(config, loaders) as port:
        yield port


def broken_deployment():
    """A deployment whose engine fails at every step (for the 500 path)."""
    dep = tiny_deployment("broken")

    def step():
        raise FloatingPointError("injected fault")

    dep.client.engine.step = step
    return dep
