"""Server configuration, built once from argv and the environment by server.__main__.

Owns: `ServerConfig`. Imports: stdlib. Used by: server.__main__, server.app.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    models: tuple[tuple[str, str | None], ...] = (("SmolLM2-135M-Instruct", None),)  # name, path
    api_keys: tuple[str, ...] = ()
    insecure: bool = False
    max_seqs: int = 8
    context: int = 4096
    max_batch_tokens: int = 512
    max_queue: int = 64
    kv_cache_mb: int = 512
    max_draft: int = 8  # speculative decoding: drafted tokens per sequence and step; 0: off
    weights: str = "auto"  # engine.loader.WEIGHT_MODES
    max_body: int = 8 * 1024 * 1024
    max_header: int = 64 * 1024
    read_timeout: float = 30.0
    idle_timeout: float = 15.0
    grace: float = 30.0

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")
