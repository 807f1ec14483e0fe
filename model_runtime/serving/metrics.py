"""Prometheus metrics with vLLM's names, buckets and ``model_name`` label, so vLLM dashboards work unchanged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # vLLM exports no *_created series either

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
                160, 640, 2560)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920,
                           7680)
FINISHED_REASONS = ("stop", "length", "abort", "timeout")


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


class RuntimeMetrics:
    def __init__(self, model_name: str, max_model_len: int, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        label = ["model_name"]
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, label, registry=r).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, label, registry=r).labels(model_name)

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, label, buckets=buckets, registry=r).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.gpu_cache_usage = gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (older name). 1 means 100 percent.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          ["model_name", "finished_reason"], registry=r)
        self.success = {reason: success.labels(model_name, reason) for reason in FINISHED_REASONS}
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = histogram("vllm:time_per_output_token_seconds", "Time per output token (older name).",
                              ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds", "Time spent waiting in the queue.",
                                    REQUEST_LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds", "Time spent in prefill.",
                                      REQUEST_LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds", "Time spent in decode.",
                                     REQUEST_LATENCY_BUCKETS)
        # vLLM's (prometheus-fastapi-instrumentator's) request counter: status grouped as 2xx, 4xx, 5xx.
        self.http_requests = Counter("http_requests", "Total number of requests by method, status and handler.",
                                     ["handler", "method", "status"], registry=r)
        token_buckets = _token_buckets(max_model_len)
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.",
                                               token_buckets)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Generation tokens per request.", token_buckets)

    def init_http(self, handlers: list[str]) -> None:
        """Export every handler's counters at 0 from the start, so a rate over a window sees the first request."""
        for handler in handlers:
            for status in ("2xx", "4xx", "5xx"):
                self.http_requests.labels(handler, "POST", status)

    def record_http(self, handler: str, method: str, code: int) -> None:
        self.http_requests.labels(handler, method, f"{code // 100}xx").inc()

    def record_step(self, running: int, waiting: int, kv_usage: float, preemptions: int, prefix_queries: int,
                    prefix_hits: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.kv_usage.set(kv_usage)
        self.gpu_cache_usage.set(kv_usage)
        if preemptions:
            self.preemptions.inc(preemptions)
        if prefix_queries:
            self.prefix_queries.inc(prefix_queries)
            self.prefix_hits.inc(prefix_hits)

    def record_tokens(self, count: int, intervals: list[float]) -> None:
        self.generation_tokens.inc(count)
        for dt in intervals:
            self.itl.observe(dt)
            self.tpot.observe(dt)

    def record_first_token(self, prompt_tokens: int, ttft: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.ttft.observe(ttft)

    def record_finished(self, reason: str, *, arrival: float, scheduled: float | None, first_token: float | None,
                        finished: float, prompt_tokens: int, generation_tokens: int) -> None:
        self.success[reason].inc()
        self.e2e.observe(finished - arrival)
        if scheduled is not None:
            self.queue_time.observe(scheduled - arrival)
            if first_token is not None:
                self.prefill_time.observe(first_token - scheduled)
                self.decode_time.observe(finished - first_token)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
