"""Speculative decoding changes how many tokens a step yields, never which tokens: on the default
model, every request gives the same tokens, logprobs and finish reasons with drafting on as with
it off, alone and among others, seeded or greedy, with n > 1, limits, prefix-cache hits and
preemption; and rejected drafts leave nothing in the KV cache or the prefix cache."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Engine, EngineConfig, SamplingParams
from engine.proposer import Lookup
from engine.request import Request
from tokenizer import ChatTemplate

pytestmark = pytest.mark.model

TEXT = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
        "It is named after the engineer Gustave Eiffel, whose company designed and built the "
        "tower from 1887 to 1889. Locally nicknamed La dame de fer, it was constructed as the "
        "centrepiece of the 1889 World's Fair, and to crown the centennial anniversary of the "
        "French Revolution.")
CODE = ("def mean(values):\n    total = 0\n    for v in values:\n        total += v\n"
        "    return total / len(value)\n")
ASKS = [f"Repeat this text exactly:\n\n{TEXT}",
        f"Summarise this text in two sentences:\n\n{TEXT}",
        f"Fix the bug in this function and return the whole function:\n\n{CODE}",
        f"Extract the name of the engineer and the years of construction as JSON from:\n\n{TEXT}",
        "Write a short poem about the sea."]


@pytest.fixture(scope="module")
def prompts(smol):
    _, _, tok = smol
    template = ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token)
    return [tok.encode(template.render([{"role": "user", "content": a}])) for a in ASKS]


def run(smol, requests, max_draft, **config):
    """Every choice's (tokens, logprobs, finish reason) and the engine, requests added at once."""
    cfg, weights, tok = smol
    engine = Engine(cfg, weights, EngineConfig(max_draft=max_draft, **{"max_seq_len": 1024, **config}))
    for rid, ids, params, n in requests:
        engine.add_request(rid, ids, params, n)
    out: dict = {}
    while engine.has_unfinished:
        for o in engine.step():
            tokens, logprobs, _ = out.get((o.request_id, o.index), ([], [], None))
            out[o.request_id, o.index] = (tokens + o.new_ids, logprobs + (o.logprobs or []),
                                          o.finish_reason)
    return out, engine


def both(smol, requests, **config):
    plain, _ = run(smol, requests, 0, **config)
    drafted, engine = run(smol, requests, 8, **config)
    assert drafted == plain
    assert engine.scheduler.n_accepted > 0  # drafts were made and some accepted
    assert engine.cache.n_referenced == 0  # every block given back
    return engine


def mixed(prompts, eos):
    """Eight requests of different kinds: greedy, seeded nucleus sampling with logprobs, n = 2,
    penalties, a short limit, the end-of-text token ignored."""
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=80, logprobs=2,
                            stop_token_ids=eos)
    return [("greedy", prompts[0], SamplingParams(temperature=0, max_tokens=90, stop_token_ids=eos), 1),
            ("seeded", prompts[1], seeded, 1),
            ("n2", prompts[2], SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=70,
                                              stop_token_ids=eos), 2),
            ("json", prompts[3], SamplingParams(temperature=0, max_tokens=60, logprobs=1,
                                                stop_token_ids=eos), 1),
            ("poem", prompts[4], SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=60,
                                                stop_token_ids=eos), 1),
            ("penalties", prompts[0], SamplingParams(temperature=0, max_tokens=60, stop_token_ids=eos,
                                                     presence_penalty=0.3, frequency_penalty=0.2), 1),
            ("short", prompts[1], SamplingParams(temperature=0, max_tokens=5, stop_token_ids=eos), 1),
            ("ignore-eos", prompts[2], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True,
                                                      stop_token_ids=eos), 1)]


@pytest.mark.parametrize("kind", ["greedy", "seeded"])
def test_alone_the_same_tokens_and_logprobs(smol, prompts, kind):
    eos = smol[2].eos_ids
    params = (SamplingParams(temperature=0, max_tokens=100, stop_token_ids=eos, logprobs=2)
              if kind == "greedy" else
              SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=100, logprobs=2,
                             stop_token_ids=eos))
    for i, ids in enumerate(prompts):
        both(smol, [(f"r{i}", ids, params, 1)], max_seqs=1)


@pytest.mark.parametrize("eager", [False, True])
def test_among_seven_others_with_n_and_limits(smol, prompts, monkeypatch, eager):
    """eager: rows cost nothing to the proposer, so every sequence drafts whenever it can guess
    and many drafts are rejected inside steps packed with other sequences."""
    if eager:
        monkeypatch.setattr("engine.proposer.ROW_COST", 0.0)
    engine = both(smol, mixed(prompts, smol[2].eos_ids), max_seqs=9)
    if eager:
        assert engine.scheduler.n_drafted > 2 * engine.scheduler.n_accepted


