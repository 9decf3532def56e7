"""Per-endpoint counters with a fixed-size latency histogram.

Pure bookkeeping, kept out of the actor so it can be unit-tested and so its
memory stays constant however long the actor lives (a histogram, not a list
of latencies).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: upper bounds (seconds) of the latency buckets; the last bucket is open-ended
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                      1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0
    max: float = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1
        self.max = max(self.max, seconds)

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the q-quantile (None when empty).

        Bucket resolution is what Prometheus would give too; good enough for
        dashboards, and it costs no memory per request.
        """
        if self.n == 0:
            return None
        rank = q * self.n
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else self.max
        return self.max

    def to_dict(self) -> dict:
        return {
            "count": self.n,
            "mean_s": (self.total / self.n) if self.n else None,
            "p50_s": self.quantile(0.5), "p95_s": self.quantile(0.95), "p99_s": self.quantile(0.99),
            "max_s": self.max if self.n else None,
            "buckets": {("+Inf" if i == len(LATENCY_BUCKETS) else str(LATENCY_BUCKETS[i])): c
                        for i, c in enumerate(self.counts) if c},
        }


@dataclass
class EndpointCounters:
    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    #: requests whose cost is unknown (model not in the price table)
    unpriced_requests: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    last_error: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def record_success(self, latency_s: float, input_tokens: int, output_tokens: int,
                       cost_usd: float | None) -> None:
        self.total_requests += 1
        self.successful_requests += 1
        self.input_tokens += int(input_tokens or 0)
        self.output_tokens += int(output_tokens or 0)
        if cost_usd is None:
            self.unpriced_requests += 1
        else:
            self.cost_usd += cost_usd
        self.latency.observe(latency_s)

    def record_failure(self, error_type: str, status: int | None, latency_s: float,
                       message: str | None = None) -> None:
        self.total_requests += 1
        self.failed_requests += 1
        if status == 429:
            self.rate_limited += 1
        self.errors_by_type[error_type] = self.errors_by_type.get(error_type, 0) + 1
        self.latency.observe(latency_s)
        if message:
            self.last_error = message[:300]

    def reset(self) -> None:
        fresh = EndpointCounters()
        self.__dict__.update(fresh.__dict__)

    def to_dict(self) -> dict:
        return {
            "total_requests": self.total_requests,
            "successful_requests": self.successful_requests,
            "failed_requests": self.failed_requests,
            "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "unpriced_requests": self.unpriced_requests,
            "errors_by_type": dict(self.errors_by_type),
            "latency": self.latency.to_dict(),
            "last_error": self.last_error,
        }
