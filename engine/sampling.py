"""Sampling parameters and the sampling pipeline over one step's rows of logits.

Owns: `SamplingParams`, `SampleRow`, `TokenLogprob`, `sample`, `token_logprob`.
Imports: numpy, kernels, engine.grammar. Used by: engine.runner; server builds `SamplingParams`.

Order (DESIGN.md): logit_bias -> grammar mask -> repetition / presence / frequency penalties ->
temperature -> top-k -> top-p -> min-p -> draw. A row is everything its token depends on
(`SampleRow`): the parameters, the tokens seen so far, the grammar's state and one uniform
number drawn from its own request's RNG, so a seeded request samples the same tokens whatever
else is in the batch, and a drafted position samples exactly what a step of its own would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.grammar import Grammar, mask_words
from kernels import apply_logit_bias, apply_penalties, apply_token_mask, sample_rows


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


@dataclass(frozen=True)
class SampleRow:
    """What one row of logits is sampled with."""

    params: SamplingParams
    uniform: float  # the row's draw, from its request's RNG
    n_generated: int  # tokens the request generated before this one (min_tokens)
    counts: dict[int, int] | None = None  # token -> times generated, prompt tokens 0 (penalties)
    grammar: Grammar | None = None  # in the state this token continues from


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of a generated token under the model, and the `top` most likely tokens."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def sample(logits: np.ndarray, rows: list[SampleRow]) -> np.ndarray:
    """One token id per row of logits (R, V) f32 (changed in place)."""
    _bias_and_min_tokens(logits, rows)
    _grammar_mask(logits, rows)
    _penalize(logits, rows)
    params = [r.params for r in rows]
    out = np.empty(len(rows), np.int64)
    sample_rows(
        logits,
        np.array([p.temperature for p in params], np.float32),
        np.array([p.top_k for p in params], np.int64),
        np.array([p.top_p for p in params], np.float32),
        np.array([p.min_p for p in params], np.float32),
        np.array([r.uniform for r in rows], np.float64),
        out,
    )
    return out


def _bias_and_min_tokens(logits: np.ndarray, rows: list[SampleRow]) -> None:
    where, ids, values = [], [], []
    for i, r in enumerate(rows):
        for token, value in r.params.logit_bias:
            where.append(i), ids.append(token), values.append(value)
        if r.n_generated < r.params.min_tokens:  # stop tokens are not allowed yet
            for token in r.params.stop_token_ids:
                where.append(i), ids.append(token), values.append(-np.inf)
    if where:
        apply_logit_bias(logits, np.array(where, np.int64), np.array(ids, np.int64),
                         np.array(values, np.float32))


def _grammar_mask(logits: np.ndarray, rows: list[SampleRow]) -> None:
    """Rows of constrained requests keep only the tokens their grammar allows next."""
    where = [i for i, r in enumerate(rows) if r.grammar is not None]
    if not where:
        return
    masks = np.zeros((len(where), mask_words(logits.shape[1])), np.int32)
    for j, i in enumerate(where):
        rows[i].grammar.fill_mask(masks[j])
    apply_token_mask(logits, np.array(where, np.int64), masks)


def _penalize(logits: np.ndarray, rows: list[SampleRow]) -> None:
    if not any(r.params.has_penalties for r in rows):
        return
    row_ptr, ids, counts = [0], [], []
    for r in rows:
        if r.params.has_penalties:
            ids.extend(r.counts), counts.extend(r.counts.values())
        row_ptr.append(len(ids))
    p = [r.params for r in rows]
    apply_penalties(logits, np.array(row_ptr, np.int64), np.array(ids, np.int64),
                    np.array(counts, np.int64),
                    np.array([x.presence_penalty for x in p], np.float32),
                    np.array([x.frequency_penalty for x in p], np.float32),
                    np.array([x.repetition_penalty for x in p], np.float32))


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    """Log-probability of token under the model's own distribution (the logits before any
    sampling adjustment), with the n_top most likely tokens; logits (V,) f32."""
    z = logits.astype(np.float64)
    logp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))  # (V,) log-softmax
    top = np.argsort(-logp, kind="stable")[:n_top] if n_top else []
    return TokenLogprob(token, float(logp[token]), tuple((int(t), float(logp[t])) for t in top))
