"""OPEA services (``opea``): the ChatQnA megaservice plus the LLM microservice's chat.

Server: ``opea_base_url`` / ``opea_api_url`` (default
``http://localhost:8888``); default model: ``opea_model``.
"""
from __future__ import annotations

from typing import Any, Iterator

from ..types import ChatResponse, StreamChunk
from .base import ApiBackend, ModelFirstChat


class opea(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "opea"
    URL_METADATA_KEY = "opea_base_url"
    SELF_HOSTED = True

    def chatqna(self, question: Any, **kwargs: Any) -> ChatResponse:
        """Retrieval-augmented answer: ``question`` is a string or chat messages."""
        return self._call("chatqna", messages=question, **kwargs)

    def stream_chatqna(self, question: Any, **kwargs: Any) -> Iterator[StreamChunk]:
        return self.gateway.stream_call("stream_chatqna", provider=self.PROVIDER, messages=question,
                                        **self._options(kwargs))
