"""Same answer under load, on the default model: a greedy request and a seeded one give exactly
the same tokens alone and among 7 other requests of different lengths, with chunked prefill
cutting their prompts differently. Their logprobs are compared bit for bit too, so a numeric
difference is caught even where it is too small to change a token."""

import numpy as np
import pytest

from engine import Engine, EngineConfig, SamplingParams
from tokenizer import ChatTemplate

pytestmark = pytest.mark.model


def _prompt(tok, text):
    return tok.encode(ChatTemplate(tok.chat_template).render([{"role": "user", "content": text}]))


def _run(engine, requests, join_late=()):
    """Run requests (id, prompt, params); the ids in join_late are added after 3 steps."""
    for rid, prompt, params in requests:
        if rid not in join_late:
            engine.add_request(rid, prompt, params)
    out = {rid: [] for rid, _, _ in requests}
    logprobs = {rid: [] for rid, _, _ in requests}
    steps = 0
    while engine.has_unfinished or steps < 3:
        steps += 1
        if steps == 3:
            for rid, prompt, params in requests:
                if rid in join_late:
                    engine.add_request(rid, prompt, params)
        for o in engine.step():
            out[o.request_id] += o.new_ids
            logprobs[o.request_id] += [(t.logprob, t.top) for t in o.logprobs or []]
    return out, logprobs


def test_same_tokens_alone_and_among_seven_others(smol):
    cfg, weights, tok = smol
    targets = [
        ("greedy", _prompt(tok, "Explain why the sky is blue in two sentences."),
         SamplingParams(temperature=0, max_tokens=40, logprobs=3)),
        ("seeded", _prompt(tok, "Write a short poem about a lighthouse."),
         SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=40, logprobs=3)),
    ]
    rng = np.random.default_rng(0)
    others = [(f"o{i}", rng.integers(100, 40000, n).tolist(),
               SamplingParams(temperature=0.7, seed=i, max_tokens=int(m)))
              for i, (n, m) in enumerate([(5, 60), (300, 10), (90, 30), (17, 50), (150, 5), (1, 40)])]
    config = EngineConfig(max_seqs=8, max_seq_len=1024, max_batch_tokens=64)
    alone, alone_lp = {}, {}
    for target in targets:
        tokens, lp = _run(Engine(cfg, weights, config), [target])
        alone.update(tokens)
        alone_lp.update(lp)
    loaded, loaded_lp = _run(Engine(cfg, weights, config), others[:3] + targets + others[3:],
                             join_late={"seeded", "o4", "o5"})
    for rid, _, _ in targets:
        assert loaded[rid] == alone[rid], rid
        assert loaded_lp[rid] == alone_lp[rid], rid  # bit-identical numbers, not just tokens
    assert all(len(loaded[rid]) > 0 for rid, _, _ in others)
