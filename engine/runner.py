"""Runs one scheduled step: pack the tokens, run the forward pass, sample the next tokens and
verify the drafted ones.

Owns: `ModelRunner`. Imports: numpy, engine.{model,sampling,batch,kv_cache,scheduler,request}.
Used by: engine.engine.

A sequence with a draft computes its last token and the drafted ones in one chunk, and gets a
row of logits for each. Row j is exactly what a step of its own would give after the first j
drafted tokens (a row's result never depends on the rest of the step), so sampling it with the
sequence's next uniform number gives exactly the token decoding without drafts would give. The
drafted token is accepted when it is that token; the first one that differs is replaced by it,
and nothing after it is looked at. The sequence's RNG advances once per token it gets, as it
would without drafts.
"""

from __future__ import annotations

import numpy as np

from engine.batch import StepBatch
from engine.kv_cache import KVCache
from engine.model import Transformer, forward
from engine.request import Request
from engine.sampling import SampleRow, TokenLogprob, sample, token_logprob
from engine.scheduler import Sample, ScheduledSeq


class ModelRunner:
    def __init__(self, model: Transformer, cache: KVCache):
        self.model = model
        self.cache = cache

    def execute(self, plan: list[ScheduledSeq]) -> list[Sample]:
        """Compute the plan's tokens (drafts included) into the cache and sample for every
        sequence whose chunk reaches its last known token (a prompt chunk mid-way samples
        nothing); a sequence with a draft may get several tokens."""
        if not plan:
            return []
        seqs, n_logits = [], []
        for s in plan:
            r = s.request
            tokens = [r.token(p) for p in range(r.n_computed, r.n_computed + s.n_new)]
            seqs.append((tokens + list(s.draft), r.n_computed, r.blocks))
            n_logits.append(1 + len(s.draft) if s.samples else 0)
        batch = StepBatch.pack(seqs, self.cache.block_size, n_logits=n_logits)
        logits = forward(self.model, self.cache, batch)  # (R, V)
        rows, first = [], 0
        for s, k in zip(plan, n_logits):
            for r in s.sampling_requests:  # forks sample from their parent's first row
                rows.append((r, list(range(first, first + k)) if r is s.request else [first],
                             s.draft if r is s.request else ()))
            first += k
        return verify(logits, rows)


def verify(logits: np.ndarray, rows: list[tuple[Request, list[int], tuple[int, ...]]]) -> list[Sample]:
    """Sample each request's first row; while the sampled token is its next drafted one (and
    nothing would stop it there), sample the next row too. rows: (request, its logit rows, its
    draft). Grammars advance over the tokens as they are accepted and are put back at the end:
    the scheduler feeds them every token it appends."""
    tokens: dict[Request, list[int]] = {r: [] for r, _, _ in rows}
    logprobs: dict[Request, list[TokenLogprob]] = {r: [] for r, _, _ in rows}
    consumed: dict[Request, int] = {}
    active, level = rows, 0
    while active:
        x = logits[np.asarray([rs[level] for _, rs, _ in active])]  # a copy: sampling changes it
        raw = {i: x[i].copy() for i, (r, _, _) in enumerate(active) if r.params.logprobs is not None}
        picked = sample(x, [_row(r, tokens[r]) for r, _, _ in active])
        going = []
        for i, ((r, rs, draft), t) in enumerate(zip(active, picked)):
            t = int(t)
            tokens[r].append(t)
            if i in raw:
                logprobs[r].append(token_logprob(raw[i], t, r.params.logprobs))
            if level < len(draft) and t == draft[level] and _continues(r, t, consumed):
                going.append((r, rs, draft))
        active, level = going, level + 1
    for r, n in consumed.items():
        r.grammar.rollback(n)
    return [Sample(r, tokens[r], logprobs[r] if r.params.logprobs is not None else None)
            for r, _, _ in rows]


def _row(r: Request, accepted: list[int]) -> SampleRow:
    """r's next token, after the tokens it already accepted in this step."""
    p = r.params
    return SampleRow(p, r.rng.random(), len(r.output_ids) + len(accepted),
                     r.token_counts(accepted) if p.has_penalties else None, r.grammar)


def _continues(r: Request, token: int, consumed: dict[Request, int]) -> bool:
    """Whether decoding without drafts would sample r's next token right after this one: not
    after a stop token, the end of its grammar, or tokens its grammar forces (which the scheduler
    appends unsampled)."""
    p = r.params
    if token in p.stop_token_ids and not p.ignore_eos:
        return False
    g = r.grammar
    if g is None:
        return True
    if not g.consume([token]):
        return False
    consumed[r] = consumed.get(r, 0) + 1
    return not g.is_done() and (p.logprobs is not None or not g.forced())
