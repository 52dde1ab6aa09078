"""Sampling parameters and the per-step sampling pipeline over a batch of logit rows.

Owns: `SamplingParams`, `sample`. Imports: numpy, kernels, engine.grammar, engine.request
(types only).
Used by: engine.runner; server builds `SamplingParams` from requests.

Order (DESIGN.md): logit_bias -> grammar mask -> repetition / presence / frequency penalties ->
temperature -> top-k -> top-p -> min-p -> draw. Each row gets one uniform number from its own
request's RNG, so a seeded request samples the same tokens whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.grammar import mask_words
from kernels import apply_logit_bias, apply_penalties, apply_token_mask, sample_rows

if TYPE_CHECKING:
    from engine.request import Request, TokenLogprob


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops (token ids only; text lives in server)."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    max_tokens: int | None = None  # None = until a stop token or the end of the context
    min_tokens: int = 0
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: the sampled token's and the top k

    def __post_init__(self) -> None:
        assert self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0
        assert 0 <= self.min_p <= 1 and self.repetition_penalty > 0

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


def sample(logits: np.ndarray, requests: list[Request]) -> np.ndarray:
    """One token id per row of logits (R, V) f32 (changed in place); row r belongs to requests[r]."""
    _bias_and_min_tokens(logits, requests)
    _grammar_mask(logits, requests)
    _penalize(logits, requests)
    params = [r.params for r in requests]
    out = np.empty(len(requests), np.int64)
    sample_rows(
        logits,
        np.array([p.temperature for p in params], np.float32),
        np.array([p.top_k for p in params], np.int64),
        np.array([p.top_p for p in params], np.float32),
        np.array([p.min_p for p in params], np.float32),
        np.array([r.rng.random() for r in requests], np.float64),
        out,
    )
    return out


def _bias_and_min_tokens(logits: np.ndarray, requests: list[Request]) -> None:
    rows, ids, values = [], [], []
    for row, r in enumerate(requests):
        for token, value in r.params.logit_bias:
            rows.append(row), ids.append(token), values.append(value)
        if len(r.output_ids) < r.params.min_tokens:  # stop tokens are not allowed yet
            for token in r.params.stop_token_ids:
                rows.append(row), ids.append(token), values.append(-np.inf)
    if rows:
        apply_logit_bias(logits, np.array(rows, np.int64), np.array(ids, np.int64),
                         np.array(values, np.float32))


def _grammar_mask(logits: np.ndarray, requests: list[Request]) -> None:
    """Rows of constrained requests keep only the tokens their grammar allows next."""
    rows = [row for row, r in enumerate(requests) if r.grammar is not None]
    if not rows:
        return
    masks = np.zeros((len(rows), mask_words(logits.shape[1])), np.int32)
    for j, row in enumerate(rows):
        requests[row].grammar.fill_mask(masks[j])
    apply_token_mask(logits, np.array(rows, np.int64), masks)


def _penalize(logits: np.ndarray, requests: list[Request]) -> None:
    if not any(r.params.has_penalties for r in requests):
        return
    row_ptr, ids, counts = [0], [], []
    for r in requests:
        if r.params.has_penalties:
            seen = r.token_counts()
            ids.extend(seen), counts.extend(seen.values())
        row_ptr.append(len(ids))
    p = [r.params for r in requests]
    apply_penalties(logits, np.array(row_ptr, np.int64), np.array(ids, np.int64),
                    np.array(counts, np.int64),
                    np.array([x.presence_penalty for x in p], np.float32),
                    np.array([x.frequency_penalty for x in p], np.float32),
                    np.array([x.repetition_penalty for x in p], np.float32))


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    """Log-probability of token under the model's own distribution (the logits before any
    sampling adjustment), with the n_top most likely tokens; logits (V,) f32."""
    from engine.request import TokenLogprob

    z = logits.astype(np.float64)
    logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))  # (V,) log-softmax
    top = np.argsort(-logp, kind="stable")[:n_top] if n_top else []
    return TokenLogprob(token, float(logp[token]), tuple((int(t), float(logp[t])) for t in top))
