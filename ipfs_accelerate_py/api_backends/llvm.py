"""LLVM-style inference servers (``llvm``): model listing, inference, chat over inference.

Server: ``llvm_base_url`` / LLVM_BASE_URL (default ``http://localhost:8000``);
key: ``llvm_api_key``; default model: ``llvm_default_model``.  The seed's
TypeScript client (``listModels``, ``getModelInfo``, ``runInference``,
``testEndpoint``, ``setApiKey``) maps to the snake_case methods here, with
the same result fields.
"""
from __future__ import annotations

from typing import Any, Mapping

from .. import errors
from ..types import ChatResponse
from .base import ApiBackend, ModelFirstChat


class llvm(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "llvm"
    URL_METADATA_KEY = "llvm_base_url"
    SELF_HOSTED = True

    def list_models(self) -> dict[str, list[str]]:
        """``{"models": [model ids]}``, the server's own shape."""
        return {"models": [info.id for info in self._call("models")]}

    def get_model_info(self, model_id: str) -> dict[str, Any]:
        """``{"model_id", "status", "details"}`` (status: loaded, loading or error)."""
        result = self._call("model_info", model_id)
        raw = result.raw if isinstance(result.raw, Mapping) else {}
        return {"model_id": result.data.id, "status": raw.get("status"), "details": raw.get("details")}

    def run_inference(self, model_id: str, inputs: Any, options: Mapping[str, Any] | None = None,
                      **kwargs: Any) -> dict[str, Any]:
        """``{"model_id", "outputs", "usage"}``; ``inputs`` is a string or an object."""
        result = self._call("infer", model_id, inputs=inputs, parameters=dict(options or {}), **kwargs)
        usage = result.usage.to_openai() if result.usage else None
        return {"model_id": result.model, "outputs": result.data, "usage": usage, "request_id": result.request_id}

    def chat(self, model: str | None = None, messages: Any = None,  # type: ignore[override]
             options: Mapping[str, Any] | None = None, **kwargs: Any) -> ChatResponse:
        """``options`` (max_tokens, temperature, ...) as the seed's third argument."""
        return self._chat(model, messages, **{**dict(options or {}), **kwargs})

    def test_endpoint(self) -> bool:
        """Whether the server answers (``GET /models``); never raises for a dead server."""
        try:
            return bool(self._call("health").data)
        except errors.GatewayError:
            return False
