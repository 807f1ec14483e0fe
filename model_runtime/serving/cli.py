"""``modelfleet serve``: flags, each also read from ``MODELFLEET_<FLAG>`` (flags win), then run the server.

Exit codes: 0 after a clean shutdown (including a drained SIGTERM), 1 when the model failed to load or warm up,
2 for invalid options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from model_runtime.serving.config import ServeConfig, parse_bytes

ENV_PREFIX = "MODELFLEET_"

# (flag, type, default, help). Defaults mirror ServeConfig's; None means "derived" (see help).
_OPTIONS: list[tuple[str, type | object, object, str]] = [
    ("--model", Path, None, "model directory (config.json, *.safetensors, tokenizer.json, ...)"),
    ("--host", str, "0.0.0.0", "address to listen on"),
    ("--port", int, 8000, "port to listen on"),
    ("--served-model-name", str, None, "model name in the API (default: the directory's name)"),
    ("--dtype", str, "auto", "auto (config.json's torch_dtype), float32, bfloat16 or float16"),
    ("--device", str, "cpu", "cpu or cuda (cuda:N)"),
    ("--max-model-len", int, None, "context length (default: the model's, limited by the KV cache)"),
    ("--max-num-seqs", int, 128, "most sequences decoded together in one step"),
    ("--max-num-batched-tokens", int, 2048, "most tokens (prefill chunks + decodes) in one step"),
    ("--num-kv-blocks", int, None, "KV cache size in blocks (exclusive with --kv-cache-memory)"),
    ("--kv-cache-memory", parse_bytes, None, "KV cache size in bytes, e.g. 2Gi (default: room for max-num-seqs "
                                             "full sequences, at most 2 GiB on CPU / 80%% of free GPU memory)"),
    ("--block-size", int, 16, "tokens per KV block"),
    ("--max-waiting-requests", int, 1024, "sequences (n per request) that may wait beyond max-num-seqs; more get 429"),
    ("--max-request-bytes", parse_bytes, 32 << 20, "largest request body accepted, e.g. 32Mi; larger get 413"),
    ("--tokenizer-threads", int, 4, "threads that render chat templates and tokenize, off the event loop"),
    ("--request-timeout", float, 600.0, "seconds a request may take, queueing included"),
    ("--drain-timeout", float, 30.0, "seconds in-flight requests get to finish after SIGTERM"),
    ("--fault-latency-ms", float, 0.0, "TESTING ONLY: delay every generation request by this many ms"),
    ("--fault-error-rate", float, 0.0, "TESTING ONLY: answer this fraction (0-1) of generation requests with 500"),
    ("--api-key-file", Path, None, "file with API keys, one per line (also MODELFLEET_API_KEY, comma-separated)"),
]


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def build_parser(environ: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelfleet serve", description="Serve a model over an OpenAI-compatible "
                                     "API. Every flag can also be set with the environment variable shown.")
    for flag, type_, default, help_ in _OPTIONS:
        env = env_name(flag)
        choices = {"--dtype": ["auto", "float32", "bfloat16", "float16"]}.get(flag)
        # argparse converts a string default with `type`, so env values are checked like flags.
        parser.add_argument(flag, type=type_, default=environ.get(env, default), choices=choices,
                            help=f"{help_} [env {env}]")
    return parser


def parse_config(argv: list[str], environ: dict[str, str]) -> ServeConfig:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error(f"--model (or {env_name('--model')}) is required")
    if args.num_kv_blocks is not None and args.kv_cache_memory is not None:
        parser.error("--num-kv-blocks and --kv-cache-memory are exclusive")
    if not args.device.startswith(("cpu", "cuda")):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    from model_runtime.serving.auth import load_api_keys

    try:
        keys = load_api_keys(environ.get(ENV_PREFIX + "API_KEY"), args.api_key_file)
        values = {k: v for k, v in vars(args).items() if k != "api_key_file"}
        return ServeConfig(**values, api_keys=keys)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(sys.argv[1:] if argv is None else argv, dict(os.environ))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model_runtime.serving.api import create_app
    from model_runtime.serving.server import run

    logging.getLogger(__name__).info("serving %s as %r on %s:%d (API keys: %s)", cfg.model, cfg.model_name,
                                     cfg.host, cfg.port, "required" if cfg.api_keys else "none")
    return run(create_app(cfg), cfg.host, cfg.port, cfg.drain_timeout)


if __name__ == "__main__":
    sys.exit(main())
