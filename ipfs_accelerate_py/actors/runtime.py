"""Start or attach to the actor system: Ray itself, then the named router."""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import ray

from .. import errors
from ..config import GatewayConfig
from . import naming
from .router import RouterActor

log = logging.getLogger(__name__)


def ensure_ray(**init_kwargs: Any) -> None:
    """``ray.init()`` only when Ray is not running in this process yet.

    RAY_ADDRESS (set by ``ray job submit`` and on cluster nodes) is honoured by
    ray.init itself; without it a local instance starts.
    """
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True,
                              "log_to_driver": True}
    if not os.environ.get("RAY_ADDRESS"):
        cpus = os.environ.get("IPFS_ACCELERATE_NUM_CPUS")
        if cpus:
            kwargs["num_cpus"] = int(cpus)
    kwargs.update(init_kwargs)
    ray.init(**kwargs)


def start_router(config: GatewayConfig, *, enable_metrics: bool = True, timeout_s: float = 60.0):
    """Create the router (or reuse the one already running under this name).

    Reusing keeps the running router's configuration: a second job attaches to
    the same key actors.  Endpoints of ``config`` that it does not know are
    reported (add them with Gateway.add_endpoint), never silently dropped.
    """
    existed = _router_exists(config)
    if not existed:
        # start the key actors now, alongside the router, instead of after its
        # process is up: each is a Python process to boot, and in parallel the
        # gateway is ready in about half the time (the router's get_if_exists
        # finds these very actors)
        from .router import _create_endpoint_actor
        for ep in config.endpoints:
            if ep.enabled:
                _create_endpoint_actor(config, ep, enable_metrics)
    cls = ray.remote(RouterActor)
    handle = cls.options(**naming.router_actor_options(config)).remote(config, enable_metrics=enable_metrics)
    ray.get(handle.wait_ready.remote(timeout_s), timeout=timeout_s + 5)
    if existed:
        known = {e["id"] for e in ray.get(handle.endpoints.remote(), timeout=timeout_s)}
        missing = [e.id for e in config.endpoints if e.enabled and e.id not in known]
        if missing:
            warnings.warn(
                f"attached to the running gateway {config.name!r} in namespace {config.namespace!r}, which "
                f"keeps its own configuration; it has no endpoint(s) {', '.join(missing)} from this config "
                f"(use Gateway.add_endpoint, or shut it down first)", RuntimeWarning, stacklevel=3)
    return handle


def _router_exists(config: GatewayConfig) -> bool:
    try:
        ray.get_actor(naming.router_name(config.name), namespace=config.namespace)
        return True
    except ValueError:
        return False


def get_router(namespace: str, name: str, timeout_s: float = 30.0):
    """The running router, waiting for it while it restarts."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            handle = ray.get_actor(naming.router_name(name), namespace=namespace)
            ray.get(handle.ping.remote(), timeout=max(1.0, deadline - time.monotonic()))
            return handle
        except ValueError as exc:  # not created (yet)
            last = exc
        except Exception as exc:  # noqa: BLE001 - restarting; try again
            last = exc
        time.sleep(0.2)
    raise errors.ConnectionError(
        f"no gateway router named {name!r} in namespace {namespace!r} "
        f"(start one with Gateway.start): {type(last).__name__ if last else 'timeout'}")
