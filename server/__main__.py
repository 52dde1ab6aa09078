"""The `ember` command: argv and the environment are read here and nowhere else.

Owns: `main`, the argument parser, logging setup. Imports: server.*, engine, tokenizer.

    ember serve                      serve the Azure AI Model Inference API on 127.0.0.1:8000
    ember pull                       fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF)
    ember generate TEXT [--chat]     complete one prompt, streaming to stdout
    ember chat                       interactive multi-turn chat in the terminal
    ember convert MODEL.gguf OUTDIR  write a GGUF model as a Hugging Face directory
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from engine import Engine, EngineConfig, ModelError, SamplingParams
from server.models import PullError, ember_home, open_model, pull, resolve_model
from tokenizer import ChatTemplate, TemplateError, TokenizerError

logger = logging.getLogger("ember")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command in ("serve", "pull") else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    home = ember_home(os.environ)
    try:
        return args.run(args, home) or 0
    except (PullError, ModelError, TokenizerError, TemplateError) as e:
        print(f"ember: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ember", description="CPU inference server for Llama-family "
                                "chat models (Azure AI Model Inference API)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve the Azure AI Model Inference API (default model unless --model)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="a .gguf file or Hugging Face directory, optionally named (repeatable: "
                        "one deployment each, chosen by azureml-model-deployment or the body's model)")
    s.add_argument("--api-key", action="append", default=[],
                   help="accept this key (repeatable; also EMBER_API_KEY)")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without an API key")
    s.add_argument("--max-seqs", type=int, default=8, help="sequences decoded together")
    s.add_argument("--context", type=int, default=4096, help="context length per sequence")
    s.add_argument("--max-batch-tokens", type=int, default=512, help="token budget of one step")
    s.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for the engine; beyond it: 429 with Retry-After")
    s.add_argument("--kv-cache-mb", type=int, default=512,
                   help="KV-cache memory; what running sequences do not use keeps prefixes for reuse")
    s.add_argument("--max-draft", type=int, default=8,
                   help="speculative decoding: tokens a sequence may draft per step, verified so "
                        "that outputs are exactly those without drafts (0 = off)")
    _weights_arg(s)
    s.add_argument("--max-body", type=int, default=8 * 1024 * 1024, help="request body limit, bytes")
    s.add_argument("--grace", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM/SIGINT")
    s.set_defaults(run=_cmd_serve)

    s = sub.add_parser("pull", help="fetch the default model into $EMBER_HOME (~/.cache/ember)")
    s.set_defaults(run=_cmd_pull)

    s = sub.add_parser("generate", help="complete one prompt, streaming the text to stdout")
    s.add_argument("text")
    s.add_argument("--chat", action="store_true", help="wrap the text as a user chat message")
    _sampling_args(s)
    s.set_defaults(run=_cmd_generate)

    s = sub.add_parser("chat", help="interactive chat in the terminal (/exit or Ctrl-D leaves)")
    s.add_argument("--system", help="system prompt")
    _sampling_args(s)
    s.set_defaults(run=_cmd_chat)

    s = sub.add_parser("convert", help="write a GGUF model as a Hugging Face directory")
    s.add_argument("gguf", type=Path)
    s.add_argument("outdir", type=Path)
    s.set_defaults(run=_cmd_convert)
    return p


def _weights_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--weights", choices=("auto", "q8_0", "f32"), default="auto",
                   help="weights in memory: auto = as in the file (GGUF quantized blocks read "
                        "in place, float tensors as f32); q8_0 = also quantize float tensors to "
                        "Q8_0 at load; f32 = dequantize everything (the reference path)")


def _sampling_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", help="a .gguf file or Hugging Face directory (default: SmolLM2-135M)")
    s.add_argument("--max-tokens", type=int, default=256)
    s.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int)
    s.add_argument("--context", type=int, default=4096, help="context length to allocate")
    _weights_arg(s)


def _cmd_serve(args, home: Path) -> int:
    from functools import partial

    import anyio

    from server.app import load_deployment, serve
    from server.config import ServerConfig
    from server.models import DEFAULT_MODEL

    keys = tuple(args.api_key) + tuple(k for k in [os.environ.get("EMBER_API_KEY")] if k)
    config = ServerConfig(host=args.host, port=args.port, api_keys=keys, insecure=args.insecure,
                          max_seqs=args.max_seqs, context=args.context,
                          max_batch_tokens=args.max_batch_tokens, max_queue=args.max_queue,
                          kv_cache_mb=args.kv_cache_mb, max_draft=args.max_draft,
                          weights=args.weights, max_body=args.max_body, grace=args.grace)
    if not config.is_loopback and not keys and not config.insecure:
        print(f"ember: error: refusing to listen on {args.host} without an API key; give "
              "--api-key (or EMBER_API_KEY), or --insecure to serve it open", file=sys.stderr)
        return 2
    paths: dict[str, Path] = {}
    for spec in args.model or [None]:
        if spec is None:
            paths[DEFAULT_MODEL.name] = pull(home)
            continue
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem if Path(spec).suffix == ".gguf" else Path(spec).name, spec
        paths[name] = resolve_model(path, home)
    anyio.run(serve, config, {name: partial(load_deployment, name, path, config)
                              for name, path in paths.items()})
    return 0


def _cmd_pull(args, home: Path) -> None:
    print(pull(home))


def _cmd_generate(args, home: Path) -> None:
    from server.cli import generate

    generate(_session(args, home), args.text, args.chat, _params(args))


def _cmd_chat(args, home: Path) -> None:
    from server.cli import chat

    chat(_session(args, home), _params(args), system=args.system)


def _cmd_convert(args, home: Path) -> None:
    from server.convert import convert_gguf

    convert_gguf(args.gguf, args.outdir)
    print(args.outdir)


def _params(args) -> SamplingParams:
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_tokens < 1:
        raise SystemExit("ember: error: need --temperature >= 0, 0 < --top-p <= 1, --max-tokens >= 1")
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                          max_tokens=args.max_tokens)


def _session(args, home: Path):
    from server.cli import Session

    cfg, weights, tok = open_model(resolve_model(args.model, home), args.weights)
    engine = Engine(cfg, weights, EngineConfig(max_seqs=1, max_seq_len=args.context))
    start = time.perf_counter()
    print("compiling kernels (cached after the first start)...", end="", file=sys.stderr, flush=True)
    engine.warmup()
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return Session(engine, tok, ChatTemplate(tok.chat_template, tok.bos_token, tok.eos_token))


if __name__ == "__main__":
    sys.exit(main())
