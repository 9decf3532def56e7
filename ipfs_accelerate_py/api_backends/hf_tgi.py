"""Hugging Face Text Generation Inference (``hf_tgi``): ``/generate`` and chat.

Server: ``hf_tgi_url`` / ``tgi_base_url`` (or ``tgi_endpoints`` in
resources); token: ``hf_api_token``.  A TGI server runs one model, so the
model name only matters for hosted URLs containing ``{model}``.
"""
from __future__ import annotations

from typing import Any, Mapping

from .base import ApiBackend, EndpointHandler, ModelFirstChat


class hf_tgi(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "hf_tgi"
    URL_METADATA_KEY = "hf_tgi_url"
    DEFAULT_MODEL = "tgi"  # what TGI's own OpenAI route calls the model it serves
    SELF_HOSTED = True

    def generate_text(self, model: str | None, prompt: str, parameters: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
        """TGI's answer shape: ``{"generated_text": ..., "details": {"finish_reason", "usage"}}``."""
        result = self._complete(model, prompt, **{**dict(parameters or {}), **kwargs})
        return {"generated_text": result.text, "request_id": result.request_id,
                "details": {"finish_reason": result.finish_reason, "usage": result["usage"]}}

    def create_remote_text_generation_endpoint_handler(self, endpoint_url: str | None = None,
                                                       api_key: str | None = None,
                                                       model_name: str | None = None) -> EndpointHandler:
        return self.create_endpoint_handler("completion", model_name, endpoint_url, api_key)
