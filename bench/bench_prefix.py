"""Time to first token of a follow-up chat turn with the conversation in the prefix cache,
against the same turn computed cold, on the default model (same process, alternating, medians).

    python bench/bench_prefix.py [--model PATH] [--runs 5]

The conversation: a ~600-token story and one answer, then a follow-up question (~750 tokens in
all); the cached run computes only what follows the cached blocks.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels._env  # noqa: E402, F401  (first: see kernels/_env.py)

from engine import Engine, EngineConfig, SamplingParams, load_model  # noqa: E402
from engine.gguf_file import GGUFFile  # noqa: E402
from server.models import ember_home, pull  # noqa: E402
from tokenizer import ChatTemplate, Tokenizer  # noqa: E402

STORY = ("The lighthouse keeper lived alone on a small rocky island far from the coast. Every "
         "evening she climbed the spiral stairs, cleaned the great lens, and lit the lamp that "
         "guided fishing boats home through fog and storm. ") * 16


def first_token(engine: Engine, rid: str, prompt: list[int], params: SamplingParams):
    engine.add_request(rid, prompt, params)
    start, first, tokens, cached = time.perf_counter(), None, [], 0
    while engine.has_unfinished:
        for out in engine.step():
            if first is None:
                first, cached = time.perf_counter() - start, out.n_cached
            tokens += out.new_ids
    return first, tokens, cached


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    path = args.model or pull(ember_home())
    file = GGUFFile(path)
    cfg, weights = load_model(path, file)
    tok = Tokenizer.from_path(path, file.metadata)
    template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=4, max_seq_len=2048))
    engine.warmup()
    greedy = SamplingParams(temperature=0, max_tokens=16, stop_token_ids=tok.eos_ids)
    turn1 = [{"role": "system", "content": "You answer questions about stories."},
             {"role": "user", "content": STORY + "\nWhat did the keeper do every evening?"}]
    _, reply, _ = first_token(engine, "t1", tok.encode(template.render(turn1)), greedy)
    turn2 = turn1 + [{"role": "assistant", "content": tok.decode(reply)},
                     {"role": "user", "content": "And why did it matter to the fishermen?"}]
    prompt2 = tok.encode(template.render(turn2))
    cached, cold, n_cached = [], [], 0
    for i in range(args.runs):
        engine.cache.clear_prefixes()
        first_token(engine, f"fill{i}", prompt2, greedy)  # the conversation enters the cache
        t, _, n_cached = first_token(engine, f"warm{i}", prompt2, greedy)
        cached.append(t)
        engine.cache.clear_prefixes()
        t, _, _ = first_token(engine, f"cold{i}", prompt2, greedy)
        cold.append(t)
    c, k = statistics.median(cached), statistics.median(cold)
    print(f"{len(prompt2)} prompt tokens, {n_cached} from the prefix cache")
    print(f"time to first token: cached {c * 1e3:.0f} ms (min {min(cached) * 1e3:.0f}, max "
          f"{max(cached) * 1e3:.0f}), cold {k * 1e3:.0f} ms (min {min(cold) * 1e3:.0f}, max "
          f"{max(cold) * 1e3:.0f}): cached / cold = {c / k:.3f}")


if __name__ == "__main__":
    main()
