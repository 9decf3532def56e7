"""Anthropic Claude (``claude``): chat and streaming with the model optional.

Server: ``anthropic_base_url`` / ``claude_base_url`` (no ``/v1``, as the
Anthropic SDK writes it); key: ``anthropic_api_key`` or ``claude_api_key``.
"""
from __future__ import annotations

from .base import ApiBackend, EndpointHandler, MessagesFirstChat


class claude(MessagesFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "claude"
    URL_METADATA_KEY = "anthropic_base_url"

    def create_claude_endpoint_handler(self, endpoint_url: str | None = None, api_key: str | None = None,
                                       model_name: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("chat", model_name, endpoint_url, api_key)
