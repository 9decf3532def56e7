"""ipfs_accelerate_py: one interface to many LLM serving APIs, run as a Ray actor system.

    import ipfs_accelerate_py as ia
    gw = ia.Gateway.start("gateway.yaml")
    print(gw.chat("gpt-4o-mini", [{"role": "user", "content": "hi"}]).text)

The public surface is what this module exports; everything else is internal.
``Gateway`` (and so Ray) is imported on first use, so ``import ipfs_accelerate_py``
stays cheap for code that only needs the types, errors or config.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (AuthenticationError, CircuitOpenError, ConfigError, ConnectionError, ContextLengthError,
                     GatewayError, InvalidRequestError, NotFoundError, PermissionDeniedError, ProviderError,
                     ProviderOverloadedError, QueueFullError, RateLimitError, StreamInterruptedError,
                     TimeoutError, UnknownModelError, UnsupportedOperationError)
from .types import (ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse, Message, ModelInfo,
                    OperationResponse, StreamChunk, ToolCall, Usage)

if TYPE_CHECKING:  # pragma: no cover
    from .config import EndpointConfig, GatewayConfig, load_config
    from .gateway import Gateway

__version__ = "0.1.0"

_LAZY = {"Gateway": ("gateway", "Gateway"), "GatewayConfig": ("config", "GatewayConfig"),
         "EndpointConfig": ("config", "EndpointConfig"), "load_config": ("config", "load_config")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Gateway", "GatewayConfig", "EndpointConfig", "load_config",
    "ChatRequest", "ChatResponse", "EmbeddingRequest", "EmbeddingResponse", "Message", "ModelInfo",
    "OperationResponse", "StreamChunk", "ToolCall", "Usage",
    "GatewayError", "AuthenticationError", "PermissionDeniedError", "RateLimitError", "InvalidRequestError",
    "NotFoundError", "UnknownModelError", "ContextLengthError", "ProviderError", "ProviderOverloadedError",
    "StreamInterruptedError", "TimeoutError", "ConnectionError", "CircuitOpenError", "QueueFullError",
    "UnsupportedOperationError", "ConfigError",
]
