"""Prefill, single-stream decode and 8-sequence decode speed of the default model, side by side
with llama.cpp.

    python bench/bench_engine.py [--model PATH] [--runs 5]

Figures (PERFORMANCE.md): prefill = a 512-token prompt from an empty cache, tok/s; decode = 128
tokens generated one at a time after a 16-token prompt, greedy, tok/s timed from the first
generated token; 8 sequences = the same for 8 different prompts decoded together in the engine
(no HTTP: bench_server.py measures that), aggregate tok/s timed from the step after the last
prompt, compared with llama.cpp's single-stream decode. When llama-cpp-python is importable,
llama.cpp runs the same GGUF with the same thread count in the same process, the two sides
alternate, and the ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402


from engine import Engine, EngineConfig, SamplingParams, load_model  # noqa: E402
from server.models import ember_home, pull  # noqa: E402

N_PREFILL, N_PROMPT, N_DECODE, N_SEQS = 512, 16, 128, 8


def ember_side(path: Path):
    cfg, weights = load_model(path)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=N_SEQS, max_seq_len=1024, max_batch_tokens=512))
    engine.warmup()

    def prefill(ids):
        engine.cache.clear_prefixes()  # from an empty cache: no reuse of the previous run
        start = time.perf_counter()
        for _ in engine.generate(ids, SamplingParams(temperature=0, max_tokens=1)):
            pass
        return len(ids) / (time.perf_counter() - start)

    def decode(ids):
        engine.cache.clear_prefixes()
        times = [time.perf_counter() for _ in engine.generate(
            ids, SamplingParams(temperature=0, max_tokens=N_DECODE, ignore_eos=True))]
        return (len(times) - 1) / (times[-1] - times[0])

    def decode_together(prompts):
        engine.cache.clear_prefixes()
        params = SamplingParams(temperature=0, max_tokens=N_DECODE, ignore_eos=True)
        for i, ids in enumerate(prompts):
            engine.add_request(f"seq{i}", ids, params)
        sched = engine.scheduler
        while sched.waiting or any(r.n_computed < len(r.prompt_ids) for r in sched.running):
            engine.step()  # the prompts, each ending with its first token
        start = time.perf_counter()
        while engine.has_unfinished:
            engine.step()
        return len(prompts) * (N_DECODE - 1) / (time.perf_counter() - start)

    return prefill, decode, decode_together


def llama_cpp_side(path: Path, threads: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)

    def prefill(ids):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        return len(ids) / (time.perf_counter() - start)

    def decode(ids):
        llm.reset()
        times = []
        for _ in llm.generate(ids, temp=0.0, reset=False):
            times.append(time.perf_counter())
            if len(times) == N_DECODE:
                break
        return (len(times) - 1) / (times[-1] - times[0])

    return prefill, decode


def summary(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f} tok/s  (min {min(xs):.1f}, max {max(xs):.1f}, n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    path = args.model or pull(ember_home())
    threads = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    long_ids = rng.integers(100, 40000, N_PREFILL).tolist()
    short_ids = rng.integers(100, 40000, N_PROMPT).tolist()

    seq_ids = [rng.integers(100, 40000, N_PROMPT).tolist() for _ in range(N_SEQS)]

    ember_prefill, ember_decode, ember_together = ember_side(path)
    sides = {"ember": (ember_prefill, ember_decode)}
    try:
        sides["llama.cpp"] = llama_cpp_side(path, threads)
    except ImportError:
        print("llama-cpp-python is not importable: measuring ember alone")
    results = {name: {"prefill": [], "decode": []} for name in sides}
    together = []
    for _ in range(args.runs):  # alternate the sides so drifts in machine load hit both
        for name, (prefill, decode) in sides.items():
            results[name]["prefill"].append(prefill(long_ids))
            results[name]["decode"].append(decode(short_ids))
        together.append(ember_together(seq_ids))

    print(f"model {path.name}, threads {threads}, runs {args.runs}")
    for name, r in results.items():
        print(f"{name:10s} prefill {N_PREFILL}: {summary(r['prefill'])}")
        print(f"{name:10s} decode {N_DECODE}:  {summary(r['decode'])}")
    print(f"ember      {N_SEQS} sequences: {summary(together)}")
    if "llama.cpp" in results:
        for fig in ("prefill", "decode"):
            ratio = statistics.median(results["ember"][fig]) / statistics.median(results["llama.cpp"][fig])
            print(f"ratio ember / llama.cpp, {fig}: {ratio:.2f}x")
        ratio = statistics.median(together) / statistics.median(results["llama.cpp"]["decode"])
        print(f"ratio ember {N_SEQS} sequences / llama.cpp single-stream decode: {ratio:.2f}x")


if __name__ == "__main__":
    main()
