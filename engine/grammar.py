"""What the engine asks of a grammar: the narrow interface of constrained decoding.

Owns: `Grammar`, `mask_words`. Imports: numpy, stdlib. Used by: engine.{request,sampling,
scheduler}; server.grammar implements it with llguidance.

The engine still sees token ids only. A request may carry a grammar (structured output, tool
calls); each step the sampler asks it which tokens may come next (a bitmask) and removes the
others from that row's logits; the scheduler feeds it every token the request gets, sampled
or forced. A grammar belongs to one sequence: the n choices of a request each fork their own.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


def mask_words(vocab_size: int) -> int:
    """Width of a token bitmask in int32 words: bit v % 32 of word v // 32 is token v."""
    return (vocab_size + 31) // 32


class Grammar(Protocol):
    def fill_mask(self, mask: np.ndarray) -> None:
        """Write the tokens allowed next into mask, (mask_words(V),) int32, a set bit allowed.
        The end-of-sequence tokens are allowed exactly when the grammar is complete."""

    def consume(self, token_ids: list[int]) -> bool:
        """Advance over these tokens; False if the grammar rejects one (it is then broken and
        the request ends with finish reason "error")."""

    def forced(self) -> list[int]:
        """Tokens the grammar allows as the only continuation from here (maybe none): they are
        appended without sampling. Not consumed yet."""

    def is_done(self) -> bool:
        """True when nothing may follow: the sequence ends here, finish reason "stop"."""

    def rollback(self, n_tokens: int) -> None:
        """Undo the last n_tokens consumed (for drafts that were not accepted)."""

    def fork(self) -> Grammar:
        """An independent copy in the same state (for the other choices of a request)."""
