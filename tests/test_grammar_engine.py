"""Constrained decoding in the engine, with a grammar written in the test (a set of allowed token
sequences): the mask kernel, forced tokens computed as one chunk, the end of the grammar, limits,
errors, n choices, preemption, abort, and free sequences beside constrained ones."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from engine import Engine, EngineConfig, SamplingParams
from engine.grammar import mask_words
from engine.request import Request
from engine.scheduler import Sample
from kernels import apply_token_mask
from tests.conftest import tiny_config, tiny_weights
from tests.test_scheduler import make, step


class Choices:
    """A grammar that accepts exactly one of the given token sequences, then ends."""

    def __init__(self, sequences: list[list[int]], vocab: int, eos: int | None = None):
        self.sequences, self.vocab, self.eos = [list(s) for s in sequences], vocab, eos
        self.seen: list[int] = []
        self.broken = False

    def _alive(self) -> list[list[int]]:
        n = len(self.seen)
        return [s for s in self.sequences if s[:n] == self.seen]

    def _next(self) -> set[int]:
        n = len(self.seen)
        return {s[n] for s in self._alive() if len(s) > n}

    def fill_mask(self, mask: np.ndarray) -> None:
        mask[:] = 0
        allowed = self._next() | ({self.eos} if self.eos is not None and self._complete() else set())
        for t in allowed:
            mask[t >> 5] |= np.int32(np.uint32(1 << (t & 31)).view(np.int32))

    def _complete(self) -> bool:
        return any(len(s) == len(self.seen) for s in self._alive())

    def consume(self, token_ids: list[int]) -> bool:
        for t in token_ids:
            if self.broken or t not in self._next():
                self.broken = True
                return False
            self.seen.append(t)
        return True

    def forced(self) -> list[int]:
        out, probe = [], Choices(self.sequences, self.vocab)
        probe.seen = list(self.seen)
        while not probe._complete() and len(nxt := probe._next()) == 1:
            t = nxt.pop()
            out.append(t)
            probe.seen.append(t)
        return out

    def is_done(self) -> bool:
        return self._complete() and not self._next()

    def rollback(self, n_tokens: int) -> None:
        del self.seen[len(self.seen) - n_tokens:]

    def fork(self) -> Choices:
        twin = Choices(self.sequences, self.vocab, self.eos)
        twin.seen = list(self.seen)
        return twin


def test_token_mask_kernel_matches_reference():
    rng = np.random.default_rng(0)
    vocab = 77  # not a multiple of 32: the last word is partial
    logits = rng.standard_normal((3, vocab)).astype(np.float32)
    allowed = [rng.random(vocab) < 0.3 for _ in range(2)]
    masks = np.zeros((2, mask_words(vocab)), np.int32)
    for j, a in enumerate(allowed):
        bits = np.zeros(mask_words(vocab) * 32, np.uint8)
        bits[:vocab] = a
        masks[j] = np.packbits(bits, bitorder="little").view(np.int32)
    ref = logits.copy()
    for j, row in enumerate([2, 0]):
        ref[row, ~allowed[j]] = -np.inf
    apply_token_mask(logits, np.array([2, 0]), masks)
    assert np.array_equal(logits, ref)


def _grammar_req(rid, sequences, max_tokens=10, **params):
    r = Request(rid, list(range(100, 105)), SamplingParams(max_tokens=max_tokens, **params))
    r.grammar = Choices(sequences, 64)
    return r


def test_forced_tokens_come_in_one_output_and_are_computed_as_one_chunk():
    s = make()
    r = _grammar_req("g", [[7, 8, 9, 10]])  # after the sampled 7, the rest is forced
    s.add(r)
    _, outs = step(s, token=7)
    assert outs[0].new_ids == [7, 8, 9, 10] and outs[0].finish_reason == "stop"
    s = make()
    r = _grammar_req("g", [[7, 8, 9, 1], [7, 8, 9, 2]])  # 8, 9 forced, then a choice
    s.add(r)
    _, outs = step(s, token=7)
    assert outs[0].new_ids == [7, 8, 9] and outs[0].finish_reason is None
    plan, outs = step(s, token=2)
    assert plan[0].n_new == 3  # the three new tokens, computed together
    assert outs[0].new_ids == [2] and outs[0].finish_reason == "stop"
    assert r.output_ids == [7, 8, 9, 2] and s.cache.n_referenced == 0


def test_limits_cut_forced_tokens_and_a_rejected_token_is_an_error():
    s = make()
    r = _grammar_req("g", [[7, 8, 9, 10]], max_tokens=3)
    s.add(r)
    _, outs = step(s, token=7)
    assert outs[0].new_ids == [7, 8, 9] and outs[0].finish_reason == "length"
    s = make()
    s.add(_grammar_req("bad", [[7, 8]]))
    _, outs = step(s, token=5)  # a token the grammar does not allow (a broken mask)
    assert outs[0].finish_reason == "error" and not s.has_unfinished
    assert s.cache.n_referenced == 0


def test_logprobs_turn_forcing_off_and_eos_ends_a_complete_grammar():
    s = make()
    r = _grammar_req("g", [[7, 8, 9]], logprobs=0)
    s.add(r)
    _, outs = step(s, token=7)
    assert outs[0].new_ids == [7]  # each token sampled, so each gets its logprob
    s = make()
    r = _grammar_req("e", [[7], [7, 8]], stop_token_ids=frozenset({3}))
    s.add(r)
    step(s, token=7)
    _, outs = step(s, token=3)  # complete, and the model chose to end
    assert outs[0].finish_reason == "stop" and r.output_ids == [7, 3]


def test_abort_and_finish_let_the_grammar_go():
    s = make()
    r = _grammar_req("a", [[7, 8, 1], [7, 8, 2]])
    g = weakref.ref(r.grammar)
    s.add(r)
    step(s, token=7)
    s.abort("a")
    del r
    gc.collect()
    assert g() is None and s.cache.n_referenced == 0
    waiting = _grammar_req("w", [[1]])
    g = weakref.ref(waiting.grammar)
    s.add(waiting)
    s.abort("w")
    del waiting
    gc.collect()
    assert g() is None


def test_preemption_keeps_the_grammar_state():
    s = make(n_blocks=8, budget=32, max_seqs=2, max_seq_len=32)
    old = Request("old", list(range(8)), SamplingParams(max_tokens=12))
    seqs = [[5] * 12, [6] * 12]
    new = _grammar_req("new", seqs, max_tokens=12, logprobs=0)  # one token a step
    new.prompt_ids = list(range(300, 308))
    s.add(old)
    s.add(new)
    preempted = False
    while s.has_unfinished:
        plan = s.schedule()
        preempted |= any(w.id == "new" and w.output_ids for w in s.waiting)
        samples = [Sample(r, [6 if r.id == "new" else 7])
                   for seq in plan for r in seq.sampling_requests]
        s.update(plan, samples)
    assert preempted and new.output_ids == [6] * 12 and new.finish_reason == "stop"


# ---------------------------------------------------------------- on a tiny model


def _engine(**cfg):
    c = tiny_config(vocab_size=64)
    return Engine(c, tiny_weights(c), EngineConfig(max_seqs=cfg.pop("max_seqs", 4), max_seq_len=128,
                                                   max_batch_tokens=cfg.pop("budget", 64), **cfg))


def _run(engine, requests):
    """requests: (id, prompt, params, grammar, n). Returns ids per (id, index), reasons, steps."""
    for rid, prompt, params, grammar, n in requests:
        engine.add_request(rid, prompt, params, n, grammar)
    out, reasons, steps = {}, {}, 0
    while engine.has_unfinished:
        steps += 1
        for o in engine.step():
            out.setdefault((o.request_id, o.index), []).extend(o.new_ids)
            if o.finished:
                reasons[(o.request_id, o.index)] = o.finish_reason
    return out, reasons, steps


SEQS = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [3, 4, 5, 6, 7, 20, 21, 22, 23], [30, 31, 32, 33, 34, 35]]


@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_tokens=30),
                                    SamplingParams(temperature=1.0, top_p=0.9, seed=3, max_tokens=30)])
def test_constrained_and_free_sequences_share_steps(params):
    free = SamplingParams(temperature=0.8, seed=11, max_tokens=12)
    alone, _, _ = _run(_engine(), [("free", [1, 2, 3], free, None, 1)])
    out, reasons, _ = _run(_engine(budget=8), [
        ("free", [1, 2, 3], free, None, 1),
        ("g", [4, 5, 6, 7], params, Choices(SEQS, 64), 3),
        ("free2", [9] * 9, SamplingParams(temperature=0, max_tokens=5), None, 1)])
    assert out[("free", 0)] == alone[("free", 0)]  # a constrained neighbour changes nothing
    for i in range(3):
        assert out[("g", i)] in SEQS and reasons[("g", i)] == "stop"


def test_forcing_takes_fewer_steps_and_gives_the_same_tokens():
    params = SamplingParams(temperature=0, max_tokens=30)
    forced, _, steps = _run(_engine(), [("g", [4, 5, 6], params, Choices(SEQS, 64), 1)])
    sampled, _, steps_sampled = _run(_engine(), [
        ("g", [4, 5, 6], SamplingParams(temperature=0, max_tokens=30, logprobs=0),
         Choices(SEQS, 64), 1)])
    assert forced == sampled and steps < steps_sampled
    assert steps <= 3  # the prompt, the branch after token 7, the chunk of the rest