def test_prefix_cache_hits_and_clean_caches(smol, prompts):
    """The same prompts twice (the second time from the prefix cache), and afterwards every
    block the prefix cache holds has the same keys and values as without drafts."""
    eos = smol[2].eos_ids
    greedy = SamplingParams(temperature=0, max_tokens=80, stop_token_ids=eos)
    requests = [(f"r{i}", ids, greedy, 1) for i, ids in enumerate(prompts[:3])]
    twice = requests + [(f"again{i}", ids, greedy, 1) for i, (_, ids, _, _) in enumerate(requests)]
    engines = []
    for max_draft in (0, 8):
        cfg, weights, _ = smol
        engine = Engine(cfg, weights, EngineConfig(max_draft=max_draft, max_seq_len=1024, max_seqs=4))
        outs = {}
        for rid, ids, params, n in twice:  # one after another: the second three hit the cache
            outs[rid] = list(engine.generate(ids, params, rid))
        engines.append((engine, outs))
    (plain, plain_out), (drafted, drafted_out) = engines
    assert drafted_out == plain_out and drafted.scheduler.n_accepted > 0
    assert cached_blocks(drafted) == cached_blocks(plain)


def cached_blocks(engine: Engine) -> dict:
    """Every prefix-cache block by the whole token prefix it ends, with its keys and values."""
    cache = engine.cache
    prefix_of = {0: ()}
    by_id = {cache._id[b]: b for b in cache._key}
    out = {}
    for chain_id in sorted(by_id):
        block = by_id[chain_id]
        parent, tokens = cache._key[block]
        prefix_of[chain_id] = prefix_of[parent] + tokens
        out[prefix_of[chain_id]] = (cache.k[:, block].tobytes(), cache.v[:, block].tobytes())
    return out


def test_preemption(smol, prompts):
    """A pool too small for eight sequences: some are preempted and computed again."""
    cfg = smol[0]
    from engine.kv_cache import KVCache

    mb = -(-600 * KVCache.bytes_per_block(cfg, 16) // 16 // 2**20)  # about 600 tokens
    engine = both(smol, mixed(prompts, smol[2].eos_ids), max_seqs=9, kv_cache_mb=mb, max_seq_len=512)
    assert engine.scheduler.n_preempted > 0


def test_lookup_proposes_what_followed_the_suffix_before():
    r = Request("x", [1, 2, 3, 4, 5, 9, 2, 3], SamplingParams())
    lookup = Lookup()
    lookup.sync(r)
    assert lookup.propose(3) == [4, 5, 9]  # "2 3" came before, followed by 4 5 9
    r.output_ids += [4, 5]
    lookup.sync(r)
    assert lookup.propose(2) == [9, 2]  # now "2 3 4 5" matches: 9 2 follows
    assert Lookup().propose(4) == []
    assert np.array_equal(lookup.tokens, r.all_ids())


def test_over_http_stop_strings_usage_and_metrics(default_model_path):
    """Two servers, drafting on and off: the same replies, stop strings cutting a step's tokens
    short, the same usage (tokens up to the stop string's), and the drafts in /metrics."""
    import http.client
    import json
    from functools import partial

    from server.app import load_deployment
    from server.config import ServerConfig
    from tests.conftest import run_server

    def post(port, body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("POST", "/chat/completions", json.dumps(body), {"content-type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        conn.close()
        return {k: reply[k] for k in ("choices", "usage")}

    bodies = [{"messages": [{"role": "user", "content": ASKS[0]}], "temperature": 0,
               "max_tokens": 80, "stop": ["1889"]},
              {"messages": [{"role": "user", "content": ASKS[1]}], "temperature": 0.8, "top_p": 0.9,
               "seed": 4, "max_tokens": 60, "n": 2, "stop": [" the", "."], "logprobs": True,
               "top_logprobs": 2},
              {"messages": [{"role": "user", "content": ASKS[2]}], "temperature": 0, "max_tokens": 70}]
    replies = {}
    for max_draft in (0, 8):
        config = ServerConfig(port=0, max_seqs=4, context=2048, max_draft=max_draft)
        loader = partial(load_deployment, "smol", default_model_path, config)
        with run_server(config, {"smol": loader}) as port:
            replies[max_draft] = [post(port, b) for b in bodies]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/metrics")
            metrics = conn.getresponse().read().decode()
            conn.close()
        drafted = next(float(line.split()[1]) for line in metrics.splitlines()
                       if line.startswith("ember_draft_tokens_total"))
        assert (drafted > 0) is (max_draft > 0)
    assert replies[8] == replies[0]
    first = replies[0][0]["choices"][0]
    assert first["finish_reason"] == "stop" and "1889" not in first["message"]["content"]
