"""Drafts for speculative decoding without a draft model, and how many tokens each sequence
should draft in a step.

Owns: `Lookup`, `Proposer`. Imports: engine.request (types). Used by: engine.scheduler.

A draft is a guess at a sequence's next tokens, computed in the same step as its last token
(one more row each) and verified by sampling (engine.runner): a drafted token is accepted only
when it is the token sampling picks at that position anyway, with that position's own uniform
number, so drafts never change what is generated, only how many tokens a step yields.

Where guesses come from:
- prompt lookup: the sequence's last n tokens (n = 5 down to 2) occurred before, in the prompt or
  the output, and what followed them then is the guess. Answers that quote or edit their input
  (summaries, extractions, code fixes, follow-ups) repeat long runs of it;
- a grammar's forced tokens, when the request wants logprobs (otherwise the scheduler appends
  them without any sampling).

How many: a row costs about `ROW_COST` of a one-row step (measured with the default model: 4
rows 1.4-1.6x, 8 rows 2.5x, 32 rows 8x a single row). The j-th drafted token of a sequence is
accepted with probability about a^j, a being the sequence's recent acceptance. Rows are added
while the expected tokens they bring beat what the step yields per unit of cost already, so a
lone stream drafts freely, a busy batch (where a row costs as much as it brings) hardly at all.
"""

from __future__ import annotations

from engine.request import Request

MIN_N, MAX_N = 2, 5  # n-gram lengths looked up, longest first
ROW_COST = 0.25  # one more row, relative to a one-row step
FORCED = 1.0  # acceptance of a grammar's forced tokens: certain
LEARN = 0.2  # weight of one verified position in a sequence's acceptance estimate
PRIOR, RECOVER = 0.5, 0.02  # a sequence that stopped drafting drifts back toward the prior


class Lookup:
    """Where each n-gram of a sequence last ended, for every position but the last, so the
    sequence's own final n-gram finds an earlier occurrence."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self._ends: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(MIN_N, MAX_N + 1)}

    def sync(self, r: Request) -> None:
        """Take the tokens r has gained since the last call."""
        start = len(self.tokens)
        self.tokens += [r.token(p) for p in range(start, r.n_tokens)]
        t = self.tokens
        for end in range(max(start, 1), len(t)):  # n-grams ending before the last token
            for n, ends in self._ends.items():
                if end >= n:
                    ends[tuple(t[end - n:end])] = end

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest earlier occurrence of the current suffix."""
        t = self.tokens
        for n in range(MAX_N, MIN_N - 1, -1):
            if len(t) > n:
                end = self._ends[n].get(tuple(t[-n:]))
                if end is not None:
                    return t[end:end + k]
        return []


class Proposer:
    def __init__(self, max_draft: int):
        self.max_draft = max_draft

    def drafts(self, candidates: list[tuple[Request, int]], n_rows: int,
               n_sampling: int) -> dict[Request, list[int]]:
        """Drafts for decoding sequences, given as (request, most tokens it may draft); the step
        already holds n_rows rows of which n_sampling yield a token."""
        if self.max_draft == 0:
            return {}
        guesses, gains = {}, []
        for r, most in candidates:
            guess, a = self._guess(r, min(most, self.max_draft))
            if not guess:
                r.acceptance += RECOVER * (PRIOR - r.acceptance)
                continue
            guesses[r] = guess
            gains += [(a ** (j + 1), j, r) for j in range(len(guess))]
        gains.sort(key=lambda g: (-g[0], g[1]))
        cost = 1.0 + ROW_COST * (n_rows - 1)
        tokens, chosen = float(n_sampling), {}
        for gain, _, r in gains:
            if gain * cost <= ROW_COST * tokens:  # this row would lower tokens per unit of cost
                break
            chosen[r] = chosen.get(r, 0) + 1
            tokens, cost = tokens + gain, cost + ROW_COST
        return {r: guesses[r][:k] for r, k in chosen.items()}

    def _guess(self, r: Request, k: int) -> tuple[list[int], float]:
        if k <= 0:
            return [], r.acceptance
        if r.grammar is not None and r.params.logprobs is not None:
            forced = r.grammar.forced()[:k]
            if forced:
                return forced, FORCED
        if r.lookup is None:
            r.lookup = Lookup()
        r.lookup.sync(r)
        return r.lookup.propose(k), r.acceptance

    @staticmethod
    def learn(r: Request, n_drafted: int, n_accepted: int) -> None:
        """Fold a verification into r's acceptance: every accepted position counts 1, the first
        rejected one 0 (positions after it were never reached)."""
        for _ in range(n_accepted):
            r.acceptance += LEARN * (1.0 - r.acceptance)
        if n_accepted < n_drafted:
            r.acceptance -= LEARN * r.acceptance
