"""Ollama (``ollama``): local models, listed live from the server.

Server: ``ollama_api_url`` (the seed's ``http://host:11434/api`` form works)
or OLLAMA_HOST; default ``http://localhost:11434``; default model:
``ollama_model`` / OLLAMA_MODEL.
"""
from __future__ import annotations

from ..types import ModelInfo
from .base import ApiBackend, EndpointHandler, ModelFirstChat


class ollama(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "ollama"
    URL_METADATA_KEY = "ollama_api_url"
    SELF_HOSTED = True

    def list_models(self) -> list[ModelInfo]:
        """The models pulled on the server (``model["id"]``, ``model["context_window"]`` ...)."""
        return self._call("models")

    def create_ollama_endpoint_handler(self, endpoint_url: str | None = None, api_key: str | None = None,
                                       model_name: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("chat", model_name, endpoint_url, api_key)
