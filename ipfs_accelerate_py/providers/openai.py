"""OpenAI proper (api.openai.com): the compatible shape plus images, audio and moderation.

Differences from a generic compatible server are flags: ``max_completion_tokens``
(reasoning models reject ``max_tokens``), no ``top_k``, and base64 embeddings on
the wire, which the official SDK also asks for because they are a quarter of
the size of JSON floats.
"""
from __future__ import annotations

from typing import Any, Mapping

from .. import errors
from ..transport import HttpRequest, HttpResponse
from ..types import OperationRequest, OperationResponse
from .base import register
from .openai_compat import OpenAICompatibleProvider, http_request, json_object, op_params, usage_from_dict


@register
class OpenAIProvider(OpenAICompatibleProvider):
    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    operations = frozenset({"chat", "stream_chat", "complete", "stream_complete", "embed", "models",
                            "model_info", "images", "transcribe", "translate", "speech", "moderate"})
    model_patterns = ("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "text-embedding-*", "dall-e-*",
                      "gpt-image-*", "whisper-*", "tts-*", "*moderation*", "davinci-*", "babbage-*")
    max_embed_batch = 2048
    default_model = "gpt-4o-mini"
    description = "OpenAI: chat, completions, embeddings, images, audio, moderation"

    uses_max_completion_tokens = True
    accepts_top_k = False
    requests_base64_embeddings = True
    default_models = {"transcribe": "whisper-1",
                      "translate": "whisper-1", "speech": "tts-1", "complete": "gpt-3.5-turbo-instruct"}
    default_voice = "alloy"

    # -- images --------------------------------------------------------------
    def _build_images(self, request: OperationRequest, request_id: str | None) -> HttpRequest:
        params = op_params(request)
        prompt = params.pop("prompt", None)
        if not prompt:
            raise errors.InvalidRequestError("openai images needs a prompt", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_prompt")
        params.pop("model", None)
        body: dict[str, Any] = {"prompt": prompt}
        model = self.resolve_model("images", request, required=False)
        if model:  # without one the API picks its own default image model
            body["model"] = model
        body.update((k, v) for k, v in params.items() if v is not None)
        return http_request(self, "POST", "images/generations", request_id, json_body=body)

    def _parse_images(self, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        body = json_object(self, response, "images")
        items = [d for d in body.get("data") or [] if isinstance(d, Mapping)]
        data = {"urls": [d["url"] for d in items if d.get("url")],
                "b64_json": [d["b64_json"] for d in items if d.get("b64_json")],
                "revised_prompts": [d["revised_prompt"] for d in items if d.get("revised_prompt")]}
        model = self.resolve_model("images", request, required=False)
        return OperationResponse(op="images", data=data, model=model,
                                 usage=usage_from_dict(body.get("usage")), provider=self.name,
                                 endpoint_id=self.endpoint.id, raw=body)

    # -- moderation ----------------------------------------------------------
    def _build_moderate(self, request: OperationRequest, request_id: str | None) -> HttpRequest:
        params = op_params(request)
        if params.get("input") in (None, "", []):
            raise errors.InvalidRequestError("openai moderate needs an input", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="missing_input")
        params.pop("model", None)
        body = {k: v for k, v in params.items() if v is not None}
        model = self.resolve_model("moderate", request, required=False)
        if model:
            body["model"] = model
        return http_request(self, "POST", "moderations", request_id, json_body=body)

    def _parse_moderate(self, request: OperationRequest, response: HttpResponse) -> OperationResponse:
        body = json_object(self, response, "moderate")
        return OperationResponse(op="moderate", data=list(body.get("results") or []), model=body.get("model"),
                                 provider=self.name, endpoint_id=self.endpoint.id, raw=body)
