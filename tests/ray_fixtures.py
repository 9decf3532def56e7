"""One Ray instance for the whole test session, and per-test gateways.

Ray 2.60's pytest fixtures are not in the wheel, so we keep our own.  Each
test gets its own namespace, so tests never see each other's actors.
"""
from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def make_gateway(ray_session):
    """Start gateways in a fresh namespace; every one is shut down after the test."""
    from ipfs_accelerate_py import Gateway
    started = []

    def start(config: dict, **kw):
        cfg = {"namespace": f"test-{uuid.uuid4().hex[:10]}", **config}
        gw = Gateway.start(cfg, enable_metrics=kw.pop("enable_metrics", False), **kw)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.shutdown()
