"""The scheduler with a fake runner (no model): token budget, chunked prefill, requests joining
and leaving, abort, stop tokens, length limits, n choices, the prefix cache and preemption."""

import pytest

from engine.config import EngineConfig
from engine.kv_cache import KVCache
from engine.request import Request
from engine.sampling import SamplingParams
from engine.scheduler import Sample, Scheduler
from tests.conftest import tiny_config

BS = 4  # tokens per block


def make(max_seqs=4, budget=16, n_blocks=64, max_seq_len=64):
    cache = KVCache(tiny_config(), n_blocks, BS)
    return Scheduler(EngineConfig(max_seqs=max_seqs, max_batch_tokens=budget, block_size=BS,
                                  max_draft=0), cache, max_seq_len)


def step(s, token=7):
    """One step with a fake runner that samples `token` (or token(request)) for every sampler."""
    plan = s.schedule()
    samples = [Sample(r, [token(r) if callable(token) else token])
               for seq in plan for r in seq.sampling_requests]
    return plan, s.update(plan, samples)


def req(rid, n_prompt, max_tokens=4, start=100, **params):
    return Request(rid, list(range(start, start + n_prompt)),
                   SamplingParams(max_tokens=max_tokens, **params))


def test_budget_chunks_long_prompts_and_decodes_go_first():
    s = make(budget=16)
    s.add(req("a", 3, max_tokens=10))
    plan, _ = step(s)
    assert [(p.request.id, p.n_new) for p in plan] == [("a", 3)]
    s.add(req("long", 40))
    plans = []
    while any(r.id == "long" and r.n_computed < 40 for r in s.running + list(s.waiting)):
        plan, outs = step(s)
        plans.append([(p.request.id, p.n_new) for p in plan])
        assert sum(n for _, n in plans[-1]) <= 16
        assert "long" not in [o.request_id for o in outs] or plans[-1][-1][1] and s.running
    assert plans[0] == [("a", 1), ("long", 15)]  # the decode first, the prompt takes the rest
    assert plans[1] == [("a", 1), ("long", 15)] and plans[2] == [("a", 1), ("long", 10)]


def test_join_leave_and_max_seqs():
    s = make(max_seqs=2)
    for i in range(3):
        s.add(req(f"r{i}", 2, max_tokens=2, start=10 * i))
    plan, _ = step(s)
    assert [p.request.id for p in plan] == ["r0", "r1"] and s.n_waiting == 1
    step(s)  # r0 and r1 reach max_tokens=2 and leave
    assert not s.running and s.n_waiting == 1
    plan, _ = step(s)
    assert [p.request.id for p in plan] == ["r2"]


def test_stop_tokens_and_length_limits():
    s = make(max_seq_len=10)
    s.add(req("stop", 2, max_tokens=9, stop_token_ids=frozenset({5})))
    s.add(req("len", 2, max_tokens=3, start=50))
    s.add(req("ctx", 8, max_tokens=100, start=80))
    reasons, counts = {}, {}
    for i in range(6):
        _, outs = step(s, token=lambda r: 5 if r.id == "stop" and len(r.output_ids) == 2 else 9)
        for o in outs:
            counts[o.request_id] = counts.get(o.request_id, 0) + 1
            if o.finished:
                reasons[o.request_id] = o.finish_reason
    assert reasons == {"stop": "stop", "len": "length", "ctx": "length"}
    assert counts == {"stop": 3, "len": 3, "ctx": 2}  # ctx: 8 prompt + 2 = the 10-token context
    assert s.cache.n_referenced == 0


def test_abort_waiting_and_running():
    s = make(max_seqs=1)
    s.add(req("a", 5, max_tokens=50))
    s.add(req("b", 5))
    step(s)
    assert s.cache.n_referenced > 0
    assert [r.id for r in s.abort("b")] == ["b"] and s.n_waiting == 0
    assert [r.finish_reason for r in s.abort("a")] == ["abort"]
    assert not s.has_unfinished and s.cache.n_referenced == 0


def test_n_choices_share_the_prompt_blocks():
    s = make()
    parent = req("n", 10, max_tokens=3)
    parent.forks = [Request("n", parent.prompt_ids, parent.params, index=i, forked_from=parent)
                    for i in (1, 2)]
    s.add(parent)
    plan, outs = step(s, token=lambda r: 20 + r.index)
    assert [(p.request.index, p.n_new) for p in plan] == [(0, 10)]
    assert sorted((o.index, o.new_ids[0]) for o in outs) == [(0, 20), (1, 21), (2, 22)]
    full = parent.blocks[:2]
    assert all(r.blocks[:2] == full for r in s.running)  # shared full blocks
    assert len({r.blocks[2] for r in s.running}) == 3  # own copies of the partial block
    while s.has_unfinished:
        step(s)
    assert s.cache.n_referenced == 0


def test_prefix_cache_reuses_full_blocks_of_an_earlier_request():
    s = make()
    s.add(req("first", 10, max_tokens=3))
    while s.has_unfinished:
        step(s)
    # the follow-up starts with the first request's prompt and its 3 generated tokens
    follow = Request("second", list(range(100, 110)) + [7, 7, 7] + [1, 2, 3, 4, 5],
                     SamplingParams(max_tokens=1))
    s.add(follow)
    plan, outs = step(s)
    assert follow.n_cached == 12 and plan[0].n_new == 18 - 12  # 3 full blocks were cached
    assert outs[0].n_cached == 12
    same = Request("third", list(range(100, 108)), SamplingParams(max_tokens=1))
    s.add(same)
    plan, _ = step(s)
    assert same.n_cached == 4  # a whole-prompt hit still computes its last block's tokens


def test_lru_eviction_keeps_the_pool_bounded():
    s = make(n_blocks=8)
    for i in range(5):  # each leaves 2 full cached blocks behind; the pool holds 8
        s.add(req(f"r{i}", 8, max_tokens=1, start=100 * i))
        while s.has_unfinished:
            step(s)
    assert s.cache.n_referenced == 0 and s.cache.n_cached <= 8
    s.add(req("again0", 9, max_tokens=1, start=0))  # r0's blocks were the least recently used
    step(s)
    s.add(req("again4", 9, max_tokens=1, start=400))
    plan, _ = step(s)
    assert plan[0].request.n_cached == 8  # r4's are still there


def test_a_dry_pool_preempts_the_newest_request():
    s = make(n_blocks=8, budget=32, max_seqs=2, max_seq_len=32)  # 8 blocks: one full context
    s.add(req("old", 8, max_tokens=12))  # 20 tokens = 5 blocks each; both need 10
    s.add(req("new", 8, max_tokens=12, start=300))
    step(s)
    assert len(s.running) == 2
    preempted = False
    while s.has_unfinished:
        step(s)
        if s.waiting and s.waiting[0].id == "new" and s.waiting[0].output_ids:
            preempted = True  # it kept what it generated, to be computed again later
            assert all(r.id != "new" for r in s.running)
    assert preempted and s.cache.n_referenced == 0


@pytest.mark.parametrize("bad", [0, 3])
def test_kv_cache_blocks_are_counted(bad):
    cache = KVCache(tiny_config(), 4, BS)
    blocks = [cache.allocate() for _ in range(bad)]
    assert cache.n_referenced == bad and cache.n_available == 4 - bad
    cache.release(blocks)
    assert cache.n_referenced == 0
