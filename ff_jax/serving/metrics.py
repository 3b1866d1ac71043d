"""The server's Prometheus metrics, in a registry of its own (one per app, so apps in one process,
as in tests, do not share counters)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("ff_jax_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.request_seconds = Histogram("ff_jax_request_seconds", "request latency, arrival to response",
                                         ["endpoint"], buckets=_LATENCY, registry=self.registry)
        self.queue_seconds = Histogram("ff_jax_queue_seconds", "time a request waited for its micro-batch",
                                       buckets=_LATENCY, registry=self.registry)
        self.compute_seconds = Histogram("ff_jax_compute_seconds", "compute per batch by stage",
                                         ["stage"], buckets=_LATENCY, registry=self.registry)
        self.batch_size = Histogram("ff_jax_batch_size", "requests per micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.errors = Counter("ff_jax_errors", "requests answered with an error, by endpoint and kind",
                              ["endpoint", "kind"], registry=self.registry)
        self.index_size = Gauge("ff_jax_index_size", "items searchable in the index", registry=self.registry)

    def observe_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_seconds.observe(wait)
