"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    def __init__(self, waiting) -> None:
        """`waiting`: a callable giving the number of requests queued for the model."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "earlytom_requests",
            "HTTP requests by endpoint (other: any path not served) and response status",
            ["endpoint", "status"],
            registry=r,
        )
        self.queue_depth = Gauge("earlytom_queue_depth", "requests waiting for the model", registry=r)
        self.queue_depth.set_function(waiting)
        self.ttft = Histogram(
            "earlytom_ttft_seconds", "time to first token inside the pipeline", buckets=SECONDS, registry=r
        )
        self.stage = Histogram(
            "earlytom_stage_seconds", "time per pipeline stage", ["stage"], buckets=SECONDS, registry=r
        )
        self.latency = Histogram(
            "earlytom_request_seconds",
            "chat completion wall time in the server, queueing included",
            buckets=SECONDS,
            registry=r,
        )
        self.visual_tokens = Histogram(
            "earlytom_visual_tokens", "visual tokens sent to the decoder per request", buckets=TOKENS, registry=r
        )
        self.completion_tokens = Counter("earlytom_completion_tokens", "generated tokens", registry=r)

    def observe(self, timings_ms: dict[str, float], counts: dict[str, int], completion_tokens: int) -> None:
        """One finished generation: its stage timings (with "ttft"), counts (with "visual_tokens") and length."""
        for stage, ms in timings_ms.items():
            (self.ttft if stage == "ttft" else self.stage.labels(stage)).observe(ms / 1e3)
        self.visual_tokens.observe(counts["visual_tokens"])
        self.completion_tokens.inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
