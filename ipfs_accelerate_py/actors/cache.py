"""SemanticCache actor: one response cache for every router and driver of a gateway.

The cache logic is ``core.semantic_cache``; this actor owns one instance and
supplies vectors when the embedder is a model served by the gateway itself
(an async call back through the router, which a pure core cannot make).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .. import errors
from ..core.embedders import CallableEmbedder, is_builtin_embedder, make_embedder
from ..core.semantic_cache import SemanticCache
from ..types import ChatRequest, ChatResponse
from ._errors import unwrap

log = logging.getLogger(__name__)

#: the seed API's name for "a small local sentence embedder"
SEED_MINI_NAMES = {"mini", "minilm-l6"}


def _not_called(texts: list[str]) -> Any:
    raise RuntimeError("vectors for gateway embedding models are computed by the cache actor")


class SemanticCacheActor:
    def __init__(self, router: Any, *, similarity_threshold: float = 0.92, cache_size: int = 1000,
                 ttl: float | None = 3600.0, embedding_model: str | None = None) -> None:
        self.router = router
        self.embedding_model = embedding_model
        self.remote_embedder = False
        embedder: Any
        if isinstance(embedding_model, str) and embedding_model.strip().lower() in SEED_MINI_NAMES:
            try:
                embedder = make_embedder("minilm")
            except errors.ConfigError:
                log.warning("embedding_model=%r: the minilm extra is not installed; using the built-in "
                            "hashing embedder", embedding_model)
                embedder = make_embedder(None)
        elif is_builtin_embedder(embedding_model):
            embedder = make_embedder(embedding_model)
        else:
            self.remote_embedder = True
            embedder = CallableEmbedder(_not_called, name=str(embedding_model))
        self.cache = SemanticCache(similarity_threshold=similarity_threshold, cache_size=cache_size, ttl=ttl,
                                   embedder=embedder)

    def __repr__(self) -> str:
        return f"SemanticCacheActor(embedder={self.cache.embedder.name!r}, size={self.cache.cache_size})"

    async def ready(self) -> bool:
        return True

    async def settings(self) -> dict:
        return {"similarity_threshold": self.cache.similarity_threshold, "cache_size": self.cache.cache_size,
                "ttl": self.cache.ttl, "embedding_model": self.embedding_model,
                "embedder": self.cache.embedder.name}

    async def _vector(self, request: ChatRequest) -> Any:
        if not self.remote_embedder:
            return None
        text = self.cache.key_for(request).text
        if text is None:
            return None
        try:
            result = await self.router.embed.remote(self.embedding_model, [text], priority="HIGH")
        except Exception as exc:  # noqa: BLE001 - a cache must never fail the request it serves
            log.warning("cache embedding via %s failed: %s", self.embedding_model, errors.redact(unwrap(exc)))
            return None
        vec = np.asarray(result.embeddings[0], dtype=np.float32)
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else None

    async def lookup(self, request: ChatRequest) -> tuple[ChatResponse, str, float] | None:
        """(cached reply, "exact"|"semantic", similarity) or None."""
        # without a vector (the embedding call failed) the core answers from the exact tier only
        hit = self.cache.lookup(request, vector=await self._vector(request))
        if hit is None:
            return None
        return hit.response, hit.kind, hit.similarity

    async def store(self, request: ChatRequest, response: ChatResponse) -> bool:
        return self.cache.store(request, response, vector=await self._vector(request))

    async def stats(self) -> dict:
        return {**self.cache.stats(), **(await self.settings())}

    async def clear(self) -> None:
        self.cache.clear()
