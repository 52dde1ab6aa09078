"""A generation request's state as the engine sees it: token ids, progress, and how it ended.

Owns: `Request`, `RequestOutput`. Imports: numpy, engine.sampling (types). Used by: engine.*.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from engine.sampling import SamplingParams


@dataclass
class Request:
    """`n_tokens` = prompt + generated ids; `n_computed` = how many of them are in the KV cache."""

    id: str
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    n_computed: int = 0
    slot: int | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.params.seed)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def token_counts(self) -> dict[int, int]:
        """Every token seen so far -> how often it was generated (0 if only in the prompt)."""
        counts = dict.fromkeys(self.prompt_ids, 0)
        counts.update(Counter(self.output_ids))
        return counts


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request: its new token (if any) and whether it ended."""

    request_id: str
    new_ids: list[int]
    finish_reason: str | None = None
    n_prompt: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
