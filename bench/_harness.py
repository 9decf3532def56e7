"""Shared set-up for the benchmarks: a local Ray, fake providers, a gateway.

Benchmarks print human-readable lines while they run and exactly one JSON
line at the end (the figures), so CI logs and scripts can both read them.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

import ipfs_accelerate_py as ia  # noqa: E402
from ipfs_accelerate_py.testing.fakes.runner import start_fake  # noqa: E402


def init_ray() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def keys(n: int, tag: str = "bench") -> list[str]:
    return [f"sk-{tag}{i}-{uuid.uuid4().hex}" for i in range(n)]


@contextmanager
def gateway(fake, api_keys: list[str], *, model: str = "gpt-4o-mini", metrics: bool = False,
            **endpoint_kw) -> Iterator[ia.Gateway]:
    cfg = {"namespace": f"bench-{uuid.uuid4().hex[:8]}", "queue_size": 20000,
           "endpoints": [{"id": f"key-{i}", "provider": "openai", "base_url": fake.base_url, "api_key": k,
                          "models": [model, "text-embedding-3-small"], **endpoint_kw}
                         for i, k in enumerate(api_keys)]}
    gw = ia.Gateway.start(cfg, enable_metrics=metrics)
    try:
        yield gw
    finally:
        gw.shutdown()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def emit(figures: dict) -> None:
    print(json.dumps(figures, sort_keys=True))


__all__ = ["init_ray", "keys", "gateway", "start_fake", "percentile", "median", "emit", "time", "ray", "ia"]
