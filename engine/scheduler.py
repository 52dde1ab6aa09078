"""Continuous batching: which requests get how many tokens in the next step, and what a step's
sampled tokens do to them.

Owns: `Scheduler`, `ScheduledSeq`, `Sample`. Imports: engine.{config,request,kv_cache}.
Used by: engine.engine and engine.runner; tests drive it with a fake runner.

There are no prefill and decode phases: a request has `n_tokens` (prompt + generated) and
`n_computed` (in the cache), and each step hands out up to `max_batch_tokens` tokens so that
`n_computed` catches up. Running requests go first (a decode needs one token), then waiting ones
are admitted while there is room. A long prompt is cut into chunks across steps, so it never
freezes other requests' streams for longer than one step.

An admitted request first takes what the prefix cache holds of its prompt, and computes only
the rest. A request for n choices is admitted as a group: one computes the prompt, the others
share its blocks when it is done. When the cache pool runs dry, the newest running request is
preempted: it gives back its blocks and waits to be computed again.

A constrained request's grammar sees every token it gets. Where the grammar allows only one
continuation (the keys and punctuation of a JSON schema), those tokens are appended at once and
computed as one chunk in the next step, like a prompt chunk: fewer steps than tokens.

With what budget is left, decoding sequences may draft (engine.proposer): guessed next tokens
computed in the same step and verified by sampling (engine.runner). Drafts never preempt and
never delay another sequence's tokens; a rejected one leaves nothing behind: the sequence
advances over its accepted tokens only, the blocks its draft needed beyond them are given back,
and only blocks of accepted tokens enter the prefix cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from engine.config import EngineConfig
from engine.kv_cache import KVCache
from engine.proposer import Proposer
from engine.request import Request, RequestOutput, RequestState
from engine.sampling import TokenLogprob


@dataclass(frozen=True)
class ScheduledSeq:
    """`request` computes `n_new` tokens from position `request.n_computed` in this step, and
    after them its `draft` (when it decodes)."""

    request: Request
    n_new: int
    draft: tuple[int, ...] = ()

    @property
    def samples(self) -> bool:
        """True when this chunk reaches the last known token, so its logits give the next one."""
        return self.request.n_computed + self.n_new == self.request.n_tokens

    @property
    def sampling_requests(self) -> list[Request]:
        """Who samples from this chunk's logits: the request, plus its forks at the prompt's end."""
        if not self.samples:
            return []
        return [self.request] + [f for f in self.request.forks if f.awaiting_fork]


@dataclass(frozen=True)
class Sample:
    """What sampling gave a request: its accepted draft tokens and the one sampled after them
    (one token without a draft), and their logprobs if it asked for them."""

    request: Request
    tokens: list[int]
    logprobs: list[TokenLogprob] | None = None


class Scheduler:
    def __init__(self, config: EngineConfig, cache: KVCache, max_seq_len: int):
        self.config = config
        self.cache = cache
        self.max_seq_len = max_seq_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.proposer = Proposer(config.max_draft)
        self.n_drafted = 0  # draft tokens computed, ever
        self.n_accepted = 0  # of them, accepted
        self.n_preempted = 0  # sequences sent back to wait, ever

    def add(self, request: Request) -> None:
        """Queue a request; its forks (other choices) come along and are admitted with it."""
        assert 1 + len(request.forks) <= self.config.max_seqs, "more choices than sequences"
        self.waiting.append(request)

    def abort(self, request_id: str) -> list[Request]:
        """Drop every choice of a request wherever it is, releasing their blocks."""
        dropped = [r for r in self.waiting if r.id == request_id]
        for r in dropped:
            self.waiting.remove(r)
            r.finish_reason, r.grammar, r.state = "abort", None, RequestState.FINISHED
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
        for r in list(self.running):
            if budget == 0 or r not in self.running:  # r may have been preempted meanwhile
                continue
            n_new = 0 if r.awaiting_fork else min(r.n_tokens - r.n_computed, budget)
            if n_new > 0 and self._grow(r, r.n_computed + n_new):
                plan.append(ScheduledSeq(r, n_new))
                budget -= n_new
        plan = [s for s in plan if s.request in self.running]
        while self.waiting and budget > 0 and self._admit(self.waiting[0], budget):
            r = self.waiting.popleft()
            n_new = min(r.n_tokens - r.n_computed, budget)
            plan.append(ScheduledSeq(r, n_new))
            budget -= n_new
        return self._with_drafts(plan, budget)

    def _with_drafts(self, plan: list[ScheduledSeq], budget: int) -> list[ScheduledSeq]:
        """Let decoding sequences draft with the budget left, never taking another's blocks."""
        decoding = [(s.request, self._room(s.request) - 1) for s in plan
                    if s.n_new == 1 and s.samples and not s.request.forks]
        if not decoding or budget == 0:
            return plan
        drafts = self.proposer.drafts(decoding, sum(s.n_new for s in plan),
                                      sum(len(s.sampling_requests) for s in plan))
        out = []
        for s in plan:
            draft = drafts.get(s.request, ())[:budget]
            r = s.request
            while draft and self.cache.blocks_for(r.n_tokens + len(draft)) - len(r.blocks) > self.cache.n_available:
                draft = draft[:-1]
            if draft:
                r.blocks += [self.cache.allocate() for _ in range(
                    self.cache.blocks_for(r.n_tokens + len(draft)) - len(r.blocks))]
                budget -= len(draft)
                s = ScheduledSeq(r, s.n_new, tuple(draft))
            out.append(s)
        return out

    def _admit(self, r: Request, budget: int) -> bool:
        """Start r (and its forks) if there is room for them and the blocks of its first chunk;
        what the prefix cache holds of its prompt is not computed again."""
        size = 1 + len(r.forks)
        if len(self.running) + size > self.config.max_seqs:
            return False
        # Only blocks strictly inside the prompt: the last prompt token is always computed,
        # because its logits give the first new token.
        hits, chain = self.cache.lookup(r.all_ids()[:r.n_tokens - 1])
        n_computed = len(hits) * self.cache.block_size
        first = min(r.n_tokens - n_computed, budget)
        for b in hits:
            self.cache.retain(b)
        if self.cache.blocks_for(n_computed + first) - len(hits) + len(r.forks) > self.cache.n_available:
            self.cache.release(hits)
            return False
        r.blocks, r.chain, r.n_registered = hits, chain, len(hits)
        r.n_computed = r.n_cached = n_computed
        self._grow(r, n_computed + first)
        for f in r.forks:  # each fork's own copy of the prompt's last, partial block
            f.blocks = [self.cache.allocate()]
        self.running += [r] + r.forks
        for member in [r] + r.forks:
            member.state = RequestState.RUNNING
        return True

    def _grow(self, r: Request, n_tokens: int) -> bool:
        """Give r blocks for n_tokens, preempting the newest other request if the pool is dry;
        False if r itself had to make room (it is then waiting again)."""
        need = self.cache.blocks_for(n_tokens) - len(r.blocks)
        while need > self.cache.n_available:
            victim = next((v for v in reversed(self.running)
                           if v is not r and v.forked_from is None), r)
            self._preempt(victim)
            if victim is r:
                return False
        r.blocks += [self.cache.allocate() for _ in range(need)]
        return True

    def _preempt(self, r: Request) -> None:
        """Give back r's blocks; it (with its forks) waits at the front to be computed again."""
        self.n_preempted += 1
        for member in [r] + r.forks:  # forks not yet started go back with their parent
            self.running.remove(member)
            self.cache.release(member.blocks)
            member.blocks, member.n_computed, member.n_registered, member.chain = [], 0, 0, 0
            member.state = RequestState.WAITING
        if not r.output_ids:
            r.n_cached = 0
        self.waiting.appendleft(r)

    def update(self, plan: list[ScheduledSeq], samples: list[Sample]) -> list[RequestOutput]:
        """Advance the scheduled requests (over their accepted draft tokens too), start forks
        at their parent's prompt end, append the sampled (and grammar-forced) tokens, and finish
        (releasing the blocks) those that hit a stop, a limit, or the end of their grammar."""
        got = {s.request: s for s in samples}
        for seq in plan:
            r = seq.request
            accepted = len(got[r].tokens) - 1 if seq.draft else 0
            r.n_computed += seq.n_new + accepted
            if seq.draft:
                self.n_drafted += len(seq.draft)
                self.n_accepted += accepted
                if r.grammar is None or r.params.logprobs is None:  # forced drafts teach nothing
                    self.proposer.learn(r, len(seq.draft), accepted)
                keep = self.cache.blocks_for(r.n_computed + 1)  # the draft's surplus goes back
                self.cache.release(r.blocks[keep:])
                del r.blocks[keep:]
            self._register_full_blocks(r, seq.draft[:accepted])
        for s in samples:  # before any parent can finish and release what they share
            if s.request.awaiting_fork:
                self._fork(s.request)
        outputs = []
        for s in samples:
            r = s.request
            first = not r.output_ids
            new_ids, reason = self._append(r, s.tokens)
            if reason:
                self.running.remove(r)
                self._release(r, reason)
            outputs.append(RequestOutput(r.id, new_ids, reason, len(r.prompt_ids), r.index,
                                         s.logprobs, r.n_cached if first else 0))
        return outputs

    def _append(self, r: Request, tokens: list[int]) -> tuple[list[int], str | None]:
        """Append sampled tokens, advance r's grammar over them, and append what the grammar
        forces next (computed as one chunk in the next step); the new ids and a finish reason.
        Only the last token may end the sequence (the runner stops verifying at an end)."""
        r.output_ids += tokens
        token, g, p = tokens[-1], r.grammar, r.params
        if g is None or (token in p.stop_token_ids and not p.ignore_eos):
            return tokens, self._finish_reason(r, token)
        if not g.consume(tokens):
            return tokens, "error"
        reason = "stop" if g.is_done() else self._finish_reason(r, token)
        if reason or p.logprobs is not None:  # forced tokens have no logits, so no logprobs
            return tokens, reason
        forced = g.forced()[:self._room(r)]
        if forced and not g.consume(forced):
            return tokens, "error"
        r.output_ids += forced
        return [*tokens, *forced], "stop" if g.is_done() else ("length" if not self._room(r) else None)

    def _room(self, r: Request) -> int:
        """Tokens r may still generate before its max_tokens or the end of the context."""
        room = self.max_seq_len - r.n_tokens
        if r.params.max_tokens is not None:
            room = min(room, r.params.max_tokens - len(r.output_ids))
        return max(room, 0)

    def _register_full_blocks(self, r: Request, accepted: tuple[int, ...] = ()) -> None:
        """Enter r's newly full blocks in the prefix cache; `accepted` are the draft tokens
        just computed after r's known ones (appended a moment later)."""
        bs, known = self.cache.block_size, r.n_tokens
        while (r.n_registered + 1) * bs <= r.n_computed:
            j = r.n_registered
            tokens = [r.token(p) if p < known else accepted[p - known]
                      for p in range(j * bs, (j + 1) * bs)]
            r.chain = self.cache.register(r.blocks[j], r.chain, tokens)
            r.n_registered += 1

    def _fork(self, child: Request) -> None:
        """child shares its parent's full prompt blocks and copies the partial last one."""
        parent, bs = child.forked_from, self.cache.block_size
        n_full = len(child.prompt_ids) // bs
        shared = parent.blocks[:n_full]
        for b in shared:
            self.cache.retain(b)
        own = child.blocks
        if len(child.prompt_ids) % bs:
            self.cache.copy_block(parent.blocks[n_full], own[0])
            child.blocks = shared + own
        else:
            self.cache.release(own)
            child.blocks = shared
        child.n_computed = len(child.prompt_ids)
        child.n_registered, child.chain = parent.n_registered, parent.chain
        child.forked_from = None  # from now on a sequence of its own
        parent.forks.remove(child)

    def _finish_reason(self, r: Request, token: int) -> str | None:
        p = r.params
        if token in p.stop_token_ids and not p.ignore_eos:
            return "stop"
        return None if self._room(r) else "length"

    def _release(self, r: Request, reason: str) -> None:
        r.finish_reason, r.state = reason, RequestState.FINISHED
        self.cache.release(r.blocks)
        r.blocks = []
        r.grammar = None  # its matcher's memory goes with it
