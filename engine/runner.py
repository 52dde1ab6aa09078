"""Runs one scheduled step: pack the tokens, run the forward pass, sample the next tokens.

Owns: `ModelRunner`. Imports: numpy, engine.{model,sampling,batch,kv_cache,scheduler}.
Used by: engine.engine.
"""

from __future__ import annotations

from engine.batch import StepBatch
from engine.kv_cache import KVCache
from engine.model import Transformer, forward
from engine.sampling import sample
from engine.scheduler import ScheduledSeq


class ModelRunner:
    def __init__(self, model: Transformer, cache: KVCache):
        self.model = model
        self.cache = cache

    def execute(self, plan: list[ScheduledSeq]) -> dict[str, int]:
        """Compute the plan's tokens into the cache; request id -> next token for every sequence
        whose chunk reaches its last known token (a prompt chunk mid-way samples nothing)."""
        if not plan:
            return {}
        seqs = []
        for s in plan:
            r = s.request
            ids = [r.token(p) for p in range(r.n_computed, r.n_computed + s.n_new)]
            seqs.append((ids, r.n_computed, r.slot))
        sampling = [i for i, s in enumerate(plan) if s.samples]
        batch = StepBatch.pack(seqs, logits_of=sampling)
        logits = forward(self.model, self.cache, batch)  # (R, V)
        requests = [plan[i].request for i in sampling]
        tokens = sample(logits, requests) if requests else []
        return {r.id: int(t) for r, t in zip(requests, tokens)}
