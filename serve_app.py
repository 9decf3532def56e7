"""Thin re-export so Serve's CLI works from a checkout of the repository.

    serve run serve_config.yaml                       # the config file (recommended)
    serve run serve_app:app_builder config=gateway.yaml
    IPFS_ACCELERATE_CONFIG=gateway.yaml serve run serve_app:app

``app`` is built on first access (from $IPFS_ACCELERATE_CONFIG, else from the
provider environment variables), so importing this module costs nothing.
"""
from __future__ import annotations

from typing import Any

from ipfs_accelerate_py.serve_app import (DEFAULT_MAX_BODY_BYTES, GatewayIngress, app_builder, build_app,
                                          fastapi_app, run)

__all__ = ["app", "app_builder", "build_app", "run", "GatewayIngress", "fastapi_app", "DEFAULT_MAX_BODY_BYTES"]


def __getattr__(name: str) -> Any:
    if name == "app":
        value = app_builder({})
        globals()["app"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
