"""Terminal front ends: `ember generate` (one prompt, streamed to stdout) and `ember chat`
(interactive multi-turn chat). Both report speed on stderr.

Owns: `Session`, `generate`, `chat`. Imports: engine, tokenizer. Used by: server.__main__.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from typing import TextIO

from engine import Engine, SamplingParams
from tokenizer import ChatTemplate, TextStream, Tokenizer


@dataclass
class Session:
    """A loaded model ready to generate: engine, tokenizer and chat template."""

    engine: Engine
    tokenizer: Tokenizer
    template: ChatTemplate

    def run(self, prompt_ids: list[int], params: SamplingParams, out: TextIO, err: TextIO) -> str:
        """Stream the completion of prompt_ids to out; print speed to err; return the text."""
        params = replace(params, stop_token_ids=params.stop_token_ids | self.tokenizer.eos_ids)
        stream = TextStream(self.tokenizer)
        pieces, n_out = [], 0
        start = first = time.perf_counter()
        for token in self.engine.generate(prompt_ids, params):
            if n_out == 0:
                first = time.perf_counter()
            n_out += 1
            piece = stream.push(token)
            if piece:
                pieces.append(piece)
                out.write(piece)
                out.flush()
        end = time.perf_counter()
        decode = (n_out - 1) / (end - first) if n_out > 1 and end > first else 0.0
        err.write(f"\n[{len(prompt_ids)} prompt tokens in {first - start:.2f} s "
                  f"({len(prompt_ids) / max(first - start, 1e-9):.1f} tok/s); "
                  f"{n_out} generated at {decode:.1f} tok/s]\n")
        err.flush()
        return "".join(pieces)


def generate(session: Session, text: str, chat: bool, params: SamplingParams,
             out: TextIO | None = None, err: TextIO | None = None) -> str:
    if chat:
        text = session.template.render([{"role": "user", "content": text}])
    return session.run(session.tokenizer.encode(text), params, out or sys.stdout, err or sys.stderr)


def chat(session: Session, params: SamplingParams, system: str | None = None,
         inp: TextIO | None = None, out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Read a line, answer it, keep the whole conversation; Ctrl-D or /exit leaves."""
    inp, out, err = inp or sys.stdin, out or sys.stdout, err or sys.stderr
    history = [{"role": "system", "content": system}] if system else []
    err.write("Chat with the model. /exit or Ctrl-D to leave, /reset to start over.\n")
    while True:
        err.write("> ")
        err.flush()
        line = inp.readline()
        if not line or line.strip() == "/exit":
            err.write("\n")
            return
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        prompt = session.tokenizer.encode(session.template.render(history))
        reply = session.run(prompt, params, out, err)
        history.append({"role": "assistant", "content": reply})
