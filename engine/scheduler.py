"""Continuous batching: which requests get how many tokens in the next step, and what a step's
sampled tokens do to them.

Owns: `Scheduler`, `ScheduledSeq`, `Sample`. Imports: engine.{config,request,kv_cache}.
Used by: engine.engine and engine.runner; tests drive it with a fake runner.

There are no prefill and decode phases: a request has `n_tokens` (prompt + generated) and
`n_computed` (in the cache), and each step hands out up to `max_batch_tokens` tokens so that
`n_computed` catches up. Running requests go first (a decode needs one token), then waiting ones
are admitted while there are free cache slots. A long prompt is cut into chunks across steps,
so it never freezes other requests' streams for longer than one step. A request for n choices
is admitted as a group: one computes the prompt, the others copy its cache when it is done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engine.config import EngineConfig
from engine.kv_cache import KVCache
from engine.request import Request, RequestOutput, TokenLogprob


@dataclass(frozen=True)
class ScheduledSeq:
    """`request` computes `n_new` tokens from position `request.n_computed` in this step."""

    request: Request
    n_new: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so its logits give the next one."""
        return self.request.n_computed + self.n_new == self.request.n_tokens

    @property
    def decodes(self) -> bool:
        """One generated token (not prompt): computed on the decode path."""
        return self.n_new == 1 and self.request.n_computed >= len(self.request.prompt_ids)

    @property
    def sampling_requests(self) -> list[Request]:
        """Who samples from this chunk's logits: the request, plus its forks at the prompt's end."""
        if not self.samples:
            return []
        return [self.request] + [f for f in self.request.forks if f.awaiting_fork]


@dataclass(frozen=True)
class Sample:
    request: Request
    token: int
    logprob: TokenLogprob | None = None


class Scheduler:
    def __init__(self, config: EngineConfig, cache: KVCache):
        self.config = config
        self.cache = cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        """Queue a request; its forks (other choices) come along and are admitted with it."""
        assert 1 + len(request.forks) <= self.config.max_seqs, "more choices than sequences"
        self.waiting.append(request)

    def abort(self, request_id: str) -> list[Request]:
        """Drop every choice of a request wherever it is, freeing their slots."""
        dropped = [r for r in self.waiting if r.id == request_id]
        for r in dropped:
            self.waiting.remove(r)
        running = [r for r in self.running if r.id == request_id]
        for r in running:
            self.running.remove(r)
            self._release(r, "abort")
        return dropped + running

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def n_waiting(self) -> int:
        return len(self.waiting)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.config.max_batch_tokens
        plan = []
        for r in self.running:
            if budget == 0:
                break
            n_new = 0 if r.awaiting_fork else min(r.n_tokens - r.n_computed, budget)
            if n_new > 0:
                plan.append(ScheduledSeq(r, n_new))
                budget -= n_new
        while self.waiting and budget > 0 and self._fits(self.waiting[0]):
            r = self.waiting.popleft()
            for member in [r] + r.forks:
                member.slot = self.cache.alloc()
                self.running.append(member)
            n_new = min(r.n_tokens - r.n_computed, budget)
            plan.append(ScheduledSeq(r, n_new))
            budget -= n_new
        return plan

    def _fits(self, r: Request) -> bool:
        size = 1 + len(r.forks)
        return self.cache.n_free >= size and len(self.running) + size <= self.config.max_seqs

    def update(self, plan: list[ScheduledSeq], samples: list[Sample]) -> list[RequestOutput]:
        """Advance the scheduled requests, start forks at their parent's prompt end, append the
        sampled tokens, and finish (freeing the slot) those that hit a stop token or a limit."""
        for seq in plan:
            seq.request.n_computed += seq.n_new
        for s in samples:  # before any parent can finish and free the slot they copy from
            r = s.request
            if r.awaiting_fork:
                self.cache.copy_prefix(r.forked_from.slot, r.slot, len(r.prompt_ids))
                r.n_computed = len(r.prompt_ids)
        outputs = []
        for s in samples:
            r = s.request
            r.output_ids.append(s.token)
            reason = self._finish_reason(r, s.token)
            if reason:
                self.running.remove(r)
                self._release(r, reason)
            outputs.append(RequestOutput(r.id, [s.token], reason, len(r.prompt_ids), r.index,
                                         None if s.logprob is None else [s.logprob]))
        return outputs

    def _finish_reason(self, r: Request, token: int) -> str | None:
        p = r.params
        if token in p.stop_token_ids and not p.ignore_eos:
            return "stop"
        if p.max_tokens is not None and len(r.output_ids) >= p.max_tokens:
            return "length"
        if r.n_tokens >= self.cache.max_seq_len:
            return "length"
        return None

    def _release(self, r: Request, reason: str) -> None:
        r.finish_reason = reason
        if r.slot is not None:
            self.cache.free(r.slot)
            r.slot = None
