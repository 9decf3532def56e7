"""Seed-compatible API classes over the Ray runtime.

    from ipfs_accelerate_py.api_backends import openai_api
    client = openai_api(resources={}, metadata={"openai_api_key": "sk-..."})
    print(client.chat("gpt-4o", [{"role": "user", "content": "hi"}])["text"])

Each class is a thin view of a ``Gateway`` (see ``base``): queues, retries,
circuit breakers, statistics, caching and batching are the runtime's.
docs/porting.md lists what works unchanged and what changed.
"""
from __future__ import annotations

from .base import ApiBackend, EndpointHandler, PendingResult, QueueView, close_all
from .claude import claude
from .gemini import gemini
from .groq import groq
from .hf_tei import hf_tei
from .hf_tgi import hf_tgi
from .llvm import llvm
from .ollama import ollama
from .opea import opea
from .openai_api import openai_api
from .ovms import ovms
from .s3_kit import s3_kit

__all__ = ["openai_api", "claude", "groq", "ollama", "hf_tgi", "hf_tei", "gemini", "llvm", "ovms", "opea",
           "s3_kit", "ApiBackend", "EndpointHandler", "PendingResult", "QueueView", "close_all"]
