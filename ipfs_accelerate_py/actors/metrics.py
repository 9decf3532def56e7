"""Prometheus metrics through ``ray.util.metrics``.

Ray exports these from every worker, so a cluster's dashboard (or any
Prometheus scraping Ray's metrics port) shows per-key traffic without the
library running its own exporter.  Metric objects are created once per actor
process; tags identify the endpoint, never the key.
"""
from __future__ import annotations

from ray.util import metrics as ray_metrics

from ..core.stats import LATENCY_BUCKETS

_CIRCUIT_VALUE = {"CLOSED": 0, "HALF_OPEN": 1, "OPEN": 2}
_cache: dict[str, object] = {}


def _metric(kind: type, name: str, description: str, tag_keys: tuple[str, ...], **kw):
    if name not in _cache:
        _cache[name] = kind(name, description=description, tag_keys=tag_keys, **kw)
    return _cache[name]


class EndpointMetrics:
    def __init__(self, endpoint_id: str, provider: str) -> None:
        self.tags = {"endpoint": endpoint_id, "provider": provider}
        self.requests = _metric(ray_metrics.Counter, "ipfs_accelerate_requests_total",
                                "Upstream requests by endpoint and HTTP status class",
                                ("endpoint", "provider", "status"))
        self.latency = _metric(ray_metrics.Histogram, "ipfs_accelerate_request_latency_seconds",
                               "Upstream request latency", ("endpoint", "provider"),
                               boundaries=list(LATENCY_BUCKETS))
        self.tokens = _metric(ray_metrics.Counter, "ipfs_accelerate_tokens_total",
                              "Tokens by endpoint and direction", ("endpoint", "provider", "kind"))
        self.circuit_gauge = _metric(ray_metrics.Gauge, "ipfs_accelerate_circuit_state",
                                     "Circuit state (0 closed, 1 half-open, 2 open)", ("endpoint", "provider"))

    def success(self, latency_s: float, prompt_tokens: int, completion_tokens: int) -> None:
        self.requests.inc(1, {**self.tags, "status": "ok"})
        self.latency.observe(latency_s, self.tags)
        if prompt_tokens:
            self.tokens.inc(prompt_tokens, {**self.tags, "kind": "input"})
        if completion_tokens:
            self.tokens.inc(completion_tokens, {**self.tags, "kind": "output"})

    def failure(self, latency_s: float, status: int | None) -> None:
        self.requests.inc(1, {**self.tags, "status": str(status or "error")})
        self.latency.observe(latency_s, self.tags)

    def circuit(self, state: str) -> None:
        self.circuit_gauge.set(_CIRCUIT_VALUE.get(state, -1), self.tags)


class RouterMetrics:
    def __init__(self, router_name: str) -> None:
        self.tags = {"router": router_name}
        self.queue_depth = _metric(ray_metrics.Gauge, "ipfs_accelerate_queue_depth",
                                   "Requests waiting in the router, by priority", ("router", "priority"))
        self.routed = _metric(ray_metrics.Counter, "ipfs_accelerate_routed_total",
                              "Requests finished by the router, by outcome", ("router", "outcome"))
        self.retries = _metric(ray_metrics.Counter, "ipfs_accelerate_retries_total",
                               "Upstream attempts retried or failed over", ("router", "reason"))

    def depth(self, counts: dict[str, int]) -> None:
        for priority, n in counts.items():
            self.queue_depth.set(n, {**self.tags, "priority": priority})

    def finished(self, outcome: str) -> None:
        self.routed.inc(1, {**self.tags, "outcome": outcome})

    def retry(self, reason: str) -> None:
        self.retries.inc(1, {**self.tags, "reason": reason})
