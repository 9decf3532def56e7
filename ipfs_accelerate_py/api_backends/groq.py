"""Groq (``groq``): chat with Groq's sampling fields, and its model catalog.

Server: ``groq_base_url`` (with ``/openai/v1``); key: ``groq_api_key``.
``list_models`` and ``is_compatible_model`` read the library's Groq catalog
(no request), as the seed's static table did.
"""
from __future__ import annotations

from ..providers import groq as groq_provider
from .base import ApiBackend, EndpointHandler, ModelFirstChat


class groq(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "groq"
    URL_METADATA_KEY = "groq_base_url"

    def list_models(self, category: str | None = None) -> list[dict]:
        """Catalog entries (``id``, ``description``, ``context_window``, ``category``,
        ``owned_by``), optionally of one category: chat, vision or audio."""
        return groq_provider.catalog(category)

    def is_compatible_model(self, model_name: str, endpoint_type: str = "chat") -> bool:
        return groq_provider.is_compatible_model(model_name, endpoint_type)

    def create_groq_endpoint_handler(self, endpoint_url: str | None = None, api_key: str | None = None,
                                     model_name: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("chat", model_name, endpoint_url, api_key)
