"""Google Gemini (``gemini``): chat, streaming and image + text prompts.

Server: ``gemini_base_url`` (with ``/v1beta``); key: ``google_api_key`` /
``gemini_api_key``.
"""
from __future__ import annotations

from typing import Any

from ..types import ChatResponse
from .base import ApiBackend, EndpointHandler, MessagesFirstChat


class gemini(MessagesFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "gemini"
    URL_METADATA_KEY = "gemini_base_url"

    def process_image(self, image_data: Any, prompt: str = "Describe this image", model: str | None = None,
                      **kwargs: Any) -> ChatResponse:
        """One user turn of ``prompt`` plus the image (bytes or a PIL image)."""
        return self._chat(model, prompt, image_data=image_data, **kwargs)

    def create_gemini_endpoint_handler(self, endpoint_url: str | None = None, api_key: str | None = None,
                                       model_name: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("chat", model_name, endpoint_url, api_key)
