"""Actor names and options, in one place so every process agrees on them.

Actors are named and detached in the gateway's namespace: a second job (or a
Serve replica, or a restarted router) finds the same key actors by name, which
is what makes a key's limits hold for the whole cluster.
"""
from __future__ import annotations

from typing import Any

from ..config import GatewayConfig

#: Ray runs at most this many calls of one async actor at once; the router's own
#: bounded queue must be the limit callers hit, not Ray's
ROUTER_CONCURRENCY_MARGIN = 1000
ENDPOINT_MAX_CONCURRENCY = 10_000


def router_name(name: str) -> str:
    return f"{name}:router"


def endpoint_prefix(config: GatewayConfig) -> str:
    return f"{config.name}:endpoint:"


def endpoint_actor_options(config: GatewayConfig, endpoint_id: str) -> dict[str, Any]:
    return {
        "name": endpoint_prefix(config) + endpoint_id,
        "namespace": config.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        # the router re-dispatches a request whose endpoint died; Ray must not also retry it
        "max_task_retries": 0,
        "num_cpus": 0,
        "max_concurrency": ENDPOINT_MAX_CONCURRENCY,
    }


def router_actor_options(config: GatewayConfig) -> dict[str, Any]:
    return {
        "name": router_name(config.name),
        "namespace": config.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        # a call in flight when the router dies is re-run on the restarted router
        "max_task_retries": 3,
        "num_cpus": 0,
        "max_concurrency": int(config.queue_size) + ROUTER_CONCURRENCY_MARGIN,
    }


def helper_actor_options(config: GatewayConfig, role: str) -> dict[str, Any]:
    """The batcher and the cache: named per gateway, restarted by Ray if they die."""
    return {
        "name": f"{config.name}:{role}",
        "namespace": config.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "max_task_retries": 0,
        "num_cpus": 0,
        "max_concurrency": ENDPOINT_MAX_CONCURRENCY,
    }
