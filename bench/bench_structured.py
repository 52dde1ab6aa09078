"""What constrained decoding costs: decode speed with a JSON schema against free decoding, the
grammar's mask and consume time per token, and how many engine steps a schema-heavy answer
takes per generated token (forced tokens are computed as one chunk).

    python bench/bench_structured.py [--model PATH] [--runs 5]

On the default model, in one process, alternating the variants run after run (medians, min-max):
  free       the same chat prompt decoded greedily without a grammar, as many tokens as the
             constrained answer has (ignore_eos), tok/s from the first generated token;
  masked     the schema's grammar masks every step but forces nothing (each token sampled):
             the grammar's own cost, which must stay within 10% of free;
  forced     the grammar as served: where it allows one continuation, those tokens are
             appended at once and computed next step as a chunk.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernels._env  # noqa: E402, F401, I001  (first: see kernels/_env.py)
import numpy as np  # noqa: E402

from engine import Engine, EngineConfig, SamplingParams, load_model  # noqa: E402
from engine.gguf_file import GGUFFile  # noqa: E402
from server.grammar import GrammarCompiler, compile_schema  # noqa: E402
from server.models import ember_home, pull  # noqa: E402
from tokenizer import ChatTemplate, Tokenizer  # noqa: E402

PROMPT = ("Make up five people for a test database: first and last name, age, city, email and "
          "whether they are active. Answer in JSON.")
PERSON = {"type": "object", "properties": {
    "first_name": {"type": "string", "maxLength": 20}, "last_name": {"type": "string", "maxLength": 20},
    "age": {"type": "integer", "minimum": 18, "maximum": 99},
    "city": {"type": "string", "maxLength": 30}, "email": {"type": "string", "format": "email"},
    "active": {"type": "boolean"}},
    "required": ["first_name", "last_name", "age", "city", "email", "active"],
    "additionalProperties": False}
SCHEMA = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON,
                                                      "minItems": 5, "maxItems": 5}},
          "required": ["people"], "additionalProperties": False}


class Timed:
    """A grammar that records how long its mask and consume calls take; `forcing` off makes
    every token a sampled one."""

    def __init__(self, inner, forcing: bool, masks: list, consumes: list):
        self.inner, self.forcing, self.masks, self.consumes = inner, forcing, masks, consumes

    def fill_mask(self, mask):
        start = time.perf_counter()
        self.inner.fill_mask(mask)
        self.masks.append(time.perf_counter() - start)

    def consume(self, ids):
        start = time.perf_counter()
        ok = self.inner.consume(ids)
        self.consumes.append((time.perf_counter() - start) / len(ids))
        return ok

    def forced(self):
        return self.inner.forced() if self.forcing else []

    def is_done(self):
        return self.inner.is_done()

    def rollback(self, n):
        self.inner.rollback(n)

    def fork(self):
        return Timed(self.inner.fork(), self.forcing, self.masks, self.consumes)


def run(engine: Engine, prompt: list[int], params: SamplingParams, grammar=None):
    """(generated ids, seconds from the first generated token to the last, steps after it)."""
    engine.cache.clear_prefixes()
    engine.add_request("b", prompt, params, 1, grammar)
    ids, first, last, steps = [], None, None, 0
    while engine.has_unfinished:
        outs = engine.step()
        now = time.perf_counter()
        for out in outs:
            ids += out.new_ids
            if first is None:
                first = now
            else:
                steps += 1
            last = now
    return ids, last - first, steps


def summary(xs: list[float], unit: str) -> str:
    return f"{statistics.median(xs):8.2f} {unit}  (min {min(xs):.2f}, max {max(xs):.2f}, n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    path = args.model or pull(ember_home())
    file = GGUFFile(path)
    cfg, weights = load_model(path, file)
    tok = Tokenizer.from_path(path, file.metadata)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=4, max_seq_len=2048))
    engine.warmup()
    compiler = GrammarCompiler(tok, cfg.vocab_size)
    template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
    prompt = tok.encode(template.render([{"role": "user", "content": PROMPT}]))
    greedy = SamplingParams(temperature=0, max_tokens=1500, stop_token_ids=tok.eos_ids)

    rates = {"free": [], "masked": [], "forced": []}
    masks, consumes, steps_per_token, answer = [], [], [], ""
    for _ in range(args.runs):  # alternate the variants so drifts in machine load hit all three
        for forcing in (False, True):
            grammar = Timed(compile_schema(compiler, SCHEMA, True, "schema"), forcing, masks, consumes)
            ids, seconds, steps = run(engine, prompt, greedy, grammar)
            rates["forced" if forcing else "masked"].append((len(ids) - 1) / seconds)
            if forcing:
                steps_per_token.append(steps / (len(ids) - 1))
                answer = tok.decode(ids)
        free = SamplingParams(temperature=0, max_tokens=len(ids), ignore_eos=True)
        ids_free, seconds, _ = run(engine, prompt, free)
        rates["free"].append((len(ids_free) - 1) / seconds)

    ms = np.array(masks) * 1e6
    cs = np.array(consumes) * 1e6
    print(f"model {path.name}, answer of {len(ids)} tokens, runs {args.runs}")
    for name, xs in rates.items():
        print(f"{name:7s} decode: {summary(xs, 'tok/s')}")
    print(f"ratio masked / free: {statistics.median(rates['masked']) / statistics.median(rates['free']):.2f}x, "
          f"forced / free: {statistics.median(rates['forced']) / statistics.median(rates['free']):.2f}x")
    print(f"mask per token: p50 {np.percentile(ms, 50):.0f} us, p99 {np.percentile(ms, 99):.0f} us, "
          f"max {ms.max():.0f} us (n={len(ms)}); consume per token: p50 {np.percentile(cs, 50):.0f} us, "
          f"p99 {np.percentile(cs, 99):.0f} us")
    print(f"engine steps per generated token, forced: {summary(steps_per_token, '')}")
    print(f"answer: {answer[:300]}")


if __name__ == "__main__":
    main()
