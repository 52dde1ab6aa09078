"""How close Ember and llama.cpp come to a float32 reference on the same GGUF.

    python bench/bench_accuracy.py [--model PATH]

The reference is the golden data of tests/golden (transformers + PyTorch in float32 on the
default model's Q4_1 GGUF, dequantized): the last-position logits of 5 chats and their 32-token
greedy continuations. Both engines read the same quantized weights, so what differs is the
arithmetic: Ember keeps activations in f32 (and the KV cache in f16); llama.cpp quantizes
activations to 8 bits for its integer dot products. Printed per chat: max |logit - reference|
over max |reference logit| (the golden test's limit is 1e-3), whether the top token is the
reference's, and how many of the 32 greedy tokens match before the first difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402


from engine import Engine, EngineConfig, SamplingParams, load_model  # noqa: E402
from engine.batch import StepBatch  # noqa: E402
from engine.kv_cache import KVCache  # noqa: E402
from engine.model import forward  # noqa: E402
from server.models import ember_home, pull  # noqa: E402

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def ember_side(path: Path):
    cfg, weights = load_model(path)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=512))

    def logits(ids):  # one forward pass over the prompt, in a cache of its own
        blocks = list(range(-(-len(ids) // 16)))
        cache = KVCache(cfg, len(blocks), 16)
        return forward(engine.model, cache, StepBatch.pack([(ids, 0, blocks)], 16))[0]

    def greedy(ids, n):
        return list(engine.generate(ids, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)))

    return logits, greedy


def llama_cpp_side(path: Path):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, logits_all=True, verbose=False)

    def logits(ids):
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[len(ids) - 1], np.float32)

    def greedy(ids, n):
        llm.reset()
        llm.eval(ids)
        out = []
        for _ in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(token)
            llm.eval([token])
        return out

    return logits, greedy


def agree(got: list[int], ref: list[int]) -> int:
    """How many leading tokens are the same."""
    n = 0
    while n < min(len(got), len(ref)) and got[n] == ref[n]:
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    args = ap.parse_args()
    path = args.model or pull(ember_home())
    data = json.loads((GOLDEN / "smollm2.json").read_text())
    ref_logits = np.load(GOLDEN / "smollm2_logits.npz")
    if Path(path).name != data["model_file"]:
        sys.exit(f"the golden data is for {data['model_file']}, not {Path(path).name}")
    sides = {"ember": ember_side(path)}
    try:
        sides["llama.cpp"] = llama_cpp_side(path)
    except ImportError:
        print("llama-cpp-python is not installed: Ember only")
    print(f"{'':10s} {'chat':>4s} {'max|d| / max|ref|':>18s} {'top token':>10s} {'greedy tokens equal':>20s}")
    for name, (logits, greedy) in sides.items():
        errors = []
        for i, chat in enumerate(data["chats"]):
            ref = ref_logits[f"chat{i}"]
            got = logits(chat["ids"])
            err = float(np.abs(got - ref).max() / np.abs(ref).max())
            errors.append(err)
            same = agree(greedy(chat["ids"], len(chat["greedy"])), chat["greedy"])
            print(f"{name:10s} {i:4d} {err:18.2e} {'same' if got.argmax() == ref.argmax() else 'differs':>10s} "
                  f"{same:>14d} / {len(chat['greedy'])}")
        print(f"{name:10s} worst {max(errors):.2e} (golden test limit 1e-3)")


if __name__ == "__main__":
    main()
