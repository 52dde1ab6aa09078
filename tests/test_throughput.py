"""Continuous batching over HTTP on the default model: eight concurrent streams of 128 tokens
each all finish whole, and the engine computes them together (steps of several sequences'
tokens, seen in /metrics). How much faster that is than one stream is a benchmark, not a test:
`python bench/bench_server.py` (its ratios to one stream, measured in the same run, are in
bench/RESULTS.md)."""

import http.client
import json
import os
import threading

import pytest

from tests.conftest import serve_process

pytestmark = pytest.mark.model


def stream_tokens(port: int, prompt: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 128, "stream": True,
            "temperature": 0.8, "ignore_eos": True, "stream_options": {"include_usage": True}}
    conn.request("POST", "/chat/completions", json.dumps(body), {"extra-parameters": "pass-through"})
    data = conn.getresponse().read()
    conn.close()
    assert data.endswith(b"data: [DONE]\n\n")
    return json.loads(data.split(b"data: ")[-2])["usage"]["completion_tokens"]


def step_sizes(port: int) -> dict[float, float]:
    """ember_engine_step_tokens: upper bound -> steps with at most that many tokens."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in text.splitlines():
        if line.startswith("ember_engine_step_tokens_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[float(le)] = float(line.split()[-1])
    return out


def test_eight_streams_finish_whole_and_are_computed_together(default_model_path):
    env = dict(os.environ, EMBER_HOME=str(default_model_path.parent.parent))
    with serve_process("--max-seqs", "8", "--context", "1024", "--max-draft", "0", env=env) as (port, _):
        counts = []
        threads = [threading.Thread(target=lambda i=i: counts.append(stream_tokens(port, f"Story {i}:")))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert counts == [128] * 8
        sizes = step_sizes(port)
    # decode steps of one token each would all sit in the le="1" bucket; most hold several
    assert sizes[1.0] < 0.5 * sizes[float("inf")], sizes
