"""The default model in the file types people download, checked end to end (the files are too
big to commit; tests/golden/make_quant_golden.py makes them with llama.cpp's quantizer).

    python bench/check_formats.py DIR            # DIR holds SmolLM2-135M-Instruct-TYPE.gguf files

For each file: which tensor types it holds; the last-position logits of the golden chats
(tests/golden/smollm2.json) from Ember's quantized kernels against an f32 model of the same
file's weights dequantized by the `gguf` package (the golden tolerance: 1e-3 of the largest
logit); the 32-token greedy continuations of both (identical?); and `ember serve --model FILE`
on a loopback port answering a chat request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402

from engine import Engine, EngineConfig, SamplingParams, load_model  # noqa: E402
from engine.gguf_file import GGUFFile  # noqa: E402
from engine.loader import load_gguf_reference  # noqa: E402
from engine.model import Transformer, forward  # noqa: E402
from engine.kv_cache import KVCache  # noqa: E402
from engine.batch import StepBatch  # noqa: E402

CHATS = json.loads((ROOT / "tests" / "golden" / "smollm2.json").read_text())["chats"]


def last_logits(cfg, weights, ids: list[int]) -> np.ndarray:
    cache = KVCache(cfg, -(-len(ids) // 16), 16)
    batch = StepBatch.pack([(ids, 0, list(range(cache.n_blocks)))], 16)
    return forward(Transformer(cfg, weights, 512), cache, batch)[0]


def greedy(cfg, weights, ids: list[int]) -> list[int]:
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=512))
    return list(engine.generate(ids, SamplingParams(temperature=0, max_tokens=32)))


def serves(path: Path) -> str:
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", "0", "--model", str(path)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    port = None
    try:
        for line in proc.stderr:
            if "listening on http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1])
            if "ready:" in line:
                break
        body = json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                           "temperature": 0, "max_tokens": 20}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/chat/completions", body,
                                     {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    files = sorted(Path(sys.argv[1]).glob("SmolLM2-135M-Instruct-*.gguf"))
    files = [f for f in files if not f.stem.endswith("F32")]
    for path in files:
        start = time.perf_counter()
        kinds = Counter(t.kind for t in GGUFFile(path).tensors.values() if len(t.shape) == 2)
        cfg, weights = load_model(path)
        ref_cfg, ref = load_gguf_reference(path)
        assert ref_cfg == cfg
        errs, same = [], 0
        for chat in CHATS:
            got, want = last_logits(cfg, weights, chat["ids"]), last_logits(cfg, ref, chat["ids"])
            errs.append(float(np.abs(got - want).max() / np.abs(want).max()))
            same += greedy(cfg, weights, chat["ids"]) == greedy(cfg, ref, chat["ids"])
        answer = serves(path)
        print(f"{path.name}: matrices {dict(kinds)}; logits max |delta| / max |logit| "
              f"{max(errs):.2e} (limit 1e-3); greedy identical {same}/{len(CHATS)}; "
              f"ember serve answered {answer!r}; {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
