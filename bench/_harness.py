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


def _role(proc, fake_pids: set[int]) -> str | None:
    try:
        if proc.pid == os.getpid():
            return "driver"
        if proc.pid in fake_pids:
            return "fake_server"
        cmd = " ".join(proc.cmdline())
        title = proc.name()
    except Exception:  # noqa: BLE001 - processes come and go
        return None
    for marker, role in (("RouterActor", "router"), ("EndpointActor", "endpoint_actors"),
                         ("EmbeddingBatcher", "batcher"), ("SemanticCache", "cache"),
                         ("raylet", "raylet"), ("gcs_server", "gcs"), ("ray::", "other_ray_workers"),
                         ("default_worker", "other_ray_workers")):
        if marker in cmd or marker in title:
            return role
    return None


class CpuBreakdown:
    """CPU seconds spent per role (driver, router, endpoint actors, fake server,
    raylet, ...) between ``start()`` and ``stop()``: on a 2-core machine the
    question is not only how fast but where the cores went."""

    def __init__(self, fake_pids: set[int] | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._fake_pids = fake_pids or set()
        self._before: dict[int, tuple[str, float]] = {}
        self.seconds: dict[str, float] = {}

    def _sample(self) -> dict[int, tuple[str, float]]:
        out = {}
        for proc in self._psutil.process_iter():
            role = _role(proc, self._fake_pids)
            if role is None:
                continue
            try:
                times = proc.cpu_times()
            except Exception:  # noqa: BLE001
                continue
            out[proc.pid] = (role, times.user + times.system)
        return out

    def start(self) -> "CpuBreakdown":
        self._before = self._sample()
        return self

    def stop(self) -> dict[str, float]:
        after = self._sample()
        totals: dict[str, float] = {}
        for pid, (role, cpu) in after.items():
            base = self._before.get(pid, (role, 0.0))[1]
            totals[role] = totals.get(role, 0.0) + max(0.0, cpu - base)
        self.seconds = {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
        return self.seconds


def emit(figures: dict) -> None:
    print(json.dumps(figures, sort_keys=True))


__all__ = ["CpuBreakdown", "init_ray", "keys", "gateway", "start_fake", "percentile", "median", "emit", "time", "ray", "ia"]
