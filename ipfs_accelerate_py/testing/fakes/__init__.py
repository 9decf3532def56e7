"""Wire-faithful fake LLM provider servers with fault injection.

Each fake speaks one provider's HTTP protocol exactly as PROTOCOLS.md describes
it (paths, JSON shapes, SSE framing, error bodies, status codes, rate-limit
headers), so the official SDKs and the gateway's providers can be tested with
no network and no real keys.  Every fake also serves an admin API under
``/_fake/`` to change its behaviour (keys, per-key token buckets, latency,
faults) and read its stats.

* ``runner``  - ``start_fake(protocol)`` runs a fake in a subprocess and returns a
  ``FakeHandle`` (URLs, ``controls()``, ``stats()``, ``reset()``, ``stop()``);
  ``PROTOCOLS`` is the registry.  Standard library only.
* ``base``    - the shared framework: ``FakeServer``, ``FakeProtocol`` hooks,
  ``FakeControls``, faults, token buckets, deterministic content helpers.
* ``openai``  - OpenAI and Groq; ``claude`` - Anthropic.
* ``python -m ipfs_accelerate_py.testing.fakes <protocol|all>`` - the CLI.

The runner names are imported eagerly (they are cheap); the framework names are
loaded on first access, so code that only starts fakes does not import aiohttp,
numpy or tiktoken.  The fakes never import Ray or the rest of the package.
"""
from __future__ import annotations

import importlib
from typing import Any

from .runner import PROTOCOLS, FakeAdminError, FakeHandle, FakeSpec, fingerprint, register_protocol, start_fake

_LAZY = {
    "FakeControls": "base", "FakeError": "base", "FakeProtocol": "base", "FakeServer": "base",
    "FaultRule": "base", "LimitSpec": "base", "RequestContext": "base", "SseStream": "base",
    "FAULT_KINDS": "base", "start_app": "base",
    "OpenAIProtocol": "openai", "ClaudeProtocol": "claude",
}

__all__ = ["PROTOCOLS", "FakeAdminError", "FakeHandle", "FakeSpec", "fingerprint", "register_protocol",
           "start_fake", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
