"""Peak memory and start-up time of `ember serve`, side by side with llama.cpp.

    python bench/bench_memory.py [--model PATH] [--context 4096] [--requests 100] [--runs 5]

Peak RSS: `ember serve --context C` answers `--requests` chat requests (8 at a time, 64 tokens
each, distinct prompts, so the prefix cache fills), then its high-water mark (VmHWM in
/proc/PID/status: the whole process, mapped weight pages included) is read; llama.cpp
(llama-cpp-python, same GGUF, n_ctx = C) answers the same chats one by one in a child process
and reports its own VmHWM. Both keep K and V in f16; ember's KV pool is sized to the context
(`--kv-cache-mb` for C tokens), like llama.cpp's, and the default 512 MB pool is measured too.

Start-up: wall time from launching `ember serve` to the first /health 200, median of --runs,
with numba's on-disk kernel cache warm, and once with an empty cache (NUMBA_CACHE_DIR pointed
at a fresh directory: what a fresh clone pays, compiling every kernel).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_server import one_request  # noqa: E402

PROMPT = "Question {i}: in two sentences, what is the capital of country number {i} and why?"

LLAMA_CPP = """
import json, sys
import llama_cpp
path, n_ctx, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads={threads}, verbose=False)
for i in range(n):
    llm.create_chat_completion([{{"role": "user", "content": {prompt!r}.format(i=i)}}],
                               max_tokens=64, temperature=0.8)
status = open("/proc/self/status").read()
print(json.dumps({{"hwm_kb": int(status.split("VmHWM:")[1].split()[0])}}))
"""


def hwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def start_server(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, int, float]:
    """Launch `ember serve` on a free port; (process, port, seconds until /health was 200)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "server", "serve", "--port", str(port), *args],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc, port, time.perf_counter() - start
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("ember serve exited during start-up")
        time.sleep(0.02)


def ember_peak(model: Path, context: int, n_requests: int, kv_mb: int | None) -> float:
    kv = ["--kv-cache-mb", str(kv_mb)] if kv_mb else []
    proc, port, _ = start_server(["--model", str(model), "--context", str(context), *kv])
    try:
        done = iter(range(n_requests))
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    i = next(done, None)
                if i is None:
                    return
                one_request("127.0.0.1", port, PROMPT.format(i=i), 64, 120)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return hwm_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)


def llama_cpp_peak(model: Path, context: int, n_requests: int) -> float | None:
    code = LLAMA_CPP.format(threads=os.cpu_count() or 1, prompt=PROMPT)
    out = subprocess.run([sys.executable, "-c", code, str(model), str(context), str(n_requests)],
                         capture_output=True, text=True)
    if out.returncode:
        print(f"llama.cpp side failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["hwm_kb"] / 1024


def main() -> None:
    from server.models import ember_home, pull

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    model = args.model or pull(ember_home())

    from engine.config import ModelConfig
    from engine.gguf_file import GGUFFile
    from engine.kv_cache import KVCache
    file = GGUFFile(model)
    cfg = ModelConfig.from_gguf(file.metadata, set(file.tensors), None)
    kv_mb = -(-args.context * KVCache.bytes_per_block(cfg, 16) // 16 // 2**20)

    warm = []
    for _ in range(args.runs):
        proc, _, seconds = start_server(["--model", str(model)])
        proc.terminate()
        proc.wait(60)
        warm.append(seconds)
    with tempfile.TemporaryDirectory() as cache:
        proc, _, fresh = start_server(["--model", str(model)], env={**os.environ, "NUMBA_CACHE_DIR": cache})
        proc.terminate()
        proc.wait(60)
    print(f"start-up to /health 200: warm kernel cache {statistics.median(warm):.2f} s "
          f"(min {min(warm):.2f}, max {max(warm):.2f}, n={len(warm)}); empty kernel cache {fresh:.1f} s")

    ours = ember_peak(model, args.context, args.requests, kv_mb)
    ours_default = ember_peak(model, args.context, args.requests, None)
    ref = llama_cpp_peak(model, args.context, args.requests)
    print(f"peak RSS after {args.requests} chat requests, context {args.context}:")
    print(f"  ember, KV pool for the context ({kv_mb} MB):  {ours:7.1f} MB")
    print(f"  ember, default KV pool (512 MB):        {ours_default:7.1f} MB")
    if ref:
        print(f"  llama.cpp:                              {ref:7.1f} MB")
        print(f"ratio ember / llama.cpp: {ours / ref:.2f}x (default pool {ours_default / ref:.2f}x)")


if __name__ == "__main__":
    main()
