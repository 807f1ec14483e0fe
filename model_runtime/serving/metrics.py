"""Prometheus metrics with vLLM's names, buckets and labels (``model_name``, ``engine``), so vLLM's own Grafana
dashboards work unchanged; see docs/observability.md for what each one measures here."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # vLLM exports no *_created series either

ENGINE = "0"  # one engine core per server; vLLM numbers its data-parallel engines from 0
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
                160, 640, 2560)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920,
                           7680)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)
# vLLM's FinishReason values (all pre-created, as vLLM does), plus this runtime's request timeout.
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition", "timeout")
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
WAITING_REASONS = ("capacity", "deferred")


def _token_buckets(max_model_len: int) -> list[int]:
    """vLLM's 1-2-5 series up to the context length."""
    buckets, mantissas, exponent = [], (1, 2, 5), 0
    while True:
        for m in mantissas:
            value = m * 10**exponent
            if value > max_model_len:
                return buckets
            buckets.append(value)
        exponent += 1


@dataclass
class StepStats:
    """One engine step: the scheduler's state after it, and what ran in it."""

    running: int  # requests
    waiting: int  # requests, all waiting for KV blocks or batch room ("capacity")
    kv_usage: float
    preemptions: int = 0
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache this step
    prefix_hits: int = 0
    scheduled_tokens: int = 0  # prefill and decode tokens through the model
    generated_tokens: int = 0
    inter_token_latencies: tuple[float, ...] = ()


@dataclass
class FinishedStats:
    """One finished request (all its choices); times are monotonic seconds."""

    reason: str
    arrival: float
    scheduled: float | None
    first_token: float | None
    finished: float
    prompt_tokens: int
    generation_tokens: int  # all choices
    longest_choice: int  # output tokens of the longest choice
    n: int
    max_tokens: int


class RuntimeMetrics:
    def __init__(self, model_name: str, max_model_len: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        names, values = ["model_name", "engine"], [model_name, ENGINE]
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=r).labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=r).labels(*values)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=r).labels(*values)

        def by(metric: type, name: str, doc: str, label: str, keys: tuple[str, ...]) -> dict:
            family = metric(name, doc, [*names, label], registry=r)
            return {key: family.labels(*values, key) for key in keys}

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.waiting_by_reason = by(Gauge, "vllm:num_requests_waiting_by_reason",
                                    "Number of requests waiting to be processed, by the reason they wait.",
                                    "reason", WAITING_REASONS)
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.gpu_cache_usage = gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (older name). 1 means 100 percent.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_by_source = by(Counter, "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                                          "source", PROMPT_SOURCES)
        self.prompt_tokens_cached = counter("vllm:prompt_tokens_cached",
                                            "Number of prompt tokens served from the prefix cache.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        # No KV connector and no multimodal inputs here: these stay at zero queries, as on a vLLM without them.
        counter("vllm:external_prefix_cache_queries", "External (KV connector) prefix cache queries, in tokens.")
        counter("vllm:external_prefix_cache_hits", "External (KV connector) prefix cache hits, in tokens.")
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in items.")
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in items.")
        self.success = by(Counter, "vllm:request_success", "Count of successfully processed requests.",
                          "finished_reason", FINISHED_REASONS)
        self.iteration_tokens = histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                          ITERATION_TOKEN_BUCKETS)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds", "Time per output token (older name of the "
                                                                   "inter-token latency).", ITL_BUCKETS)
        self.request_tpot = histogram("vllm:request_time_per_output_token_seconds",
                                      "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds", "Time spent waiting in the queue.",
                                    REQUEST_LATENCY_BUCKETS)
        self.inference_time = histogram("vllm:request_inference_time_seconds", "Time spent running (prefill and "
                                                                               "decode).", REQUEST_LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds", "Time spent in prefill.",
                                      REQUEST_LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds", "Time spent in decode.",
                                     REQUEST_LATENCY_BUCKETS)
        token_buckets = _token_buckets(max_model_len)
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.",
                                               token_buckets)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Generation tokens per request.", token_buckets)
        self.request_max_generation = histogram("vllm:request_max_num_generation_tokens",
                                                "Output tokens of a request's longest choice.", token_buckets)
        self.request_n = histogram("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.request_max_tokens = histogram("vllm:request_params_max_tokens",
                                            "Histogram of the max_tokens request parameter.", token_buckets)
        self.waiting_by_reason["deferred"].set(0)  # nothing defers a request here (no LoRA budget, no KV transfer)

    def record_step(self, s: StepStats) -> None:
        self.running.set(s.running)
        self.waiting.set(s.waiting)
        self.waiting_by_reason["capacity"].set(s.waiting)
        self.kv_usage.set(s.kv_usage)
        self.gpu_cache_usage.set(s.kv_usage)
        self.preemptions.inc(s.preemptions)
        self.prefix_queries.inc(s.prefix_queries)
        self.prefix_hits.inc(s.prefix_hits)
        if s.scheduled_tokens:
            self.iteration_tokens.observe(s.scheduled_tokens)
        self.generation_tokens.inc(s.generated_tokens)
        for dt in s.inter_token_latencies:
            self.itl.observe(dt)
            self.tpot.observe(dt)

    def record_first_token(self, prompt_tokens: int, cached_tokens: int, ttft: float) -> None:
        """A request's prompt is done: counted once, by where its K/V came from."""
        self.prompt_tokens.inc(prompt_tokens)
        self.prompt_tokens_by_source["local_compute"].inc(prompt_tokens - cached_tokens)
        self.prompt_tokens_by_source["local_cache_hit"].inc(cached_tokens)
        self.prompt_tokens_cached.inc(cached_tokens)
        self.ttft.observe(ttft)

    def record_finished(self, f: FinishedStats) -> None:
        self.success[f.reason].inc()
        self.e2e.observe(f.finished - f.arrival)
        if f.scheduled is not None:
            self.queue_time.observe(f.scheduled - f.arrival)
            self.inference_time.observe(f.finished - f.scheduled)
            if f.first_token is not None:
                self.prefill_time.observe(f.first_token - f.scheduled)
        if f.first_token is not None:
            decode = f.finished - f.first_token
            self.decode_time.observe(decode)
            # vLLM's per-request TPOT: decode time over the tokens after the first; 0 for a single token.
            self.request_tpot.observe(decode / (f.longest_choice - 1) if f.longest_choice > 1 else 0.0)
        self.request_prompt_tokens.observe(f.prompt_tokens)
        self.request_generation_tokens.observe(f.generation_tokens)
        self.request_max_generation.observe(f.longest_choice)
        self.request_n.observe(f.n)
        self.request_max_tokens.observe(f.max_tokens)
