"""A generation request's state as the engine sees it: token ids, progress, and how it ended.

Owns: `Request`, `RequestState`, `RequestOutput`. Imports: numpy, engine.{sampling,grammar,
proposer} (types). Used by: engine.*.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from engine.grammar import Grammar
from engine.sampling import SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from engine.proposer import Lookup


class RequestState(Enum):
    WAITING = "waiting"  # queued, or preempted (its cache given back) and queued again
    RUNNING = "running"  # holds cache blocks and is scheduled every step
    FINISHED = "finished"  # ended: finish_reason says how; holds nothing


@dataclass(eq=False)
class Request:
    """One sequence. `n_tokens` = prompt + generated ids; `n_computed` = how many are in the cache.

    A request for n choices is n `Request`s with the same id and indexes 0..n-1: index 0 computes
    the prompt, the others wait as its `forks` and copy its cache when the prompt is done.
    A `grammar` (structured output) has consumed exactly `output_ids`; preemption, which only
    drops the cache, leaves it as it is. `lookup` is the proposer's index of the request's
    tokens, `acceptance` how often its drafted tokens were accepted lately.
    """

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    index: int = 0
    output_ids: list[int] = field(default_factory=list)
    n_computed: int = 0
    blocks: list[int] = field(default_factory=list)  # KV-cache block table
    n_registered: int = 0  # leading full blocks entered in the prefix cache
    chain: int = 0  # prefix-cache chain id of the last registered block
    n_cached: int = 0  # prompt tokens whose KV came from the prefix cache
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" (grammar broke)
    grammar: Grammar | None = None
    forks: list[Request] = field(default_factory=list)
    forked_from: Request | None = None
    state: RequestState = RequestState.WAITING
    lookup: Lookup | None = None
    acceptance: float = 0.5
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        seed = self.params.seed
        # Choice i of a seeded request gets its own stream, the same on every run.
        self.rng = np.random.default_rng(None if seed is None else (seed, self.index))

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def awaiting_fork(self) -> bool:
        """A choice waiting for its parent's prompt, whose blocks it will share."""
        return self.forked_from is not None

    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def token(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def token_counts(self, more: list[int] = ()) -> dict[int, int]:
        """Every token seen so far (and `more` after them) -> how often it was generated (0 if
        only in the prompt)."""
        counts = dict.fromkeys(self.prompt_ids, 0)
        counts.update(Counter(self.output_ids + list(more)))
        return counts


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one choice of a request: its new token and whether it ended."""

    request_id: str
    new_ids: list[int]
    finish_reason: str | None = None
    n_prompt: int = 0
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    n_cached: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
