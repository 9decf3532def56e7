"""The LLVM-style inference server (PROTOCOLS.md section 11).

The REST shape the older ipfs_accelerate TypeScript and Python clients used:
``GET /models`` lists ids, ``GET /models/{id}`` describes one (``status``
loaded | loading | error, ``details``), ``POST /models/{id}/inference`` runs
``{"inputs": str | object, "parameters": {...}}`` and answers ``outputs``.

Chat is built on inference: the messages are rendered to one prompt
(``"system: ...\\nuser: ...\\nassistant:"``) and ``outputs`` becomes the
assistant's text.  Usage comes from the answer when the server reports it,
else it is estimated and marked ``Usage.details["estimated"]``.  There is no
streaming.  ``health`` is the seed's ``testEndpoint()``: ``GET /models``
answering 200.
"""
from __future__ import annotations

import json
from typing import Any, Mapping
from urllib.parse import quote

from .. import errors
from ..core import tokens
from ..transport import HttpRequest, HttpResponse
from ..types import ChatRequest, ChatResponse, Message, ModelInfo, OperationRequest, OperationResponse, Usage
from .base import Provider, Request, Result, register
from .openai_compat import http_request, json_object, op_params, usage_from_dict

__all__ = ["LLVMProvider", "render_prompt", "output_text"]

#: chat roles as the prompt names them (developer turns are system turns to this server)
_ROLE_NAMES = {"developer": "system"}
#: operations addressed to one model: a 404 there means that model is unknown
_MODEL_OPS = frozenset({"chat", "infer", "model_info"})
#: keys of a structured ``outputs`` that hold the generated text, in order of preference
_TEXT_KEYS = ("text", "generated_text", "content", "output", "response")


def render_prompt(messages: list[Message]) -> str:
    """The one prompt chat sends: ``role: text`` lines, then ``assistant:`` for the answer."""
    lines = [f"{_ROLE_NAMES.get(m.role, m.role)}: {m.text()}" for m in messages]
    lines.append("assistant:")
    return "\n".join(lines)


def output_text(outputs: Any) -> str:
    """The assistant text in an inference ``outputs``: a string as is, the text
    field of an object, the first element of a list; other values as JSON."""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, Mapping):
        for key in _TEXT_KEYS:
            if isinstance(outputs.get(key), str):
                return outputs[key]
    if isinstance(outputs, list) and outputs:
        return output_text(outputs[0])
    return "" if outputs is None else json.dumps(outputs)


