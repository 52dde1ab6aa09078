"""The engine: token ids in, token ids out, one batched step at a time. No threads, no I/O.

Owns: `Engine`, `EngineStats`. Imports: numpy, engine.*, kernels (one warm-up call). Used by:
server (from its engine thread), the CLI, tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.config import EngineConfig, ModelConfig
from engine.grammar import Grammar, mask_words
from engine.kv_cache import KVCache
from engine.model import Transformer
from engine.request import Request, RequestOutput
from engine.runner import ModelRunner
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.weights import Weights
from kernels import apply_token_mask


@dataclass(frozen=True)
class EngineStats:
    """What the engine holds and has done: all a server needs to report (`Engine.stats`)."""

    waiting: int = 0  # requests queued (or preempted and queued again)
    running: int = 0  # sequences holding cache blocks
    kv_blocks_used: int = 0  # held by running sequences
    kv_blocks_cached: int = 0  # registered in the prefix cache
    kv_blocks_total: int = 0
    last_step_tokens: int = 0  # tokens computed by the last step, drafts included
    tokens_drafted: int = 0  # ever
    tokens_accepted: int = 0  # ever
    preemptions: int = 0  # ever


class Engine:
    def __init__(self, cfg: ModelConfig, weights: Weights, config: EngineConfig = EngineConfig()):
        self.model_config = cfg
        self.config = config
        self.max_seq_len = min(config.max_seq_len, cfg.max_seq_len)
        n_blocks = config.kv_cache_mb * 2**20 // KVCache.bytes_per_block(cfg, config.block_size)
        if n_blocks * config.block_size < self.max_seq_len:
            raise ValueError(f"a KV cache of {config.kv_cache_mb} MB holds {n_blocks * config.block_size} "
                             f"tokens, less than one context of {self.max_seq_len}")
        self.cache = KVCache(cfg, n_blocks, config.block_size)
        self.model = Transformer(cfg, weights, self.max_seq_len)
        self.scheduler = Scheduler(config, self.cache, self.max_seq_len)
        self.runner = ModelRunner(self.model, self.cache)
        self.last_step_tokens = 0  # tokens computed by the last step (for metrics)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    n: int = 1, grammar: Grammar | None = None) -> None:
        """Queue a request for n choices. The prompt must leave room for a generated token.
        With a grammar, every choice is constrained by its own fork of it."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        if len(prompt_ids) >= self.max_seq_len:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit a context of "
                             f"{self.max_seq_len}")
        if not all(0 <= t < self.model_config.vocab_size for t in prompt_ids):
            raise ValueError("prompt holds a token id outside the vocabulary")
        if not 1 <= n <= self.config.max_seqs:
            raise ValueError(f"n={n} choices do not fit {self.config.max_seqs} sequences")
        parent = Request(request_id, list(prompt_ids), params, grammar=grammar)
        parent.forks = [Request(request_id, parent.prompt_ids, params, index=i, forked_from=parent,
                                grammar=None if grammar is None else grammar.fork())
                        for i in range(1, n)]
        self.scheduler.add(parent)

    def abort(self, request_id: str) -> bool:
        """Stop every choice of a request; its cache blocks are free for the next step."""
        return bool(self.scheduler.abort(request_id))

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    def request_ids(self) -> set[str]:
        """The ids of every request not finished yet."""
        return {r.id for r in self.scheduler.running} | {r.id for r in self.scheduler.waiting}

    def stats(self) -> EngineStats:
        s, c = self.scheduler, self.cache
        return EngineStats(s.n_waiting, len(s.running), c.n_referenced, c.n_cached, c.n_blocks,
                           self.last_step_tokens, s.n_drafted, s.n_accepted, s.n_preempted)

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once over the packed batch, and advance the requests."""
        plan = self.scheduler.schedule()
        self.last_step_tokens = sum(s.n_new + len(s.draft) for s in plan)
        sampled = self.runner.execute(plan)
        return self.scheduler.update(plan, sampled)

    def warmup(self) -> None:
        """Compile every kernel once (numba caches them on disk for the next start): a prompt,
        a greedy decode and a nucleus-sampled decode with penalties."""
        assert not self.has_unfinished, "warm up before serving requests"
        greedy = SamplingParams(temperature=0.0, max_tokens=2)
        sampled = SamplingParams(temperature=0.8, top_p=0.9, top_k=40, min_p=0.01, max_tokens=2,
                                 presence_penalty=0.1, repetition_penalty=1.1, seed=0,
                                 logit_bias=((0, 1.0),))
        self.add_request("warmup-0", [0, 1, 2], greedy)
        self.add_request("warmup-1", [0, 1], sampled)
        while self.has_unfinished:
            self.step()
        vocab = self.model_config.vocab_size  # the grammar mask, which no warm-up request uses
        apply_token_mask(np.zeros((1, vocab), np.float32), np.zeros(1, np.int64),
                         np.full((1, mask_words(vocab)), -1, np.int32))

    def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "gen"):
        """Run one request alone to the end, yielding each new token id (for the CLI and tests)."""
        self.add_request(request_id, prompt_ids, params)
        while self.has_unfinished:
            for out in self.step():
                if out.request_id == request_id:
                    yield from out.new_ids
