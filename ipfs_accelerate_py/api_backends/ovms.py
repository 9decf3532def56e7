"""OpenVINO Model Server (``ovms``): chat on ``/v3`` and KServe v2 tensor inference.

Server: ``ovms_base_url`` / ``ovms_api_url`` (the server root; default
``http://localhost:8000``); key: ``ovms_api_key`` when a proxy checks one.
"""
from __future__ import annotations

from typing import Any

from ..types import OperationResponse
from .base import ApiBackend, ModelFirstChat


class ovms(ModelFirstChat, ApiBackend):  # noqa: N801 - the seed's class name
    PROVIDER = "ovms"
    URL_METADATA_KEY = "ovms_base_url"
    SELF_HOSTED = True

    def infer(self, model: str, data: Any, version: str | int | None = None, **kwargs: Any) -> OperationResponse:
        """Run a model on tensors: ``data`` is ``{input name: array}`` or KServe input
        dicts; ``result["<output name>"]`` is a numpy array."""
        return self._call("infer", model, inputs=data, version=version, **kwargs)

    def get_model_info(self, model: str) -> OperationResponse:
        """The model's KServe metadata (platform, inputs, outputs, versions)."""
        return self._call("model_info", model)
