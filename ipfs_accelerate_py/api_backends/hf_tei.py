"""Hugging Face Text Embeddings Inference (``hf_tei``): vectors and their similarity.

Server: ``hf_tei_url`` / ``tei_base_url`` (or ``tei_endpoints`` in
resources); token: ``hf_api_token``.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..providers.hf_tei import similarity
from .base import ApiBackend, EndpointHandler


class hf_tei(ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "hf_tei"
    URL_METADATA_KEY = "hf_tei_url"
    DEFAULT_MODEL = "tei"  # a TEI server embeds with the one model it loaded
    SELF_HOSTED = True

    def generate_embedding(self, model: str | None, text: str, **kwargs: Any) -> list[float]:
        return self._embed(model, text, **kwargs).embeddings[0]

    def batch_embed(self, model: str | None, texts: Sequence[str], **kwargs: Any) -> list[list[float]]:
        """One vector per text, in order (the runtime splits to the server's batch limit)."""
        return self._embed(model, list(texts), **kwargs).embeddings

    def calculate_similarity(self, embedding1: Sequence[float], embedding2: Sequence[float]) -> float:
        """Cosine similarity of two vectors."""
        return similarity(embedding1, embedding2)

    def create_remote_text_embedding_endpoint_handler(self, endpoint_url: str | None = None,
                                                      api_key: str | None = None,
                                                      model_name: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("embedding", model_name, endpoint_url, api_key)
