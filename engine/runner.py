"""Runs one scheduled step: pack the tokens, run the forward pass, sample the next tokens.

Owns: `ModelRunner`. Imports: numpy, engine.{model,sampling,batch,kv_cache,scheduler}.
Used by: engine.engine.
"""

from __future__ import annotations

import numpy as np

from engine.batch import StepBatch
from engine.kv_cache import KVCache
from engine.model import Transformer, forward
from engine.sampling import sample, token_logprob
from engine.scheduler import Sample, ScheduledSeq


class ModelRunner:
    def __init__(self, model: Transformer, cache: KVCache):
        self.model = model
        self.cache = cache

    def execute(self, plan: list[ScheduledSeq]) -> list[Sample]:
        """Compute the plan's tokens into the cache and sample a next token for every sequence
        whose chunk reaches its last known token (a prompt chunk mid-way samples nothing)."""
        if not plan:
            return []
        seqs = []
        for s in plan:
            r = s.request
            seqs.append(([r.token(p) for p in range(r.n_computed, r.n_computed + s.n_new)],
                         r.n_computed, r.blocks))
        sampling = [i for i, s in enumerate(plan) if s.samples]
        batch = StepBatch.pack(seqs, self.cache.block_size, logits_of=sampling)
        logits = forward(self.model, self.cache, batch)  # (R, V)
        rows, requests = [], []
        for row, i in enumerate(sampling):
            for r in plan[i].sampling_requests:  # forks sample from their parent's row
                rows.append(row)
                requests.append(r)
        if not requests:
            return []
        logits = logits[np.asarray(rows)]  # (R', V), a copy: sampling changes it in place
        raw = {j: logits[j].copy() for j, r in enumerate(requests) if r.params.logprobs is not None}
        tokens = sample(logits, requests)
        return [Sample(r, int(t), token_logprob(raw[j], int(t), r.params.logprobs) if j in raw else None)
                for j, (r, t) in enumerate(zip(requests, tokens))]
