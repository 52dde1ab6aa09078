"""Continuous batching: which requests get how many tokens in the next step, and what a step's
sampled tokens do to them.

Owns: `Scheduler`, `ScheduledSeq`. Imports: engine.{config,request,kv_cache}.
Used by: engine.engine; tests drive it with a fake runner.

There are no prefill and decode phases: a request has `n_tokens` (prompt + generated) and
`n_computed` (in the cache), and each step hands out up to `max_batch_tokens` tokens so that
`n_computed` catches up. Running requests go first (a decode needs one token), then waiting ones
are admitted while there are free cache slots. A long prompt is cut into chunks across steps,
so it never freezes other requests' streams for longer than one step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engine.config import EngineConfig
from engine.kv_cache import KVCache
from engine.request import Request, RequestOutput


@dataclass(frozen=True)
class ScheduledSeq:
    """`request` computes `n_new` tokens from position `request.n_computed` in this step."""

    request: Request
    n_new: int

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so its logits give the next one."""
        return self.request.n_computed + self.n_new == self.request.n_tokens


class Scheduler:
    def __init__(self, config: EngineConfig, cache: KVCache):
        self.config = config
        self.cache = cache
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Drop a request wherever it is, freeing its slot; returns it if it was known."""
        for queue in (self.waiting, self.running):
            for r in queue:
                if r.id == request_id:
                    queue.remove(r)
                    self._release(r, "abort")
                    return r
        return None

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.config.max_batch_tokens
        plan = []
        for r in self.running:
            n_new = min(r.n_tokens - r.n_computed, budget)
            if n_new > 0:
                plan.append(ScheduledSeq(r, n_new))
                budget -= n_new
        while (self.waiting and budget > 0 and self.cache.n_free
               and len(self.running) < self.config.max_seqs):
            r = self.waiting.popleft()
            r.slot = self.cache.alloc()
            self.running.append(r)
            n_new = min(r.n_tokens - r.n_computed, budget)
            plan.append(ScheduledSeq(r, n_new))
            budget -= n_new
        return plan

    def update(self, plan: list[ScheduledSeq], sampled: dict[str, int]) -> list[RequestOutput]:
        """Advance each scheduled request and append its sampled token; finish and free the
        ones that hit a stop token or their length limit."""
        outputs = []
        for seq in plan:
            r = seq.request
            r.n_computed += seq.n_new
            if r.id not in sampled:
                continue
            token = sampled[r.id]
            r.output_ids.append(token)
            reason = self._finish_reason(r, token)
            if reason:
                self.running.remove(r)
                self._release(r, reason)
            outputs.append(RequestOutput(r.id, [token], reason, len(r.prompt_ids)))
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
