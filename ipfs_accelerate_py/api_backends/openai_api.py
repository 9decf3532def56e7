"""OpenAI (``openai_api``): chat, embeddings and image generation.

Server: ``openai_base_url`` in metadata (or OPENAI_BASE_URL), with ``/v1`` as
the official SDK writes it; key: ``openai_api_key`` / OPENAI_API_KEY.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..types import EmbeddingResponse
from .base import ApiBackend, EndpointHandler, ModelFirstChat


class openai_api(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "openai"
    URL_METADATA_KEY = "openai_base_url"

    def embedding(self, model: str, text: str | Sequence[str], encoding_format: str = "float",
                  **kwargs: Any) -> EmbeddingResponse:
        """``response["embedding"]`` is the (first) vector, ``response["embeddings"]`` all of them."""
        return self._embed(model, text, encoding_format=encoding_format, **kwargs)

    def text_to_image(self, model: str, size: str, n: int, prompt: str, **kwargs: Any) -> dict[str, Any]:
        """``{"urls": [...]}`` (plus ``b64_json`` / ``revised_prompts`` when the API sends them)."""
        result = self._call("images", model, prompt=prompt, size=size, n=n, **kwargs)
        return {**result.data, "model": result.model, "request_id": result.request_id}

    def create_chat_endpoint_handler(self, model_name: str | None = None, endpoint_url: str | None = None,
                                     api_key: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("chat", model_name, endpoint_url, api_key)
