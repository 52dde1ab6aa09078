"""Load generator: N concurrent streaming chat clients against `ember serve` over HTTP.

    python bench/bench_server.py                       # starts a server on the default model
    python bench/bench_server.py --url http://127.0.0.1:8000 --concurrency 1 4 8 16

For each N: `--requests` requests (default 2 N) of `--max-tokens` tokens each, N at a time,
bounded by `--timeout` seconds. Prints time to first token p50/p99, inter-token latency
p50/p99 and aggregate generated tok/s (completion tokens / wall time), and the ratio of each
aggregate to the N = 1 rate measured in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPTS = ["Tell me about the history of bread.", "Explain how a bicycle works.",
           "Write a short story about a robot learning to paint.", "What makes a good teacher?",
           "Describe a walk through a forest in autumn.", "How do airplanes stay in the air?",
           "Give advice to someone learning to cook.", "Why do we dream?"]


def one_request(host: str, port: int, prompt: str, max_tokens: int, timeout: float) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0.8, "ignore_eos": True}
    start = time.perf_counter()
    conn.request("POST", "/chat/completions", json.dumps(body),
                 {"content-type": "application/json", "extra-parameters": "pass-through"})
    resp = conn.getresponse()
    arrivals, buf, tokens = [], b"", 0
    while chunk := resp.read1(65536):
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if event == b"data: [DONE]":
                continue
            data = json.loads(event[6:])
            if data["choices"] and data["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    conn.close()
    return {"ttft": arrivals[0] - start if arrivals else float("nan"),
            "itl": [b - a for a, b in zip(arrivals, arrivals[1:])], "tokens": tokens}


def run_level(host: str, port: int, n: int, n_requests: int, max_tokens: int,
              timeout: float) -> dict:
    results, lock, next_i = [], threading.Lock(), [0]
    deadline = time.perf_counter() + timeout

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next_i[0]
                if i >= n_requests:
                    return
                next_i[0] += 1
            r = one_request(host, port, PROMPTS[i % len(PROMPTS)], max_tokens, timeout)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in results)
    itl = sorted(x for r in results for x in r["itl"])
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    return {"n": n, "requests": len(results), "tokens": sum(r["tokens"] for r in results),
            "wall": wall, "tok_s": sum(r["tokens"] for r in results) / wall,
            "ttft50": statistics.median(ttft), "ttft99": q(ttft, 0.99),
            "itl50": q(itl, 0.5), "itl99": q(itl, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", help="a running server (default: start one on the default model)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--requests", type=int, help="requests per level (default: 2 N, at least 4)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    if args.url:
        url = urlsplit(args.url)
        report(url.hostname, url.port or 80, args)
        return
    # The server runs in its own process, so the clients here do not compete with it for a GIL.
    from tests.conftest import serve_process

    with serve_process("--max-seqs", str(max(args.concurrency)), "--context", "2048") as (port, _):
        report("127.0.0.1", port, args)


def report(host: str, port: int, args) -> None:
    base = None
    print(f"{'N':>3} {'reqs':>5} {'tok/s':>8} {'x N=1':>6} {'TTFT p50':>9} {'p99':>7} "
          f"{'ITL p50':>8} {'p99':>7}")
    for n in args.concurrency:
        r = run_level(host, port, n, args.requests or max(4, 2 * n), args.max_tokens, args.timeout)
        base = base or r["tok_s"]
        print(f"{n:>3} {r['requests']:>5} {r['tok_s']:>8.1f} {r['tok_s'] / base:>6.2f} "
              f"{r['ttft50']:>8.3f}s {r['ttft99']:>6.3f}s {r['itl50'] * 1000:>6.1f}ms "
              f"{r['itl99'] * 1000:>5.1f}ms")


if __name__ == "__main__":
    main()