@register
class LLVMProvider(Provider):
    name = "llvm"
    default_base_url = "http://localhost:8000"
    operations = frozenset({"chat", "infer", "models", "model_info", "health"})
    description = "LLVM-style inference server: inference, chat over inference, model listing"

    # -- requests ------------------------------------------------------------------
    def resolve_model(self, op: str, request: Any) -> str:
        """The request's model, else the endpoint's default (``LLVM_DEFAULT_MODEL``)."""
        model = (getattr(request, "model", None) or op_params(request).get("model")
                 or getattr(self.endpoint, "default_model", None) or self.default_model)
        if not model:
            raise errors.InvalidRequestError(
                f"{self.name} {op} needs a model (pass one, or set the endpoint's default_model / "
                "LLVM_DEFAULT_MODEL)", provider=self.name, endpoint_id=self.endpoint.id, code="missing_model")
        return str(model)

    def _model_path(self, model: str, suffix: str = "") -> str:
        # hub-style ids ("org/name") keep their slash, as the server's routes expect
        return f"models/{quote(model, safe='/:')}{suffix}"

    def chat_parameters(self, request: ChatRequest) -> dict:
        """Inference ``parameters`` for a chat: the sampling fields the caller set,
        plus ``extra``.  ``response_format`` and penalties have no equivalent in
        this protocol beyond the open parameters object; tools cannot be emulated
        over a plain prompt, so asking for them is an error rather than a silent
        answer without tool calls."""
        if request.tools:
            raise errors.InvalidRequestError(f"{self.name} chat does not support tools", provider=self.name,
                                             endpoint_id=self.endpoint.id, code="unsupported_tools")
        if request.n is not None and request.n > 1:
            raise errors.InvalidRequestError(f"{self.name} returns one answer per call; n must be 1, got "
                                             f"{request.n}", provider=self.name, endpoint_id=self.endpoint.id,
                                             code="invalid_n")
        parameters = {k: v for k, v in request.sampling().items() if k != "n"}
        parameters.update((k, v) for k, v in request.extra.items() if v is not None)
        return parameters

    def infer_body(self, request: OperationRequest) -> dict:
        """``{"inputs", "parameters"}`` from ``infer`` kwargs: ``inputs`` is required;
        a ``parameters`` dict and loose keyword options (max_tokens, temperature,
        top_k, top_p, ...) merge into ``parameters``, loose ones winning."""
        params = op_params(request)
        params.pop("model", None)
        inputs = params.pop("inputs", None)
        if inputs is None or inputs == "":
            raise errors.InvalidRequestError(f"{self.name} infer needs inputs (a string or an object)",
                                             provider=self.name, endpoint_id=self.endpoint.id,
                                             code="missing_inputs")
        nested = params.pop("parameters", None)
        if nested is not None and not isinstance(nested, Mapping):
            raise errors.InvalidRequestError(f"{self.name} infer parameters must be an object",
                                             provider=self.name, endpoint_id=self.endpoint.id,
                                             code="invalid_parameters")
        parameters = dict(nested or {})
        parameters.update((k, v) for k, v in params.items() if v is not None)
        return {"inputs": inputs, "parameters": parameters}

    def build(self, op: str, request: Request, request_id: str | None) -> HttpRequest:
        self.require(op)
        if op == "models":
            return http_request(self, "GET", "models", request_id)
        if op == "model_info":
            model = self.resolve_model(op, request)
            return http_request(self, "GET", self._model_path(model), request_id)
        if op == "infer":
            model = self.resolve_model(op, request)
            return http_request(self, "POST", self._model_path(model, "/inference"), request_id,
                                json_body=self.infer_body(request))
        if op == "chat":
            if not isinstance(request, ChatRequest):
                raise errors.InvalidRequestError(f"{self.name} chat needs a ChatRequest", provider=self.name,
                                                 endpoint_id=self.endpoint.id)
            body = {"inputs": render_prompt(request.messages), "parameters": self.chat_parameters(request)}
            return http_request(self, "POST", self._model_path(self.resolve_model(op, request), "/inference"),
                                request_id, json_body=body)
        return super().build(op, request, request_id)

    # -- responses -----------------------------------------------------------------
    def parse(self, op: str, request: Request, response: HttpResponse) -> Result:
        body = json_object(self, response, op)
        if op == "models":
            return [self._model_info(item) for item in body.get("models") or []
                    if isinstance(item, str) or (isinstance(item, Mapping) and (item.get("id") or item.get("model_id")))]
        if op == "model_info":
            info = self._model_info(body)
            return OperationResponse(op=op, data=info, model=info.id, provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        if "outputs" not in body:
            raise errors.ProviderError(f"{self.name} answered {op} without outputs: {response.text[:200]!r}",
                                       provider=self.name, endpoint_id=self.endpoint.id)
        model = str(body.get("model_id") or self.resolve_model(op, request))
        usage = usage_from_dict(body.get("usage"))
        if op == "infer":
            return OperationResponse(op=op, data=body["outputs"], model=model, usage=usage, provider=self.name,
                                     endpoint_id=self.endpoint.id, raw=body)
        text = output_text(body["outputs"]).lstrip()
        if usage is None:
            prompt = render_prompt(request.messages)  # type: ignore[union-attr]
            usage = Usage(prompt_tokens=tokens.count_tokens(prompt, model),
                          completion_tokens=tokens.count_tokens(text, model), details={"estimated": True})
        return ChatResponse(text=text, model=model, usage=usage, finish_reason=body.get("finish_reason") or "stop",
                            provider=self.name, endpoint_id=self.endpoint.id, raw=body)

    def _model_info(self, item: Any) -> ModelInfo:
        if isinstance(item, str):
            return ModelInfo(id=item, provider=self.name, endpoint_id=self.endpoint.id)
        details = item.get("details") if isinstance(item.get("details"), Mapping) else {}
        window = next((details[k] for k in ("context_window", "context_length", "max_context_length")
                       if isinstance(details.get(k), int)), None)
        status = item.get("status")
        return ModelInfo(id=str(item.get("model_id") or item.get("id")), provider=self.name,
                         endpoint_id=self.endpoint.id, context_window=window,
                         description=details.get("description") or (f"status: {status}" if status else None),
                         raw=dict(item))

    # -- execution -------------------------------------------------------------------
    async def execute(self, op: str, request: Request, request_id: str | None,
                      transport: Any) -> tuple[Result, Mapping[str, str]]:
        """One call per operation; ``health`` is ``GET /models``, and a 404 on a
        model's route is an unknown model whatever words the server chose."""
        self.require(op)
        if op == "health":
            return await self.probe_health("models", request_id, transport)
        try:
            return await super().execute(op, request, request_id, transport)
        except errors.NotFoundError as exc:
            if op not in _MODEL_OPS or isinstance(exc, errors.UnknownModelError):
                raise
            model = self.resolve_model(op, request)
            raise errors.UnknownModelError(f"{self.name} has no model {model!r}: {exc.message}",
                                           provider=self.name, endpoint_id=self.endpoint.id, status=404,
                                           code=exc.code) from None
