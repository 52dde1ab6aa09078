"""Streaming text: token ids to UTF-8-safe text pieces, and stop strings held back until known.

Owns: `TextStream`, `StopMatcher`. Imports: tokenizers. Used by: server (streams), the CLI.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from tokenizer.tokenizer import Tokenizer


class TextStream:
    """Feed token ids one at a time, get text pieces that never end inside a UTF-8 character.

    Wraps `tokenizers.decoders.DecodeStream`, which keeps a small window of previous ids so that
    byte-level pieces and space prefixes decode exactly as a full `decode` would.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self._tok = tokenizer.hf
        self._stream = DecodeStream(skip_special_tokens=skip_special)

    def push(self, token_id: int) -> str:
        """The text this token completes ("" while a character is still incomplete)."""
        return self._stream.step(self._tok, token_id) or ""


class StopMatcher:
    """Find stop strings in streamed text, across token boundaries.

    `push(text)` returns (text safe to send, stopped). Text that could still be the start of a
    stop string is held back; once a stop string is complete, everything before it is returned
    and the stop string itself never is.
    """

    def __init__(self, stops: list[str] | tuple[str, ...] = ()):
        self.stops = [s for s in stops if s]
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return buf[:min(hits)], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep], False

    def flush(self) -> str:
        """At the end of generation the held-back text was not a stop string after all."""
        out, self._held = self._held, ""
        return out

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), longest, -1):
                if buf.endswith(s[:k]):
                    longest = k
                    break
        return longest
