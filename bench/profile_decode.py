"""Where a decode step's time goes: matmuls (per weight), attention, the other kernels, sampling,
and the Python around them, for 1 and 8 sequences on the default model; and the same for the
prefill of a 512-token prompt.

    python bench/profile_decode.py [--model PATH] [--tokens 64] [--temperature 0.8]

Each stage function of engine.model / engine.runner is wrapped with a timer; "python and glue"
is the step time minus every timed stage (scheduler, batch packing, array slicing, dispatch).
The timers add about a microsecond per call, so the total is a little slower than bench_engine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402


import engine.model as model  # noqa: E402
import engine.runner as runner  # noqa: E402
from engine import Engine, EngineConfig, SamplingParams, load_model  # noqa: E402
from server.models import ember_home, pull  # noqa: E402

TIMES: dict[str, float] = defaultdict(float)


def timed(name_of, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name_of(*args)] += time.perf_counter() - start
    return wrapper


def instrument(weights) -> None:
    names = {id(weights.output): "matmul: lm head"}
    for lw in weights.layers:
        for field in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            names[id(getattr(lw, field))] = f"matmul: {field}"
    model.linear = timed(lambda x, w: names[id(w)], model.linear)
    for name in ("attention", "apply_rope", "silu_mul", "rms_norm", "embed"):
        setattr(model, name, timed(lambda *a, n=name: n, getattr(model, name)))
    runner.sample = timed(lambda *a: "sampling", runner.sample)
    runner.StepBatch.pack = timed(lambda *a, **k: "batch packing", runner.StepBatch.pack)


def run(engine: Engine, n_seqs: int, n_tokens: int, temperature: float) -> tuple[float, int]:
    rng = np.random.default_rng(n_seqs)
    params = SamplingParams(temperature=temperature, max_tokens=n_tokens, ignore_eos=True, seed=n_seqs)
    for i in range(n_seqs):
        engine.add_request(f"r{i}", rng.integers(100, 40000, 16).tolist(), params)
    while engine.scheduler.waiting or any(r.n_computed < len(r.prompt_ids) for r in engine.scheduler.running):
        engine.step()  # prompts done: time decode steps only
    TIMES.clear()
    steps, start = 0, time.perf_counter()
    while engine.has_unfinished:
        engine.step()
        steps += 1
    return time.perf_counter() - start, steps


def prefill(engine: Engine, n_prompt: int = 512) -> float:
    engine.cache.clear_prefixes()
    ids = np.random.default_rng(0).integers(100, 40000, n_prompt).tolist()
    TIMES.clear()
    start = time.perf_counter()
    for _ in engine.generate(ids, SamplingParams(temperature=0, max_tokens=1)):
        pass
    return time.perf_counter() - start


def report(total: float, per: int, unit: str) -> None:
    rows = sorted(TIMES.items(), key=lambda kv: -kv[1]) + [("python and glue", total - sum(TIMES.values()))]
    for name, t in rows:
        print(f"  {name:22s} {t / per * 1e3:8.3f} ms/{unit}  {100 * t / total:5.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    args = ap.parse_args()
    path = args.model or pull(ember_home())
    cfg, weights = load_model(path)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=8, max_seq_len=1024))
    engine.warmup()
    instrument(weights)
    for n_seqs in (1, 8):
        run(engine, n_seqs, 4, args.temperature)  # warm the wrappers' paths
        total, steps = run(engine, n_seqs, args.tokens, args.temperature)
        per_step = total / steps * 1e3
        print(f"\n{n_seqs} sequence(s): {steps} decode steps, {per_step:.2f} ms/step, "
              f"{n_seqs * steps / total:.1f} tok/s")
        report(total, steps, "step")
    prefill(engine)
    total = prefill(engine)
    print(f"\nprefill of 512 tokens: {total * 1e3:.0f} ms, {512 / total:.1f} tok/s")
    report(total, 1, "prompt")


if __name__ == "__main__":
    main()
