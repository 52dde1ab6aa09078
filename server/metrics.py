"""Prometheus metrics for /metrics, each app with its own registry.

Owns: `Metrics`. Imports: prometheus_client. Used by: server.app, server.routes.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("ember_requests", "HTTP requests answered", ["route", "status"],
                                registry=r)
        self.prompt_tokens = Counter("ember_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("ember_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("ember_time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY, registry=r)
        self.itl = Histogram("ember_inter_token_latency_seconds", "Time between streamed tokens",
                             buckets=_LATENCY, registry=r)
        self.duration = Histogram("ember_request_duration_seconds", "Request duration",
                                  buckets=_LATENCY, registry=r)
        self.step_time = Histogram("ember_engine_step_seconds", "Duration of one engine step",
                                   buckets=_LATENCY, registry=r)
        self.batch_tokens = Histogram("ember_engine_step_tokens", "Tokens computed in one step",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
                                      registry=r)
        self.prefix_hit_tokens = Counter("ember_prefix_cache_hit_tokens",
                                         "Prompt tokens whose KV came from the prefix cache",
                                         registry=r)
        self.drafted = Counter("ember_draft_tokens", "Drafted tokens computed (speculative decoding)",
                               registry=r)
        self.accepted = Counter("ember_draft_accepted_tokens", "Drafted tokens that were accepted",
                                registry=r)
        self.preemptions = Counter("ember_preemptions", "Sequences preempted for lack of KV cache",
                                   registry=r)
        self.rejected = Counter("ember_requests_rejected", "Requests refused with 429 (queue full)",
                                registry=r)
        self.kv_cached = Gauge("ember_kv_cache_cached_blocks",
                               "KV-cache blocks holding reusable prefixes", ["deployment"], registry=r)
        self.running = Gauge("ember_requests_running", "Sequences in the engine's running set",
                             ["deployment"], registry=r)
        self.waiting = Gauge("ember_queue_depth", "Requests waiting for the engine",
                             ["deployment"], registry=r)
        self.kv_usage = Gauge("ember_kv_cache_usage_ratio",
                              "Fraction of KV-cache blocks held by running sequences",
                              ["deployment"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
